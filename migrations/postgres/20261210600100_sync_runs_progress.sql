-- sync_runs progress (issue 26): who holds the run (the `locks` row `lock_name`/`holder` that
-- keeps it alive), the step it is at, how many members it has committed and when it last
-- committed one, and which later run resumed it once it was found `interrupted`.
ALTER TABLE sync_runs ADD COLUMN lock_name TEXT;
ALTER TABLE sync_runs ADD COLUMN holder TEXT;
ALTER TABLE sync_runs ADD COLUMN step TEXT;
ALTER TABLE sync_runs ADD COLUMN committed BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sync_runs ADD COLUMN progress_at TEXT;
ALTER TABLE sync_runs ADD COLUMN resumed_by TEXT;
CREATE INDEX sync_runs_by_status ON sync_runs (status);
