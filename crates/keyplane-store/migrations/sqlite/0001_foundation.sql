-- keyplane foundation (SQLite). Times are milliseconds since the Unix epoch; lists are JSON text.
-- Applied migrations are never edited: add a new numbered file, in both dialects.

CREATE TABLE orgs (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
);

CREATE TABLE projects (
    id          TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL REFERENCES orgs(id),
    name        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    UNIQUE (org_id, name)
);

CREATE TABLE services (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL,
    scopes      TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE members (
    id          TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL REFERENCES orgs(id),
    email       TEXT NOT NULL,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    UNIQUE (org_id, email)
);

CREATE TABLE roles (
    id          TEXT PRIMARY KEY,
    org_id      TEXT REFERENCES orgs(id),
    name        TEXT NOT NULL,
    description TEXT NOT NULL,
    permissions TEXT NOT NULL,
    scopes      TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE UNIQUE INDEX roles_org_name ON roles (COALESCE(org_id, ''), name);

CREATE TABLE api_keys (
    seq                 INTEGER PRIMARY KEY AUTOINCREMENT,
    id                  TEXT NOT NULL UNIQUE,
    org_id              TEXT NOT NULL REFERENCES orgs(id),
    project_id          TEXT NOT NULL REFERENCES projects(id),
    owner_member_id     TEXT,
    name                TEXT NOT NULL,
    description         TEXT NOT NULL,
    scopes              TEXT NOT NULL,
    roles               TEXT NOT NULL,
    start               TEXT NOT NULL,
    created_at          INTEGER NOT NULL,
    created_by          TEXT NOT NULL,
    expires_at          INTEGER,
    last_used_at        INTEGER,
    is_active           BOOLEAN NOT NULL,
    deactivated_at      INTEGER,
    default_for_service TEXT
);
CREATE INDEX api_keys_org ON api_keys (org_id, seq);
CREATE INDEX api_keys_owner ON api_keys (owner_member_id);
CREATE UNIQUE INDEX api_keys_default ON api_keys (project_id, default_for_service)
    WHERE default_for_service IS NOT NULL;

CREATE TABLE api_key_secrets (
    digest          BLOB PRIMARY KEY,
    key_id          TEXT NOT NULL REFERENCES api_keys(id),
    pepper_version  INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER
);
CREATE INDEX api_key_secrets_key ON api_key_secrets (key_id);

CREATE TABLE admin_keys (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    digest          BLOB NOT NULL,
    pepper_version  INTEGER NOT NULL,
    created_at      INTEGER NOT NULL
);

CREATE TABLE activity_events (
    seq         INTEGER PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    at          INTEGER NOT NULL,
    org_id      TEXT,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT,
    outcome     TEXT NOT NULL,
    client_addr TEXT,
    user_agent  TEXT,
    details     TEXT NOT NULL,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL
);
CREATE INDEX activity_events_org ON activity_events (org_id, seq);

CREATE TABLE activity_head (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    seq     INTEGER NOT NULL,
    hash    TEXT NOT NULL
);
