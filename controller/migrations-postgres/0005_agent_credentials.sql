-- graydar controller schema, version 5 (PostgreSQL): per-agent credentials.
-- An agent enrolls once with a shared bootstrap token (role `agent`) and gets
-- a secret bound to its hostname; every later call of that agent presents
-- it. Only the secret's SHA-256 is stored.

CREATE TABLE agent_credentials (
    hostname    TEXT COLLATE "C" PRIMARY KEY,
    sha256      BYTEA NOT NULL UNIQUE,
    created_ms  BIGINT NOT NULL
);
