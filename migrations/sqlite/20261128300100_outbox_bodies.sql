-- The message bytes move out of `outbox` into a table of their own. They are written once, at
-- enqueue, and never change, while the `outbox` row is rewritten by every claim and every
-- outcome. Inline, each of those rewrites copied the whole message (839 bytes for a short
-- registration mail, most of the row), and a page held about three rows, so every commit wrote
-- three times the pages it needed to.
CREATE TABLE outbox_bodies (
    id  TEXT PRIMARY KEY REFERENCES outbox (id),
    raw BLOB NOT NULL
);
INSERT INTO outbox_bodies (id, raw) SELECT id, raw FROM outbox;
ALTER TABLE outbox DROP COLUMN raw;
