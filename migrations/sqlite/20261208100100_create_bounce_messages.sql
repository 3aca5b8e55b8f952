-- bounce_messages: every bounce mail received (`bounce ingest`, `POST /v1/bounces`), keyed by the
-- SHA-256 of its raw bytes so the same mail is applied once however often it arrives. A mail
-- posted over HTTP is stored (processed_at NULL) before the answer and processed afterwards;
-- `outcome` is what processing decided (applied, ignored, refused, unknown_message) and
-- `result` the JSON answer `bounce ingest --json` printed. Timestamps are RFC 3339 UTC text.
CREATE TABLE bounce_messages (
    hash         TEXT PRIMARY KEY,
    raw          BLOB NOT NULL,
    received_at  TEXT NOT NULL,
    processed_at TEXT,
    kind         TEXT,
    outcome      TEXT,
    outbox_id    TEXT,
    result       TEXT
);
CREATE INDEX bounce_messages_pending ON bounce_messages (processed_at, received_at);
