-- locks: named leases (e.g. `sync:<audience>`) so two syncs of one audience never run at once.
-- A holder that crashed leaves a row whose expires_at passes (or whose process is gone).
CREATE TABLE locks (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    acquired_at TEXT NOT NULL,
    expires_at  TEXT NOT NULL
);
