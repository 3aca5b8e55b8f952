-- suppressions: see DESIGN.md "State DB". Timestamps are RFC 3339 UTC text on both backends.
CREATE TABLE suppressions (
    email      TEXT PRIMARY KEY,
    reason     TEXT NOT NULL,
    source     TEXT NOT NULL,
    detail     TEXT,
    created_at TEXT NOT NULL,
    lifted_at  TEXT
);
