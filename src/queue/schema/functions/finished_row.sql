-- A live job as it moves to jobs_finished, ended in p_state at p_at:
-- with queued_again.sql, the one place a statement lists every job
-- column (the two tables have the same columns, in the same order:
-- migration 4 made jobs_finished LIKE jobs_live, and migration 11 added
-- the same columns to both). p_result, if not NULL, is the job's result;
-- p_failure, if not NULL, the error of the attempt that ended it, kept
-- as its last error and appended to its errors. A cancelled queued job
-- passes neither; a cancelled job is marked cancel_requested.
--
-- Every move calls it as `INSERT INTO jobs_finished SELECT r.* FROM
-- ended AS g, LATERAL finished_row(g.job, ...) AS r`, `ended` being a
-- DELETE ... RETURNING j AS job. It is a set-returning SQL function,
-- stable, so the planner inlines it into the caller's statement (no
-- call per row); that needs its arguments free of volatile functions,
-- so a caller passes clock_timestamp() through a variable. A column
-- added to the tables is added here and in queued_again.sql, or their
-- creation fails on the return type.
CREATE OR REPLACE FUNCTION {s}.finished_row(j {s}.jobs_live, p_state text, p_result text,
                                            p_failure text, p_at timestamptz)
RETURNS SETOF {s}.jobs_finished LANGUAGE sql STABLE AS $f$
    SELECT (j).id, (j).queue, (j).payload, p_state, (j).attempts, (j).max_attempts,
           (j).run_at, (j).locked_by, NULL::timestamptz, coalesce(p_result, (j).result),
           coalesce(p_failure, (j).last_error), (j).created_at, p_at, (j).priority,
           (j).unique_key, (j).timeout,
           CASE WHEN p_failure IS NULL THEN (j).errors
                ELSE (j).errors || jsonb_build_object('attempt', (j).attempts, 'error', p_failure,
                                                      'at', p_at, 'by', (j).locked_by) END,
           (j).cancel_requested OR p_state = 'cancelled', (j).suspect, (j).kind, (j).args
$f$;
