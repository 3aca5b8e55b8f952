-- api_budget: requests a provider's API has been sent per UTC day (YYYY-MM-DD), counted before
-- each request so that every process sharing the state DB stays within the provider's daily quota.
CREATE TABLE api_budget (
    provider TEXT NOT NULL,
    day      TEXT NOT NULL,
    used     BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (provider, day)
);
