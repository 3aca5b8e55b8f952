-- The admin pages' outbox listing (issue 21): newest first, by status, by recipient, a page at a
-- time from a cursor (created_at, id), each page read from one index range that stops after it.
-- created_at, id and recipient never change, so a message enters outbox_list_all,
-- outbox_list_recipient and outbox_list_queued when it is queued and leaves outbox_list_queued when
-- it is claimed; recording it sent touches none of them. The other per-status indexes hold the
-- states a message rarely reaches. Sent messages, nearly all rows, are listed by walking
-- outbox_list_all newest first; messages being sent through outbox_leases (as many as the workers
-- hold at once).
CREATE INDEX outbox_list_all ON outbox (created_at, id);
-- Recipient search (a prefix of the address): by address, then newest first.
CREATE INDEX outbox_list_recipient ON outbox (recipient, created_at DESC, id DESC);
CREATE INDEX outbox_list_queued ON outbox (created_at, id, recipient) WHERE status = 'queued';
CREATE INDEX outbox_list_deferred ON outbox (created_at, id, recipient) WHERE status = 'deferred';
CREATE INDEX outbox_list_bounced ON outbox (created_at, id, recipient) WHERE status = 'bounced';
CREATE INDEX outbox_list_suppressed ON outbox (created_at, id, recipient) WHERE status = 'suppressed';
CREATE INDEX outbox_list_failed ON outbox (created_at, id, recipient) WHERE status = 'failed';
