-- Claims the rows the claim picked, by their tuple ids, whatever the
-- statistics: on a table not yet analysed (a fleet started right after a
-- bulk enqueue) the planner guessed few queued jobs and updated through
-- the queued-jobs index, reading the whole backlog to find the rows it had
-- just picked (14 ms against 0.2 ms per claim on 100,000 fresh jobs). So
-- every other way in is off for this plan (migration 15). Returns the jobs
-- in the order they are to run, each with its max_attempts (migration 16)
-- whether it is a suspect (migration 23), its run_at, in seconds since
-- the epoch (the caller's floor: migration 24), and its kind; its payload
-- is its input: its arguments if it has any, else its payload (migration
-- 25).
CREATE OR REPLACE FUNCTION {s}.take_picked(p_picked tid[], p_queues text[],
                                             p_owner text, p_lease float8)
RETURNS TABLE (job_id int8, job_payload text, job_attempt int, job_queue text,
               job_priority int, job_timeout float8, job_max_attempts int,
               job_suspect bool, job_run_at float8, job_kind text)
LANGUAGE sql
SET enable_seqscan = off SET enable_bitmapscan = off SET enable_indexscan = off
AS $f$
    WITH claimed AS (
        UPDATE {s}.jobs_live AS j
        SET state = 'running', attempts = j.attempts + 1, locked_by = p_owner,
            locked_until = now() + make_interval(secs => p_lease)
        WHERE j.ctid = ANY(p_picked) AND j.state = 'queued'
        RETURNING j.id, coalesce(j.args::text, j.payload) AS payload, j.attempts, j.queue,
                  j.priority, j.timeout, j.run_at, j.max_attempts, j.suspect, j.kind
    )
    SELECT c.id, c.payload, c.attempts, c.queue, c.priority, c.timeout, c.max_attempts,
           c.suspect, extract(epoch FROM c.run_at)::float8, c.kind
    FROM claimed AS c
    ORDER BY array_position(p_queues, c.queue), c.priority, c.run_at, c.id
$f$;
