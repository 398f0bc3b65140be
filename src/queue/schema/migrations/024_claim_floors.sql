-- Migration 24: claims start each priority level at the caller's floor,
-- past the index entries of the jobs already claimed there. A pinned
-- horizon (an idle transaction, a REPEATABLE READ report) keeps those
-- entries, and every claim walked them all, a heap fetch each: at 500
-- jobs/s, 0.2 ms claims took 140 ms after two minutes of it
-- (queue/floors.rs). claim and runnable take the floors as arguments with
-- defaults (so the previous version's calls still resolve), claim and
-- take_picked return each job's run_at, and first_queued is new; the old
-- claim, take_picked and runnable are dropped here and defined again
-- (../functions/).
DROP FUNCTION IF EXISTS {s}.claim(text[], int, text, float8);
DROP FUNCTION IF EXISTS {s}.take_picked(tid[], text[], text, float8);
DROP FUNCTION IF EXISTS {s}.runnable(text[]);
