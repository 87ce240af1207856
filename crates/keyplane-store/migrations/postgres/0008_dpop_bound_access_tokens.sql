-- DPoP required per client (issue 12, RFC 9449 §5.2 client metadata `dpop_bound_access_tokens`):
-- when true, the token endpoint refuses this client's token requests that carry no DPoP proof.
-- Existing clients keep today's behaviour (a proof is optional).
ALTER TABLE oauth_clients ADD COLUMN dpop_bound_access_tokens BOOLEAN NOT NULL DEFAULT FALSE;
