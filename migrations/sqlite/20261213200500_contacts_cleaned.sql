-- The members whose address the provider cleaned (it bounced there for good), newest first, for
-- the admin pages' "needs attention" list: only those contacts are in it, so a sync's writes of
-- every other contact never touch it, and the list never reads the whole audience.
CREATE INDEX contacts_cleaned ON contacts (synced_at) WHERE remote_status = 'cleaned';
