-- graydar controller schema, version 3: the fault list reads the history
-- from SQLite newest first (memory holds only live faults).
CREATE INDEX faults_created ON faults (created_ms);
