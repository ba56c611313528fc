-- graydar controller schema, version 1.
-- Portable SQL: runs on SQLite (the embedded default) and PostgreSQL.
-- Times are milliseconds since the Unix epoch (BIGINT) next to the RFC 3339
-- text the API returns; JSON documents are stored as TEXT.

CREATE TABLE agents (
    hostname        TEXT PRIMARY KEY,
    addresses       TEXT NOT NULL,
    labels          TEXT NOT NULL,
    kernel_version  TEXT NOT NULL,
    agent_version   TEXT NOT NULL,
    capabilities    TEXT NOT NULL,
    registered_ms   BIGINT NOT NULL,
    last_seen_ms    BIGINT NOT NULL
);

-- The latest state of each finding (the snapshot carried by its newest transition).
CREATE TABLE findings (
    id              TEXT PRIMARY KEY,
    agent           TEXT NOT NULL REFERENCES agents (hostname),
    kind            TEXT NOT NULL,
    subject         TEXT NOT NULL,
    severity        TEXT NOT NULL,
    state           TEXT NOT NULL,
    since           TEXT NOT NULL,
    last_seen       TEXT NOT NULL,
    resolved_at     TEXT,
    summary         TEXT NOT NULL,
    evidence        TEXT NOT NULL,
    runbook         TEXT NOT NULL,
    -- `at` of the transition the row reflects, and when it was stored.
    state_at_ms     BIGINT NOT NULL,
    updated_ms      BIGINT NOT NULL
);

CREATE INDEX findings_agent ON findings (agent);
CREATE INDEX findings_state ON findings (state, kind);
CREATE INDEX findings_updated ON findings (updated_ms);

-- Every transition ever received; the key makes re-delivery idempotent.
CREATE TABLE finding_transitions (
    finding_id      TEXT NOT NULL,
    transition      TEXT NOT NULL,
    at_ms           BIGINT NOT NULL,
    at              TEXT NOT NULL,
    agent           TEXT NOT NULL,
    severity        TEXT NOT NULL,
    summary         TEXT NOT NULL,
    evidence        TEXT NOT NULL,
    received_ms     BIGINT NOT NULL,
    PRIMARY KEY (finding_id, transition, at_ms)
);
