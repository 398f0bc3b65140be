-- Migration 3: the hot path as server-side functions, so that a batch costs two
-- round trips (claim; run and complete) with plans cached per session,
-- and no named prepared statement (which PgBouncer's transaction
-- pooling would break).
--
-- (Its functions are defined in ../functions/, applied after the
-- migrations whenever the version changes.)

-- Nothing but functions: see ../functions/.
