-- oauth_tokens: see DESIGN.md "State DB". Timestamps are RFC 3339 UTC text on both backends.
CREATE TABLE oauth_tokens (
    provider      TEXT NOT NULL,
    account       TEXT NOT NULL,
    refresh_token TEXT NOT NULL,
    access_token  TEXT,
    expires_at    TEXT,
    rotated_at    TEXT NOT NULL,
    PRIMARY KEY (provider, account)
);
