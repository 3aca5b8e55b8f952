-- webhook_signing_secrets: the signing secret a provider returned when `sync` registered a list
-- webhook (Mailchimp shows it once, in the create response). Once a list has one, its deliveries
-- must carry a valid signature.
CREATE TABLE webhook_signing_secrets (
    provider   TEXT NOT NULL,
    list_id    TEXT NOT NULL,
    webhook_id TEXT NOT NULL,
    secret     TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (provider, list_id, webhook_id)
);
