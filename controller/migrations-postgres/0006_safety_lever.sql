-- graydar controller schema, version 6 (PostgreSQL): the safety lever. One
-- row while it is engaged (every fault reverted, new faults refused), none
-- once released.

CREATE TABLE safety_lever (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    engaged_ms  BIGINT NOT NULL,
    reason      TEXT NOT NULL
);
