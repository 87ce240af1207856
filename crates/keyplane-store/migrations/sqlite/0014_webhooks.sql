-- Webhooks and notices (issue 16). An endpoint's secret is a signing key, so it is stored
-- sealed (XChaCha20-Poly1305 under a key derived from the pepper), never in plaintext.
-- Deliveries are the outbox: queued in the transaction that appends their activity event.

CREATE TABLE webhook_endpoints (
    id                  TEXT PRIMARY KEY,
    org_id              TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    project_id          TEXT,
    url                 TEXT NOT NULL,
    description         TEXT NOT NULL,
    events              TEXT NOT NULL,          -- JSON list of patterns, as given
    enabled             BOOLEAN NOT NULL,
    disabled_reason     TEXT,
    secret_sealed       BLOB NOT NULL,
    pepper_version      BIGINT NOT NULL,
    previous_sealed     BLOB,
    previous_until      BIGINT,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL,
    failing_since       BIGINT
);
CREATE INDEX webhook_endpoints_org ON webhook_endpoints (org_id);

-- One row per pattern: an event type, `area.*`, or `*`.
CREATE TABLE webhook_subscriptions (
    endpoint_id         TEXT NOT NULL REFERENCES webhook_endpoints(id) ON DELETE CASCADE,
    pattern             TEXT NOT NULL,
    PRIMARY KEY (endpoint_id, pattern)
);

CREATE TABLE webhook_deliveries (
    id                  TEXT PRIMARY KEY,       -- the webhook-id
    endpoint_id         TEXT NOT NULL REFERENCES webhook_endpoints(id) ON DELETE CASCADE,
    org_id              TEXT NOT NULL,
    event_id            TEXT NOT NULL,
    event_type          TEXT NOT NULL,
    payload             TEXT NOT NULL,
    created_at          BIGINT NOT NULL,
    state               TEXT NOT NULL,          -- pending, delivered, failed
    attempts            BIGINT NOT NULL,
    next_attempt_at     BIGINT NOT NULL,
    lease_until         BIGINT,
    last_status         BIGINT,
    last_error          TEXT,
    delivered_at        BIGINT,
    UNIQUE (endpoint_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, next_attempt_at);
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, created_at);

CREATE TABLE webhook_attempts (
    delivery_id         TEXT NOT NULL REFERENCES webhook_deliveries(id) ON DELETE CASCADE,
    endpoint_id         TEXT NOT NULL,
    at                  BIGINT NOT NULL,
    duration_ms         BIGINT NOT NULL,
    status              BIGINT,
    error               TEXT
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, at);

-- A notice (api_key.expiring, client_secret.rotation_due, api_key.unused) is given once per
-- credential and threshold: the row is inserted with its event, and a second insert fails.
CREATE TABLE credential_notices (
    kind                TEXT NOT NULL,
    credential_id       TEXT NOT NULL,
    threshold           BIGINT NOT NULL,
    at                  BIGINT NOT NULL,
    PRIMARY KEY (kind, credential_id, threshold)
);
