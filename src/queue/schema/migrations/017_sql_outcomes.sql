-- Migration 17: `--sql` batches say which of their jobs failed, for the status
-- endpoint's counts: `run_sql_outcomes` is `run_sql` returning the
-- failed ids beside the count recorded. `run_sql` stays, for fleets of
-- the previous version, as its first column.
--
-- (Its functions are defined in ../functions/, applied after the
-- migrations whenever the version changes.)

-- Nothing but functions: see ../functions/.
