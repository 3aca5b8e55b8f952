-- campaign_jobs (issue 26): campaign pushes asked for over HTTP, run in the background one
-- audience queue at a time (ordered by seq). The push itself is the `campaigns` row's (one per
-- idempotency key); a job drives it and says where it is. A job is alive while its lease
-- (`lock_name`, `holder` in `locks`) is.
CREATE TABLE campaign_jobs (
    idempotency_key  TEXT PRIMARY KEY,
    seq              BIGINT NOT NULL,
    audience         TEXT NOT NULL,
    content_hash     TEXT NOT NULL,
    request          TEXT NOT NULL,
    status           TEXT NOT NULL,
    lock_name        TEXT,
    holder           TEXT,
    attempts         BIGINT NOT NULL DEFAULT 0,
    enqueued_at      TEXT NOT NULL,
    started_at       TEXT,
    updated_at       TEXT NOT NULL,
    finished_at      TEXT,
    interrupted_at   TEXT,
    interrupted_step TEXT,
    error_code       TEXT,
    last_error       TEXT
);
CREATE INDEX campaign_jobs_queue ON campaign_jobs (audience, status, seq);
