-- The admin pages' reads of the suppression list (issue 21).
-- The admin pages search suppressions by a prefix of the address, in byte order ("C") so that a
-- prefix is one range whatever the database's collation.
CREATE INDEX suppressions_by_email_c ON suppressions (email COLLATE "C");
-- The suppressions in force, newest first (the admin pages' "needs attention" list).
CREATE INDEX suppressions_active ON suppressions (created_at) WHERE lifted_at IS NULL;
