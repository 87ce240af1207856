-- Optimistic concurrency (issue 10): every change to a key, a client (with its secrets) or a
-- member bumps its version; a change names the version it was computed from. A member's
-- removal disables the OAuth clients they owned.
ALTER TABLE api_keys ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
ALTER TABLE oauth_clients ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
ALTER TABLE oauth_clients ADD COLUMN disabled_at INTEGER;
ALTER TABLE members ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
