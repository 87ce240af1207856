-- Machine identity without shared secrets (issue 12): a client's RFC 7591 authentication
-- method and, for private_key_jwt, its public keys (an inline JWK set, or where to fetch one);
-- and the replay cache of client assertions: a jti is refused until its assertion has expired,
-- on every node that shares the database.
ALTER TABLE oauth_clients ADD COLUMN token_endpoint_auth_method TEXT NOT NULL DEFAULT 'client_secret_basic';
ALTER TABLE oauth_clients ADD COLUMN jwks TEXT;
ALTER TABLE oauth_clients ADD COLUMN jwks_uri TEXT;

CREATE TABLE client_assertion_jtis (
    client_id   TEXT NOT NULL,
    jti         TEXT NOT NULL,
    expires_at  BIGINT NOT NULL,
    PRIMARY KEY (client_id, jti)
);
CREATE INDEX client_assertion_jtis_expiry ON client_assertion_jtis (expires_at);
