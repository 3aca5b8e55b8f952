-- provider_events: the dedupe key now starts with the address (any U+001F in it left out) and
-- U+001F (NewEvent::dedupe_key), so the key's unique index also finds an address's events and
-- the index by address goes. A stored event then adds one randomly placed index entry instead of
-- two: under a stream of webhooks that halved the pages each commit wrote to the WAL (issue 26).
-- The rest of each key is kept as it was, so a retried delivery of an event stored before this
-- migration is still a duplicate.
UPDATE provider_events
   SET dedupe_key = replace(COALESCE(email, ''), char(31), '') || char(31) || dedupe_key;
DROP INDEX provider_events_by_email;
