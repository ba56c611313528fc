-- graydar controller schema, version 2 (PostgreSQL): faults (issue 5).
-- One row per fault an operator asked for, one row per (fault, targeted agent)
-- with the state the agent last reported, and the kill-switch epoch.

CREATE TABLE faults (
    id                TEXT COLLATE "C" PRIMARY KEY,
    kind              TEXT NOT NULL,
    spec              TEXT NOT NULL,
    selector          TEXT NOT NULL,
    dry_run           BOOLEAN NOT NULL,
    forced            BOOLEAN NOT NULL,
    duration_seconds  BIGINT NOT NULL,
    created_ms        BIGINT NOT NULL,
    expires_ms        BIGINT NOT NULL,
    ended_ms          BIGINT,
    end_reason        TEXT
);

CREATE TABLE fault_agents (
    fault_id    TEXT COLLATE "C" NOT NULL REFERENCES faults (id),
    agent       TEXT COLLATE "C" NOT NULL,
    state       TEXT NOT NULL,
    reason      TEXT,
    operations  TEXT NOT NULL,
    updated_ms  BIGINT NOT NULL,
    PRIMARY KEY (fault_id, agent)
);

CREATE TABLE fault_meta (
    name   TEXT PRIMARY KEY,
    value  BIGINT NOT NULL
);
