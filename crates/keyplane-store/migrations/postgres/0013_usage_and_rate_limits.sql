-- Usage analytics and rate limits (issue 15).

-- Named rate limits of API keys and OAuth clients (a JSON list of {name, limit, window, cost?,
-- shared?}).
ALTER TABLE api_keys ADD COLUMN rate_limits TEXT NOT NULL DEFAULT '[]';
ALTER TABLE oauth_clients ADD COLUMN rate_limits TEXT NOT NULL DEFAULT '[]';

-- Requests counted per minute (kept a day) and per hour (kept 90 days by default), per
-- credential, service and outcome. Written by each node's flush as an upsert that adds, so
-- several nodes merge. org_id, project_id and credential_id are '' for a request no credential
-- could be named for (missing, malformed, unknown); service is '' when not known. outcome is
-- the small code of keyplane_core::domain::usage::Outcome.
CREATE TABLE usage_minutes (
    bucket          BIGINT NOT NULL,   -- minutes since the Unix epoch
    org_id          TEXT NOT NULL,
    credential_id   TEXT NOT NULL,
    service         TEXT NOT NULL,
    outcome         SMALLINT NOT NULL,
    project_id      TEXT NOT NULL,
    count           BIGINT NOT NULL,
    PRIMARY KEY (org_id, bucket, credential_id, service, outcome)
);
CREATE INDEX usage_minutes_credential ON usage_minutes (credential_id, bucket);

CREATE TABLE usage_hours (
    bucket          BIGINT NOT NULL,   -- hours since the Unix epoch
    org_id          TEXT NOT NULL,
    credential_id   TEXT NOT NULL,
    service         TEXT NOT NULL,
    outcome         SMALLINT NOT NULL,
    project_id      TEXT NOT NULL,
    count           BIGINT NOT NULL,
    PRIMARY KEY (org_id, bucket, credential_id, service, outcome)
);
CREATE INDEX usage_hours_credential ON usage_hours (credential_id, bucket);

-- Rate-limit counts of windows of a minute or longer, so a restart does not hand out a fresh
-- window (added to by each node's flush; a window's row is purged once it has ended).
-- counter is "<share>/<limit name>" (e.g. "key_abc/daily", "owner:mem_x/daily").
CREATE TABLE rate_limit_windows (
    counter         TEXT NOT NULL,
    window_start    BIGINT NOT NULL,   -- ms since the Unix epoch
    window_end      BIGINT NOT NULL,
    count           BIGINT NOT NULL,
    PRIMARY KEY (counter, window_start)
);
