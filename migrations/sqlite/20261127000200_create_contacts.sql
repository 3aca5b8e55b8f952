-- contacts: see DESIGN.md "State DB". Timestamps are RFC 3339 UTC text on both backends.
CREATE TABLE contacts (
    audience      TEXT NOT NULL,
    member_key    TEXT NOT NULL,
    email         TEXT NOT NULL,
    remote_id     TEXT,
    content_hash  TEXT NOT NULL,
    remote_status TEXT NOT NULL,
    synced_at     TEXT NOT NULL,
    PRIMARY KEY (audience, member_key)
);
CREATE INDEX contacts_by_email ON contacts (audience, email);
