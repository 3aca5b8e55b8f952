-- quota_alerts: the quota alerts raised, one row per limit, threshold and period. The primary key
-- is the claim: the process whose INSERT ... ON CONFLICT DO NOTHING adds the row sends the alert,
-- so it goes once per threshold and period across restarts and workers sharing the state DB.
-- kind: monthly_quota | hourly_limit | api_daily_budget; subject: the route (or "relay" for the
-- hourly limit over all routes) or the provider; period_start: RFC 3339 UTC, the first instant of
-- the month, hour or day the limit counts over.
CREATE TABLE quota_alerts (
    kind         TEXT NOT NULL,
    subject      TEXT NOT NULL,
    threshold    BIGINT NOT NULL,
    period_start TEXT NOT NULL,
    used         BIGINT NOT NULL,
    limit_value  BIGINT NOT NULL,
    claimed_at   TEXT NOT NULL,
    PRIMARY KEY (kind, subject, threshold, period_start)
);
