-- OAuth 2.0 clients, their secrets, signing keys and revoked access tokens (SQLite).
-- Access tokens themselves are never stored: only what was revoked, until it would have expired.

CREATE TABLE oauth_clients (
    seq                         INTEGER PRIMARY KEY AUTOINCREMENT,
    client_id                   TEXT NOT NULL UNIQUE,
    org_id                      TEXT NOT NULL REFERENCES orgs(id),
    project_id                  TEXT NOT NULL REFERENCES projects(id),
    owner_member_id             TEXT,
    name                        TEXT NOT NULL,
    description                 TEXT NOT NULL,
    scopes                      TEXT NOT NULL,
    access_token_ttl_seconds    INTEGER NOT NULL,
    token_format                TEXT NOT NULL,
    signing_alg                 TEXT,
    audience                    TEXT,
    secret_rotation_days        INTEGER,
    not_before                  INTEGER,
    created_at                  INTEGER NOT NULL,
    created_by                  TEXT NOT NULL,
    UNIQUE (project_id, name)
);
CREATE INDEX oauth_clients_org ON oauth_clients (org_id, seq);

CREATE TABLE oauth_client_secrets (
    id                  TEXT PRIMARY KEY,
    client_id           TEXT NOT NULL REFERENCES oauth_clients(client_id) ON DELETE CASCADE,
    digest              BLOB NOT NULL UNIQUE,
    pepper_version      INTEGER NOT NULL,
    start               TEXT NOT NULL,
    created_at          INTEGER NOT NULL,
    expires_at          INTEGER,
    last_used_at        INTEGER,
    use_count           INTEGER NOT NULL,
    expiry_warned_at    INTEGER
);
CREATE INDEX oauth_client_secrets_client ON oauth_client_secrets (client_id);

CREATE TABLE signing_keys (
    kid             TEXT PRIMARY KEY,
    alg             TEXT NOT NULL,
    private_sealed  BLOB NOT NULL,
    created_at      INTEGER NOT NULL,
    activates_at    INTEGER NOT NULL,
    unpublish_at    INTEGER
);

CREATE TABLE revoked_tokens (
    jti         TEXT PRIMARY KEY,
    client_id   TEXT NOT NULL,
    expires_at  INTEGER NOT NULL,
    revoked_at  INTEGER NOT NULL
);
CREATE INDEX revoked_tokens_expiry ON revoked_tokens (expires_at);
