-- unsubscribes: one-click opt-outs (RFC 8058) from a category of relay mail, per address (identity
-- form) and category (`notification`); the relay holds a message of that category to that
-- address back. `via` is `https` (POST /u/{token}) or `mail` (unsubscribe+TOKEN@ through the
-- bounce path). The suppression list stays whole-address; this is its per-category companion.
-- Timestamps are RFC 3339 UTC text.
CREATE TABLE unsubscribes (
    email      TEXT NOT NULL,
    category   TEXT NOT NULL,
    via        TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (email, category)
);
