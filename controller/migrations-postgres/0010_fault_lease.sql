-- graydar controller schema, version 10 (PostgreSQL): a fault's own lease
-- (ms), shorter than the controller's faults.lease (a game day's
-- safety.lease); NULL: the controller's.

ALTER TABLE faults ADD COLUMN lease_ms BIGINT;
