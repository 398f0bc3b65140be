-- Migration 16: the claim returns each job's max_attempts too, so a worker can
-- tell a failure that will be retried from a final one (the status
-- endpoint's `prefork_jobs_total{outcome}`). A column more in the
-- result: a fleet of the previous version names the columns it reads
-- and runs on unchanged.
--
-- (Its functions are defined in ../functions/, applied after the
-- migrations whenever the version changes.)

DROP FUNCTION IF EXISTS {s}.claim(text[], int, text, float8);
DROP FUNCTION IF EXISTS {s}.take_picked(tid[], text[], text, float8);
