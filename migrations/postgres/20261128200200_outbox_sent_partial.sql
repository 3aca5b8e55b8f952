-- `outbox_sent` (route, sent_at) held an entry for every message, the unsent ones under
-- (NULL, NULL), and moved it when the message was sent. The quota counts read only sent rows, so
-- the index now holds only those: enqueueing adds nothing to it and sending adds one entry.
DROP INDEX outbox_sent;
CREATE INDEX outbox_sent ON outbox (route, sent_at) WHERE sent_at IS NOT NULL;
