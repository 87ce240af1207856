-- Resource indicators and token exchange (issue 12).
-- A service's resource URIs (RFC 8707), a JSON array; a token requested with `resource=` names
-- them in its audience, and /v1/authz and the gateway check that audience for the service's
-- scopes when the service declares any.
ALTER TABLE services ADD COLUMN resources TEXT NOT NULL DEFAULT '[]';
-- Who may act for a credential's holder (RFC 8693 delegation): a JSON array of OAuth client ids
-- that may exchange this client's access tokens, or this API key, for a token with `act`.
ALTER TABLE oauth_clients ADD COLUMN may_act TEXT NOT NULL DEFAULT '[]';
ALTER TABLE api_keys ADD COLUMN may_act TEXT NOT NULL DEFAULT '[]';
