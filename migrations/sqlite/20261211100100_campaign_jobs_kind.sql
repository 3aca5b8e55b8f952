-- campaign_jobs becomes the one durable queue of audience jobs (issue 26): besides campaign
-- pushes it holds syncs asked for over HTTP (`POST /v1/sync`) while a run of the audience was
-- going on. `kind` says which; a sync job's key is its run id and its request `{"full": bool}`.
ALTER TABLE campaign_jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'campaign';
