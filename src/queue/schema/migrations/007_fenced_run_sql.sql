-- Migration 7: run_sql fences its effects with the claim. It locks the jobs the
-- worker still holds (its owner stamp and the attempt it claimed)
-- before running anything, and runs only those: a worker that resumes
-- after its lease was taken over (a stopped process, a long pause)
-- runs nothing for the jobs it lost, and the row locks keep any
-- release from taking a job between its effect and its completion,
-- which commit together.
--
-- (Its functions are defined in ../functions/, applied after the
-- migrations whenever the version changes.)

DROP FUNCTION IF EXISTS {s}.run_sql(text, text, int8[], text[]);
