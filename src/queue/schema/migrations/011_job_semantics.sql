-- Migration 11: job semantics. Priorities (smaller first, 0 by default, never
-- negative), unique keys (at most one unfinished job per queue and key:
-- a unique index on the live table, which holds only unfinished jobs),
-- a timeout per job (seconds; NULL: the fleet's), each failed
-- attempt's error, who ran a finished job, and the `cancelled` state
-- (a queued job cancelled at once; a running one marked, and finished
-- as cancelled instead of retried).
--
-- The claim index leads with the priority. A claim walks the levels
-- that have queued jobs (one index descent each) and, in each, the due
-- jobs oldest first, so a job scheduled for later never stands in the
-- way; and it works several queues in the order given. Claims take
-- their turns per queue, in name order, so two fleets working the same
-- queues in different orders cannot deadlock. The jobs come back in
-- the order they are to run.
--
-- (Its functions are defined in ../functions/, applied after the
-- migrations whenever the version changes.)

ALTER TABLE {s}.jobs_live
    ADD COLUMN priority int NOT NULL DEFAULT 0 CHECK (priority >= 0),
    ADD COLUMN unique_key text,
    ADD COLUMN timeout float8 CHECK (timeout > 0),
    ADD COLUMN errors jsonb NOT NULL DEFAULT '[]',
    ADD COLUMN cancel_requested bool NOT NULL DEFAULT false;
ALTER TABLE {s}.jobs_finished
    ADD COLUMN priority int NOT NULL DEFAULT 0,
    ADD COLUMN unique_key text,
    ADD COLUMN timeout float8,
    ADD COLUMN errors jsonb NOT NULL DEFAULT '[]',
    ADD COLUMN cancel_requested bool NOT NULL DEFAULT false;
ALTER TABLE {s}.jobs_live DROP CONSTRAINT jobs_state_check,
    ADD CONSTRAINT jobs_state_check
        CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled'));
ALTER TABLE {s}.jobs_finished DROP CONSTRAINT jobs_state_check,
    ADD CONSTRAINT jobs_state_check
        CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled'));
CREATE OR REPLACE VIEW {s}.jobs AS
    SELECT * FROM {s}.jobs_live UNION ALL SELECT * FROM {s}.jobs_finished;
DROP INDEX {s}.jobs_queued;
CREATE INDEX jobs_queued ON {s}.jobs_live (queue, priority, run_at, id)
    WHERE state = 'queued';
CREATE UNIQUE INDEX jobs_unique ON {s}.jobs_live (queue, unique_key)
    WHERE unique_key IS NOT NULL;

-- The id of the job queued (or already holding the unique key). Every
-- parameter but the first two has a default, so calls of older
-- versions keep working.
DROP FUNCTION IF EXISTS {s}.enqueue(text, text, int, timestamptz);
