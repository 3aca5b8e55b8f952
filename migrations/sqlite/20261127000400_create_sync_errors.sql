-- sync_errors: see DESIGN.md "State DB". Timestamps are RFC 3339 UTC text on both backends.
CREATE TABLE sync_errors (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id     TEXT NOT NULL,
    audience   TEXT NOT NULL,
    member_key TEXT,
    email      TEXT,
    code       TEXT NOT NULL,
    message    TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX sync_errors_by_run ON sync_errors (run_id);
CREATE INDEX sync_errors_by_member ON sync_errors (audience, member_key);
