-- Objects a configuration file declares (issue 13): the management API refuses to change a
-- managed service, member or client unless the request says `Keyplane-Override-Config: true`,
-- and every answer shows `managed_by`.
CREATE TABLE config_managed (
    kind TEXT NOT NULL,
    object_id TEXT NOT NULL,
    managed_by TEXT NOT NULL,
    marked_at BIGINT NOT NULL,
    PRIMARY KEY (kind, object_id)
);
