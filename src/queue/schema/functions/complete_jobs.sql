-- The outcomes of jobs of any number of claims, each job's owner stamp
-- beside it, in one statement: a child's workers record together (see
-- completions.rs). Failed attempts with attempts left, not cancelled, are
-- queued again after a backoff, the attempt's error kept, no longer
-- suspects (migration 23: the job's code ran and answered); done jobs, and
-- failed or cancelled ones out of attempts, move to jobs_finished (done
-- ones are only deleted without history, p_keep false). Jobs no longer
-- held by that owner at that attempt are left alone. Returns how many it
-- recorded. Times are the clock's when the outcome is recorded
-- (clock_timestamp() as the call starts), not the start of the
-- transaction: a --sql batch's statement starts before its jobs run
-- (migration 21). A job's row moves through finished_row (migration 22).
--
-- Every statement names the batch's ids (`id = ANY`), which only an index
-- scan of the primary key answers, and the join to the outcomes hashes
-- (no nested loops): the planner, estimating one outcome row, nested a
-- rescan of them inside each job (migration 9).
CREATE OR REPLACE FUNCTION {s}.complete_jobs(p_owners text[], p_ids int8[], p_attempts int[],
                                             p_oks bool[], p_texts text[], p_keep bool)
RETURNS int8 LANGUAGE plpgsql SET enable_nestloop = off AS $f$
DECLARE
    requeued int8 := 0;
    gone int8 := 0;
    moved int8;
    -- One time for the call, in a variable: finished_row is inlined
    -- only if its arguments call nothing volatile.
    recorded_at timestamptz := clock_timestamp();
BEGIN
    -- Failed attempts with attempts left, not cancelled: queued again
    -- after a backoff, the attempt's error kept.
    IF NOT true = ALL(p_oks) THEN
        UPDATE {s}.jobs_live AS j SET
            state = 'queued', last_error = o.text,
            errors = j.errors || jsonb_build_object('attempt', j.attempts, 'error', o.text,
                                                    'at', recorded_at, 'by', j.locked_by),
            run_at = recorded_at + {s}.retry_delay(j.attempts),
            locked_by = NULL, locked_until = NULL, suspect = false
        FROM unnest(p_owners, p_ids, p_attempts, p_oks, p_texts)
             AS o(owner, id, attempt, ok, text)
        WHERE j.id = ANY(p_ids) AND j.id = o.id AND j.attempts = o.attempt
          AND j.locked_by = o.owner AND j.state = 'running' AND NOT o.ok
          AND j.attempts < j.max_attempts AND NOT j.cancel_requested;
        GET DIAGNOSTICS requeued = ROW_COUNT;
    END IF;
    IF NOT p_keep THEN
        DELETE FROM {s}.jobs_live AS j
        USING unnest(p_owners, p_ids, p_attempts, p_oks) AS o(owner, id, attempt, ok)
        WHERE j.id = ANY(p_ids) AND j.id = o.id AND j.attempts = o.attempt
          AND j.locked_by = o.owner AND j.state = 'running' AND o.ok;
        GET DIAGNOSTICS gone = ROW_COUNT;
        IF requeued + gone = cardinality(p_ids) THEN
            RETURN requeued + gone;
        END IF;
    END IF;
    WITH ended AS (
        DELETE FROM {s}.jobs_live AS j
        USING unnest(p_owners, p_ids, p_attempts, p_oks, p_texts)
              AS o(owner, id, attempt, ok, text)
        WHERE j.id = ANY(p_ids) AND j.id = o.id AND j.attempts = o.attempt
          AND j.locked_by = o.owner AND j.state = 'running'
          AND (o.ok OR j.attempts >= j.max_attempts OR j.cancel_requested)
        RETURNING j AS job, o.ok, o.text
    )
    INSERT INTO {s}.jobs_finished
    SELECT r.*
    FROM ended AS g,
         LATERAL {s}.finished_row(g.job,
                                  CASE WHEN g.ok THEN 'done' WHEN (g.job).cancel_requested
                                       THEN 'cancelled' ELSE 'failed' END,
                                  CASE WHEN g.ok THEN g.text END,
                                  CASE WHEN NOT g.ok THEN coalesce(g.text, '') END, recorded_at) AS r;
    GET DIAGNOSTICS moved = ROW_COUNT;
    RETURN requeued + gone + moved;
END $f$;
