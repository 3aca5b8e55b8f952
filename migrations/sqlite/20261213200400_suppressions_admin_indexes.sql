-- The admin pages' reads of the suppression list (issue 21).
-- The suppressions in force, newest first (the admin pages' "needs attention" list).
CREATE INDEX suppressions_active ON suppressions (created_at) WHERE lifted_at IS NULL;
