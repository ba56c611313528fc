-- graydar controller schema, version 1 (PostgreSQL; controller/migrations/
-- holds the SQLite twin of every file here, same number, same name).
-- Times are milliseconds since the Unix epoch (BIGINT) next to the RFC 3339
-- text the API returns. JSON documents are TEXT, not JSONB: the API answers
-- them byte for byte as stored (JSONB would reorder their keys).
-- Text keys sort byte-wise (COLLATE "C"), as SQLite sorts them, whatever
-- the database's locale.

CREATE TABLE agents (
    hostname        TEXT COLLATE "C" PRIMARY KEY,
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
    id              TEXT COLLATE "C" PRIMARY KEY,
    agent           TEXT COLLATE "C" NOT NULL REFERENCES agents (hostname),
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
    finding_id      TEXT COLLATE "C" NOT NULL,
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
