-- The claim reads one index range per state; each range has an index of its own that holds only
-- the rows in that state. `outbox_due` (status, next_attempt_at) also held an entry for every sent,
-- bounced or failed message, moved it on each state change, and gave the expired-lease range no
-- index on lease_until, so every claim read each in-flight row to check its lease. With partial
-- indexes a sent message leaves the due indexes instead of moving within one.
DROP INDEX outbox_due;
CREATE INDEX outbox_queued ON outbox (next_attempt_at) WHERE status = 'queued';
CREATE INDEX outbox_deferred ON outbox (next_attempt_at) WHERE status = 'deferred';
CREATE INDEX outbox_leases ON outbox (lease_until) WHERE status = 'sending';
