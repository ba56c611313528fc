-- graydar controller schema, version 7 (PostgreSQL): game-day definitions
-- (the spec as the API answers it, JSON); runs come later.

CREATE TABLE gamedays (
    name        TEXT COLLATE "C" PRIMARY KEY,
    spec        TEXT NOT NULL,
    created_ms  BIGINT NOT NULL,
    updated_ms  BIGINT NOT NULL
);
