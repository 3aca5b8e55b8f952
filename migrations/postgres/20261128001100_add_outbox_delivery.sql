-- outbox delivery details: the envelope sender (VERP Return-Path, fixed at enqueue like the bytes),
-- and when the message was accepted by a route (quota counting).
ALTER TABLE outbox ADD COLUMN envelope_from TEXT;
ALTER TABLE outbox ADD COLUMN sent_at TEXT;
CREATE INDEX outbox_sent ON outbox (route, sent_at);
