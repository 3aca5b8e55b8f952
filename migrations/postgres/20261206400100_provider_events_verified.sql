-- provider_events.verified: 1 when the event is known to come from the provider (a signed
-- webhook, a pull through the API, a confirmed unsigned webhook); 0 for an unsigned webhook,
-- which is a hint until the provider confirms it. Events stored before this migration were not
-- checked, and a member key taken from a webhook body selects nothing: the unapplied ones lose it
-- and are confirmed with the provider like any unsigned delivery.
ALTER TABLE provider_events ADD COLUMN verified BIGINT NOT NULL DEFAULT 0;
UPDATE provider_events SET verified = 1 WHERE applied_at IS NOT NULL;
UPDATE provider_events SET member_key = NULL WHERE applied_at IS NULL;
