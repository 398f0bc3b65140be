-- Migration 5: enqueue from SQL, inside the application's own transaction: the
-- job exists, and the fleet hears of it, only if that transaction
-- commits.
--
-- (Its functions are defined in ../functions/, applied after the
-- migrations whenever the version changes.)

-- Nothing but functions: see ../functions/.
