-- Migration 8: the engine's diet. The partial indexes on running jobs
-- (locked_until, locked_by) cost every claim two index inserts of the
-- same key per job, on the same rightmost pages for every claimer:
-- measured, they more than halved the claim-and-complete rate (24,000
-- jobs/s against 59,000 without them, 500-job batches, 4 clients,
-- 2 cores). What used them is rare (the expiry sweep, releasing a dead
-- child's or a failed worker's jobs) and now scans the live table, which
-- holds the backlog only.
--
-- Completion can keep no history (`p_keep` false): a done job is then
-- only deleted, no copy written (a third cheaper, measured), while a
-- failed one is still kept to be looked at.
--
-- Completion checks the attempt as well as the owner: with a child
-- claiming for all its workers, one owner can hold a job at a new
-- attempt while a stale copy of an older one is still in its hands.
--
-- run_sql's fence becomes a check on the common path: the batch runs
-- and completes in one subtransaction, and only if every job was still
-- held (complete recorded them all) does it stand; otherwise, or if a
-- statement failed, it is rolled back and the slow path locks what is
-- still held and runs job by job, as migration 7's did.
--
-- The finished jobs' btree on finished_at took every completion's
-- insert on its rightmost page, with one key per transaction: a BRIN
-- index does for pruning by age (finished_at grows with the table) at
-- a fraction of the cost (44,000 against 56,000 to 64,000 jobs/s in the
-- same measurement).
--
-- (Its functions are defined in ../functions/, applied after the
-- migrations whenever the version changes.)

DROP INDEX {s}.jobs_running;
DROP INDEX {s}.jobs_locked_by;
DROP INDEX {s}.jobs_finished_at;
CREATE INDEX jobs_finished_at ON {s}.jobs_finished USING brin (finished_at);

DROP FUNCTION IF EXISTS {s}.run_sql(text, text, int8[], int[], text[]);
