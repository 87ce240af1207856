-- Workload identity federation (issue 12): the external issuers a private_key_jwt client trusts,
-- as a JSON array of {issuer, subject | subject_pattern, audience}; NULL when it trusts none.
-- Platform tokens' jtis share the client_assertion_jtis replay table, under the client id
-- `federated|<issuer>`, so a platform token is single-use across the whole deployment.
ALTER TABLE oauth_clients ADD COLUMN federated_credentials TEXT;
