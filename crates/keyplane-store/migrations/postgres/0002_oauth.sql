-- OAuth 2.0 clients, their secrets, signing keys and revoked access tokens (PostgreSQL).
-- Access tokens themselves are never stored: only what was revoked, until it would have expired.

CREATE TABLE oauth_clients (
    seq                         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    client_id                   TEXT NOT NULL UNIQUE,
    org_id                      TEXT NOT NULL REFERENCES orgs(id),
    project_id                  TEXT NOT NULL REFERENCES projects(id),
    owner_member_id             TEXT,
    name                        TEXT NOT NULL,
    description                 TEXT NOT NULL,
    scopes                      TEXT NOT NULL,
    access_token_ttl_seconds    BIGINT NOT NULL,
    token_format                TEXT NOT NULL,
    signing_alg                 TEXT,
    audience                    TEXT,
    secret_rotation_days        BIGINT,
    not_before                  BIGINT,
    created_at                  BIGINT NOT NULL,
    created_by                  TEXT NOT NULL,
    UNIQUE (project_id, name)
);
CREATE INDEX oauth_clients_org ON oauth_clients (org_id, seq);

CREATE TABLE oauth_client_secrets (
    id                  TEXT PRIMARY KEY,
    client_id           TEXT NOT NULL REFERENCES oauth_clients(client_id) ON DELETE CASCADE,
    digest              BYTEA NOT NULL UNIQUE,
    pepper_version      BIGINT NOT NULL,
    start               TEXT NOT NULL,
    created_at          BIGINT NOT NULL,
    expires_at          BIGINT,
    last_used_at        BIGINT,
    use_count           BIGINT NOT NULL,
    expiry_warned_at    BIGINT
);
CREATE INDEX oauth_client_secrets_client ON oauth_client_secrets (client_id);

CREATE TABLE signing_keys (
    kid             TEXT PRIMARY KEY,
    alg             TEXT NOT NULL,
    private_sealed  BYTEA NOT NULL,
    created_at      BIGINT NOT NULL,
    activates_at    BIGINT NOT NULL,
    unpublish_at    BIGINT
);

CREATE TABLE revoked_tokens (
    jti         TEXT PRIMARY KEY,
    client_id   TEXT NOT NULL,
    expires_at  BIGINT NOT NULL,
    revoked_at  BIGINT NOT NULL
);
CREATE INDEX revoked_tokens_expiry ON revoked_tokens (expires_at);
