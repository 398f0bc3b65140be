-- Migration 4: finished jobs move to their own table. The live table then holds
-- only queued and running jobs, so its size, its vacuums and the claim's
-- index walk follow the backlog, not the queue's history. (With every
-- job ever run in one table, a vacuum that finds few dead rows in a big
-- table skips its indexes, and the claim index's dead entries stay.)
-- `jobs` becomes a view over both, for reading.
--
-- (Its functions are defined in ../functions/, applied after the
-- migrations whenever the version changes.)

ALTER TABLE {s}.jobs RENAME TO jobs_live;
CREATE TABLE {s}.jobs_finished
    (LIKE {s}.jobs_live INCLUDING DEFAULTS INCLUDING CONSTRAINTS, PRIMARY KEY (id));
CREATE INDEX jobs_finished_at ON {s}.jobs_finished (finished_at);
INSERT INTO {s}.jobs_finished SELECT * FROM {s}.jobs_live WHERE state IN ('done', 'failed');
DELETE FROM {s}.jobs_live WHERE state IN ('done', 'failed');
CREATE VIEW {s}.jobs AS
    SELECT * FROM {s}.jobs_live UNION ALL SELECT * FROM {s}.jobs_finished;
