-- graydar controller schema, version 3 (PostgreSQL): the fault list reads
-- the history newest first (memory holds only live faults).
CREATE INDEX faults_created ON faults (created_ms);
