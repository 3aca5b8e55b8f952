-- outbox_attempts: the history of a message's turns that did not end in `sent` (deferred, waiting
-- after trying a route, answer lost, bounced, held back, given up, handed back at shutdown,
-- bounced later by a bounce mail, requeued by an operator), written in the transaction that
-- records the turn. A sent message's final reply stays on its outbox row only, so the send path
-- writes nothing here. `attempt` is the message's attempt count after the turn. Deleted with the
-- message's bytes (`[retention] outbox_body_days`). Timestamps are RFC 3339 UTC text.
CREATE TABLE outbox_attempts (
    id        BIGSERIAL PRIMARY KEY,
    outbox_id TEXT NOT NULL REFERENCES outbox (id),
    attempt   BIGINT NOT NULL,
    at        TEXT NOT NULL,
    outcome   TEXT NOT NULL,
    route     TEXT,
    reply     TEXT
);
CREATE INDEX outbox_attempts_by_message ON outbox_attempts (outbox_id, id);
CREATE INDEX outbox_attempts_by_time ON outbox_attempts (at);
