-- The web console (PostgreSQL): members' password hashes, one-time password links and sessions.
-- Links and sessions are stored by the HMAC digest of their token, never the token.

CREATE TABLE member_passwords (
    member_id   TEXT PRIMARY KEY REFERENCES members(id) ON DELETE CASCADE,
    hash        TEXT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE console_links (
    digest      BYTEA PRIMARY KEY,
    member_id   TEXT NOT NULL REFERENCES members(id) ON DELETE CASCADE,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    created_by  TEXT NOT NULL
);
CREATE INDEX console_links_member ON console_links (member_id);

CREATE TABLE console_sessions (
    digest              BYTEA PRIMARY KEY,
    member_id           TEXT REFERENCES members(id) ON DELETE CASCADE,
    admin_key_digest    BYTEA,
    org_id              TEXT,
    project_id          TEXT,
    -- Every member the password proved at sign-in (the same person in several organizations),
    -- as a JSON list: the switcher moves the session between them.
    member_ids          TEXT NOT NULL DEFAULT '[]',
    created_at          BIGINT NOT NULL,
    expires_at          BIGINT NOT NULL
);
CREATE INDEX console_sessions_member ON console_sessions (member_id);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);
