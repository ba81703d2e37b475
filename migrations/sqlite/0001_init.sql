-- gc-assist storage, SQLite. All SQL of the project lives in src/store; this file is
-- embedded into the binary and applied at open. Times are Unix epoch milliseconds (INTEGER)
-- except audit timestamps, which keep the exact RFC 3339 text that was hashed.

-- One row per prompt injection; its history is in audit_records.
CREATE TABLE injections (
    id              TEXT    PRIMARY KEY NOT NULL,  -- UUID v7, lowercase hyphenated
    conversation_id TEXT    NOT NULL,
    prompt_id       TEXT    NOT NULL,
    status          TEXT    NOT NULL CHECK (status IN ('armed', 'scheduled', 'queued', 'delivered', 'failed',
                                                       'cancelled', 'expired', 'dismissed', 'clicked', 'withdrawn')),
    payload         TEXT    NOT NULL,              -- canonical JSON of the validated payload
    content         TEXT    NOT NULL,              -- the resolved prompt {title, body, url?, priority}
    priority        TEXT    NOT NULL CHECK (priority IN ('low', 'normal', 'high', 'critical')),
    source          TEXT    NOT NULL CHECK (source IN ('api', 'rule', 'cli')),
    api_key_id      TEXT,
    rule_id         TEXT,
    created_at      INTEGER NOT NULL,
    admitted_at     INTEGER,
    show_at         INTEGER,
    expires_at      INTEGER,
    queue_deadline  INTEGER,
    updated_at      INTEGER NOT NULL,
    last_error      TEXT
);

-- The live prompts of a conversation (panel, GET /v1/conversations/{id}/prompts). Partial, so
-- finished injections (the vast majority over time) cost nothing here. Queries must repeat
-- the exact WHERE term for SQLite to pick a partial index.
CREATE INDEX injections_live_by_conversation ON injections (conversation_id, created_at)
    WHERE status IN ('armed', 'scheduled', 'queued', 'delivered');

-- The restart recovery set, by status.
CREATE INDEX injections_live_by_status ON injections (status, created_at)
    WHERE status IN ('armed', 'scheduled', 'queued', 'delivered');

-- The audit hash chain. seq is the rowid, so range scans by seq are the table's own order.
-- Ids and hashes are raw bytes: compact, and decoded without parsing at verify speed.
CREATE TABLE audit_records (
    seq              INTEGER PRIMARY KEY,
    audit_id         BLOB    NOT NULL,
    timestamp        TEXT    NOT NULL,             -- exactly the 24 bytes that were hashed
    day              TEXT    NOT NULL,             -- YYYY-MM-DD (UTC) of timestamp
    conversation_id  BLOB    NOT NULL,
    prompt_id        BLOB    NOT NULL,
    injection_id     BLOB    NOT NULL,
    status           TEXT    NOT NULL,
    latency_ms       INTEGER,
    error            TEXT,
    actor            TEXT    NOT NULL,
    reason           TEXT,
    compliance_tag   TEXT    NOT NULL,
    retention_policy TEXT    NOT NULL,
    prev_hash        BLOB    NOT NULL CHECK (length(prev_hash) = 32),
    hash             BLOB    NOT NULL CHECK (length(hash) = 32)
);

-- Day summaries (checkpoints, purge plans): the index holds (day, seq), so it covers them.
CREATE INDEX audit_records_day ON audit_records (day);
-- An injection's timeline, in seq order (the rowid rides along in the index).
CREATE INDEX audit_records_injection ON audit_records (injection_id);

-- Where the chain continues: updated in the same transaction as every append, so it survives
-- a purge of every record and is the one place the writer resumes from.
CREATE TABLE audit_head (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    last_seq  INTEGER NOT NULL,
    last_hash BLOB    NOT NULL CHECK (length(last_hash) = 32),
    last_at   INTEGER NOT NULL                     -- ms of the last record; timestamps never go back
);
INSERT INTO audit_head (id, last_seq, last_hash, last_at) VALUES (1, 0, zeroblob(32), 0);

-- Signed daily checkpoints, kept forever.
CREATE TABLE audit_checkpoints (
    day          TEXT    PRIMARY KEY NOT NULL,
    last_seq     INTEGER NOT NULL,
    last_hash    BLOB    NOT NULL CHECK (length(last_hash) = 32),
    record_count INTEGER NOT NULL,
    created_at   TEXT    NOT NULL,
    key_id       TEXT    NOT NULL,
    signature    TEXT    NOT NULL
);

-- Days removed by the retention policy, so verification can say "purged by policy".
CREATE TABLE audit_purges (
    day          TEXT    PRIMARY KEY NOT NULL,
    first_seq    INTEGER NOT NULL,
    last_seq     INTEGER NOT NULL,
    record_count INTEGER NOT NULL,
    purged_at    INTEGER NOT NULL
);

-- Audit records are append-only. A record may only be deleted once a purge row covers it,
-- and never changed. (Defence against bugs; the hash chain is the defence against people.)
CREATE TRIGGER audit_records_no_update BEFORE UPDATE ON audit_records
BEGIN
    SELECT RAISE(ABORT, 'audit records are append-only');
END;

CREATE TRIGGER audit_records_delete_only_purged BEFORE DELETE ON audit_records
WHEN NOT EXISTS (SELECT 1 FROM audit_purges WHERE OLD.seq BETWEEN first_seq AND last_seq)
BEGIN
    SELECT RAISE(ABORT, 'audit records are deleted only by a retention purge of whole days');
END;

-- Webhook outbox: one row per event per endpoint; body is the exact bytes signed and sent.
CREATE TABLE outbox (
    id              TEXT    PRIMARY KEY NOT NULL,  -- msg_<uuid v7 simple>, the webhook-id
    injection_id    TEXT    NOT NULL REFERENCES injections (id) ON DELETE CASCADE,
    endpoint_url    TEXT    NOT NULL,
    event_type      TEXT    NOT NULL,
    body            BLOB    NOT NULL,
    created_at      INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    state           TEXT    NOT NULL CHECK (state IN ('pending', 'delivered', 'dead', 'disabled')),
    last_status     INTEGER,
    last_error      TEXT,
    delivered_at    INTEGER
);

-- The delivery worker's poll (state = 'pending', due first) and the backlog figures.
CREATE INDEX outbox_due ON outbox (state, next_attempt_at);
-- Listing and counting by state (dead letters, backlog age).
CREATE INDEX outbox_by_state ON outbox (state, created_at);
-- An injection's webhooks, and the foreign key's cascade.
CREATE INDEX outbox_by_injection ON outbox (injection_id);

-- Endpoints that answered 410 Gone: nothing more is sent to them until re-enabled.
CREATE TABLE webhook_endpoints (
    url         TEXT    PRIMARY KEY NOT NULL,
    disabled_at INTEGER NOT NULL,
    reason      TEXT    NOT NULL
);

-- Idempotency-Key answers; rows older than 24 h are ignored and purgeable.
CREATE TABLE idempotency_keys (
    api_key_id    TEXT    NOT NULL,
    key           TEXT    NOT NULL,
    request_hash  TEXT    NOT NULL,
    status_code   INTEGER NOT NULL,
    response_body BLOB    NOT NULL,
    injection_id  TEXT,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (api_key_id, key)
) WITHOUT ROWID;

CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- The prompt catalogue (gc-assist prompts import).
CREATE TABLE prompts (
    id         TEXT    PRIMARY KEY NOT NULL,
    name       TEXT,
    content    TEXT    NOT NULL,                   -- {title, body, url?, priority}
    tags       TEXT    NOT NULL,                   -- JSON array of strings
    updated_at INTEGER NOT NULL
);
