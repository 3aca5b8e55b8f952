-- contacts.tags: the owned tags last pushed (newline-separated), so a sync removes only the
-- mapping's tags that no longer apply, and only when they change.
ALTER TABLE contacts ADD COLUMN tags TEXT;
