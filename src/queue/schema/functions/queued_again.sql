-- A finished job as a retry queues it again at p_at, its attempts reset
-- and its errors kept: the other way of finished_row.sql, and with it
-- the one place a statement lists every job column (see there). Called
-- as `INSERT INTO jobs_live SELECT r.* FROM again AS a, LATERAL
-- queued_again(a.job, now()) AS r`, and inlined alike.
CREATE OR REPLACE FUNCTION {s}.queued_again(f {s}.jobs_finished, p_at timestamptz)
RETURNS SETOF {s}.jobs_live LANGUAGE sql STABLE AS $f$
    SELECT (f).id, (f).queue, (f).payload, 'queued'::text, 0, (f).max_attempts, p_at,
           NULL::text, NULL::timestamptz, NULL::text, (f).last_error, (f).created_at,
           NULL::timestamptz, (f).priority, (f).unique_key, (f).timeout, (f).errors, false,
           false, (f).kind, (f).args
$f$;
