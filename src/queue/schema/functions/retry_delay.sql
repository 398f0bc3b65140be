-- How long a job waits before its next attempt after failing attempt
-- p_attempt: 0.2 s x 4^(attempt - 1), at most an hour (0.2 s, 0.8 s,
-- 3.2 s, 12.8 s, ...). The one definition of the retry schedule; inlined
-- where it is used (a SQL function, immutable).
CREATE OR REPLACE FUNCTION {s}.retry_delay(p_attempt int) RETURNS interval
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $f$
    SELECT make_interval(secs => least(3600, 0.2 * 4 ^ (p_attempt - 1)))
$f$;
