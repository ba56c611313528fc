-- graydar controller schema, version 4 (PostgreSQL): the path mesh's fleet keys.
-- Every agent signs its mesh datagrams with the newest key whose active_ms
-- has passed and accepts all of them; only the newest few are kept.

CREATE TABLE mesh_keys (
    id          BIGINT PRIMARY KEY,
    secret      BYTEA NOT NULL,
    created_ms  BIGINT NOT NULL,
    active_ms   BIGINT NOT NULL
);
