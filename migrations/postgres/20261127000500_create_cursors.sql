-- cursors: see DESIGN.md "State DB". Timestamps are RFC 3339 UTC text on both backends.
CREATE TABLE cursors (
    audience   TEXT NOT NULL,
    name       TEXT NOT NULL,
    position   TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (audience, name)
);
