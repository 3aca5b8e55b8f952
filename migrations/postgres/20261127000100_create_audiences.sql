-- audiences: see DESIGN.md "State DB". Timestamps are RFC 3339 UTC text on both backends.
CREATE TABLE audiences (
    name            TEXT PRIMARY KEY,
    provider        TEXT NOT NULL,
    list_id         TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    last_success_at TEXT
);
