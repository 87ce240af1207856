-- Checkpoints of the activity chain (issue 11): a verification that found the chain intact up
-- to `seq` records that event's hash with an HMAC under a key derived from the pepper, so the
-- next verification starts there, and a full one checks the chain still passes through it.
CREATE TABLE activity_checkpoints (
    seq             INTEGER PRIMARY KEY,
    hash            TEXT NOT NULL,
    at              INTEGER NOT NULL,
    pepper_version  INTEGER NOT NULL,
    mac             TEXT NOT NULL
);
