-- admin_sessions: logins to the admin pages of `serve` (src/store/admin_sessions.rs). Only a hash
-- of the session cookie is stored, so a copy of the state DB logs nobody in. Timestamps are
-- RFC 3339 UTC text on both backends.
CREATE TABLE admin_sessions (
    token_hash TEXT PRIMARY KEY,
    csrf       TEXT NOT NULL,
    who        TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
CREATE INDEX admin_sessions_expiry ON admin_sessions (expires_at);
