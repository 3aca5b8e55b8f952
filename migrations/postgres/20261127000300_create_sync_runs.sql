-- sync_runs: see DESIGN.md "State DB". Timestamps are RFC 3339 UTC text on both backends.
CREATE TABLE sync_runs (
    run_id      TEXT PRIMARY KEY,
    audience    TEXT NOT NULL,
    provider    TEXT NOT NULL,
    dry_run     BIGINT NOT NULL DEFAULT 0,
    status      TEXT NOT NULL,
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    report      TEXT
);
CREATE INDEX sync_runs_by_audience ON sync_runs (audience, started_at);
