-- The authorization-code grant (issue 14): clients that were never registered by an operator
-- (RFC 7591 dynamic registration, or a client ID metadata document fetched from its URL), a
-- person's standing consent for one of them at one resource (the grant), single-use codes, and
-- rotated refresh tokens. Codes and refresh tokens are stored by their HMAC digest only.

CREATE TABLE oauth_apps (
    client_id       TEXT PRIMARY KEY,
    -- 'registered' (RFC 7591) or 'metadata' (a client ID metadata document at client_id).
    kind            TEXT NOT NULL,
    name            TEXT NOT NULL,
    logo_uri        TEXT,
    client_uri      TEXT,
    redirect_uris   TEXT NOT NULL,          -- JSON list
    -- 'none' (a public client, PKCE only) or 'private_key_jwt'.
    auth_method     TEXT NOT NULL,
    jwks            TEXT,
    jwks_uri        TEXT,
    -- A registered confidential client's secret, by its HMAC digest.
    secret_digest   BYTEA,
    document        TEXT NOT NULL,          -- the metadata as registered or fetched (JSON)
    created_at      BIGINT NOT NULL,
    fetched_at      BIGINT,
    blocked_at      BIGINT,
    blocked_by      TEXT
);

CREATE TABLE oauth_grants (
    id              TEXT PRIMARY KEY,
    org_id          TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    project_id      TEXT NOT NULL,
    member_id       TEXT NOT NULL REFERENCES members(id) ON DELETE CASCADE,
    client_id       TEXT NOT NULL REFERENCES oauth_apps(client_id) ON DELETE CASCADE,
    resource        TEXT NOT NULL,
    scopes          TEXT NOT NULL,          -- space-delimited, sorted
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    last_used_at    BIGINT,
    revoked_at      BIGINT,
    revoked_reason  TEXT
);
CREATE INDEX oauth_grants_member ON oauth_grants (member_id);
CREATE INDEX oauth_grants_org ON oauth_grants (org_id);
-- One live grant per person, client and resource: a new consent widens it.
CREATE UNIQUE INDEX oauth_grants_live ON oauth_grants (member_id, client_id, resource)
    WHERE revoked_at IS NULL;

CREATE TABLE oauth_codes (
    digest          BYTEA PRIMARY KEY,
    grant_id        TEXT NOT NULL REFERENCES oauth_grants(id) ON DELETE CASCADE,
    client_id       TEXT NOT NULL,
    redirect_uri    TEXT NOT NULL,
    code_challenge  TEXT NOT NULL,
    scopes          TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    -- Set by the one redemption that wins; a second presentation finds it set.
    used_at         BIGINT
);
CREATE INDEX oauth_codes_expiry ON oauth_codes (expires_at);

CREATE TABLE oauth_refresh_tokens (
    digest          BYTEA PRIMARY KEY,
    grant_id        TEXT NOT NULL REFERENCES oauth_grants(id) ON DELETE CASCADE,
    client_id       TEXT NOT NULL,
    scopes          TEXT NOT NULL,
    jkt             TEXT,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    used_at         BIGINT
);
CREATE INDEX oauth_refresh_tokens_grant ON oauth_refresh_tokens (grant_id);
CREATE INDEX oauth_refresh_tokens_expiry ON oauth_refresh_tokens (expires_at);
