-- Idempotency keys of `POST /v1/messages` (`Idempotency-Key`) and `mailbridge send --key`: a key
-- names one message for 24 hours. `request_hash` (SHA-256 of the request's fields) tells a retry
-- of the same request from a different message under the same key. The primary key makes two
-- concurrent requests with one key queue one message. The key row is written before its message
-- in the same transaction, hence the deferred foreign key.
CREATE TABLE message_keys (
    idempotency_key TEXT PRIMARY KEY,
    request_hash    TEXT NOT NULL,
    outbox_id       TEXT NOT NULL REFERENCES outbox (id) DEFERRABLE INITIALLY DEFERRED,
    created_at      TEXT NOT NULL
);
CREATE INDEX message_keys_created ON message_keys (created_at);
