-- provider_events: the dedupe key now starts with the address (any U+001F in it left out) and
-- U+001F (NewEvent::dedupe_key); the keys stored before are given the same start, so a retried
-- delivery of an event stored before this migration is still a duplicate. PostgreSQL keeps its
-- index by address: its text order follows the database's collation, under which the keys of
-- one address need not be one range (SQLite's, byte order, drops that index instead).
UPDATE provider_events
   SET dedupe_key = replace(COALESCE(email, ''), chr(31), '') || chr(31) || dedupe_key;
