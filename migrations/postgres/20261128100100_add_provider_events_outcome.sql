-- provider_events: what applying an event did (applied, superseded, unmatched, ignored,
-- unknown_list) and when a failed writeback is retried.
ALTER TABLE provider_events ADD COLUMN outcome TEXT;
ALTER TABLE provider_events ADD COLUMN next_attempt_at TEXT;
CREATE INDEX provider_events_by_email ON provider_events (email, event_type);
