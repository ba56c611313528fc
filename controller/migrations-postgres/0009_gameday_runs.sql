-- graydar controller schema, version 9 (PostgreSQL): game-day runs. The run
-- document (what GET /api/v1/gamedays/runs/{id} answers, JSON) is rewritten
-- on every transition before the runner acts on it; the columns beside it
-- are what the list filters and the restart recovery read.

CREATE TABLE gameday_runs (
    id          TEXT COLLATE "C" PRIMARY KEY,
    gameday     TEXT COLLATE "C" NOT NULL,
    trigger     TEXT NOT NULL,
    state       TEXT NOT NULL,
    outcome     TEXT,
    created_ms  BIGINT NOT NULL,
    updated_ms  BIGINT NOT NULL,
    doc         TEXT NOT NULL
);

CREATE INDEX gameday_runs_by_gameday ON gameday_runs (gameday, created_ms);
CREATE INDEX gameday_runs_by_created ON gameday_runs (created_ms);
CREATE INDEX gameday_runs_unfinished ON gameday_runs (state) WHERE state <> 'completed';
