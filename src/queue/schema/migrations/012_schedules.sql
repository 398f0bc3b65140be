-- Migration 12: schedules: jobs queued on a cron expression by whichever master
-- runs (see schedule.rs for how each tick fires exactly once).

CREATE TABLE {s}.schedules (
    name text PRIMARY KEY,
    cron text NOT NULL,
    timezone text,
    queue text NOT NULL,
    payload text NOT NULL,
    priority int NOT NULL DEFAULT 0 CHECK (priority >= 0),
    max_attempts int NOT NULL DEFAULT 3,
    timeout float8,
    next_at timestamptz NOT NULL,
    last_at timestamptz,
    last_job int8,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX schedules_next_at ON {s}.schedules (next_at);
