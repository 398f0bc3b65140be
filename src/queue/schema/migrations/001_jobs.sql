-- Migration 1: jobs, with a partial index over runnable jobs only.

CREATE TABLE {s}.jobs (
   id bigserial PRIMARY KEY,
   queue text NOT NULL,
   payload text NOT NULL,
   state text NOT NULL DEFAULT 'queued'
       CHECK (state IN ('queued', 'running', 'done', 'failed')),
   attempts int NOT NULL DEFAULT 0,
   max_attempts int NOT NULL DEFAULT 3,
   run_at timestamptz NOT NULL DEFAULT now(),
   locked_by text,
   locked_until timestamptz,
   result text,
   last_error text,
   created_at timestamptz NOT NULL DEFAULT now(),
   finished_at timestamptz
);
CREATE INDEX jobs_queued ON {s}.jobs (queue, run_at, id) WHERE state = 'queued';
CREATE INDEX jobs_running ON {s}.jobs (locked_until) WHERE state = 'running';
CREATE INDEX jobs_locked_by ON {s}.jobs (locked_by) WHERE state = 'running';
