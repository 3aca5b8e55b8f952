-- provider_events: see DESIGN.md "State DB". Timestamps are RFC 3339 UTC text on both backends.
CREATE TABLE provider_events (
    id          BIGSERIAL PRIMARY KEY,
    dedupe_key  TEXT NOT NULL UNIQUE,
    provider    TEXT NOT NULL,
    audience    TEXT,
    list_id     TEXT,
    event_type  TEXT NOT NULL,
    email       TEXT,
    member_key  TEXT,
    reason      TEXT,
    fired_at    TEXT NOT NULL,
    payload     TEXT NOT NULL,
    received_at TEXT NOT NULL,
    applied_at  TEXT,
    attempts    BIGINT NOT NULL DEFAULT 0,
    last_error  TEXT
);
CREATE INDEX provider_events_unapplied ON provider_events (applied_at, id);
