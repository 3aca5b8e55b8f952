-- suppression_lifts: every suppression an operator lifted (issue 21's admin pages), with what it
-- had been (reason, source, detail, since when), why it was lifted and by whom; written in the
-- transaction that sets the suppression's lifted_at. Only bounces are ever lifted, never a
-- consent opt-out (store::suppressions::liftable). Timestamps are RFC 3339 UTC text.
CREATE TABLE suppression_lifts (
    id            BIGSERIAL PRIMARY KEY,
    email         TEXT NOT NULL,
    reason        TEXT NOT NULL,
    source        TEXT NOT NULL,
    detail        TEXT,
    suppressed_at TEXT NOT NULL,
    why           TEXT NOT NULL,
    lifted_by     TEXT NOT NULL,
    lifted_at     TEXT NOT NULL
);
CREATE INDEX suppression_lifts_by_email ON suppression_lifts (email, id);
