-- campaigns: see DESIGN.md "State DB". Timestamps are RFC 3339 UTC text on both backends.
CREATE TABLE campaigns (
    idempotency_key      TEXT PRIMARY KEY,
    audience             TEXT NOT NULL,
    content_hash         TEXT NOT NULL,
    state                TEXT NOT NULL,
    provider_campaign_id TEXT,
    recipients           BIGINT,
    last_error           TEXT,
    created_at           TEXT NOT NULL,
    updated_at           TEXT NOT NULL
);
