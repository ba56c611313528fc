-- graydar controller schema, version 11 (PostgreSQL): the console's ended
-- sessions. A logout writes the session's id here, so a copy of its cookie
-- stops working on every controller of this database; the row goes once the
-- session would have expired anyway.

CREATE TABLE console_logouts (
    session     TEXT PRIMARY KEY,
    expires_ms  BIGINT NOT NULL
);
