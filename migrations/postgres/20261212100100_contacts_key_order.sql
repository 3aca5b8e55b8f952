-- contacts in the sync's stream order (issue 26): shorter member keys first, then by text (byte
-- order), which is numeric order for integer keys, the order the member DB returns them in. The
-- sync reads an audience's contacts in this order and merges them with the member rows as both
-- stream, instead of holding every contact in memory.
CREATE INDEX contacts_key_order ON contacts (audience, length(member_key), member_key COLLATE "C");
