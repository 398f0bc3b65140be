-- Migration 25: a job has a kind, the name of what it does, and
-- arguments, JSON (issue 24). Jobs queued with a payload alone are of
-- kind 'default' and have no arguments; a job's input (the payload a
-- handler is given) is its arguments if it has any, else its payload.
-- A fleet that serves some kinds only (`--kinds`) claims through an
-- index led by the queue and the kind, so serving 1 kind of 100 in a
-- deep backlog walks none of the other 99; a fleet that serves every
-- kind keeps the queue's index. claim, runnable, first_queued and
-- next_level take the kinds, take_picked returns the kind, and the
-- enqueue functions take kind and arguments: they are dropped here and
-- defined again (../functions/).
ALTER TABLE {s}.jobs_live ADD COLUMN kind text NOT NULL DEFAULT 'default',
                          ADD COLUMN args jsonb;
ALTER TABLE {s}.jobs_finished ADD COLUMN kind text NOT NULL DEFAULT 'default',
                              ADD COLUMN args jsonb;
CREATE INDEX jobs_queued_by_kind ON {s}.jobs_live (queue, kind, priority, run_at, id)
    WHERE state = 'queued';
DROP FUNCTION IF EXISTS {s}.claim(text[], int, text, float8, text[], int[], float8[]);
DROP FUNCTION IF EXISTS {s}.take_picked(tid[], text[], text, float8);
DROP FUNCTION IF EXISTS {s}.runnable(text[], text[], int[], float8[]);
DROP FUNCTION IF EXISTS {s}.first_queued(text[]);
DROP FUNCTION IF EXISTS {s}.next_level(text, int, text[], int[]);
DROP FUNCTION IF EXISTS {s}.enqueue(text, text, int, timestamptz, int, text, float8);
DROP FUNCTION IF EXISTS {s}.enqueue_job(text, text, int, timestamptz, int, text, float8);
CREATE OR REPLACE VIEW {s}.jobs AS
    SELECT * FROM {s}.jobs_live UNION ALL SELECT * FROM {s}.jobs_finished;
