-- Migration 23: a job running when its child died is a suspect, the
-- child's death perhaps its doing (a crash, the memory limit, a kill for
-- being stuck). Its attempt is given back the first time (the death may
-- have been anyone's: the OOM killer, an operator, a batch-mate) and it
-- becomes a suspect: a child runs its suspects alone, one at a time, so a
-- death while one runs is that job's own and counts its attempt. A
-- poison job so fails alone, after its attempts, and its batch-mates
-- lose none (queue/lease.rs has the rule and its scenarios). An outcome
-- recorded clears the mark. claim and take_picked return it, so they are
-- dropped here and defined again (../functions/).
ALTER TABLE {s}.jobs_live ADD COLUMN suspect bool NOT NULL DEFAULT false;
ALTER TABLE {s}.jobs_finished ADD COLUMN suspect bool NOT NULL DEFAULT false;
DROP FUNCTION IF EXISTS {s}.claim(text[], int, text, float8);
DROP FUNCTION IF EXISTS {s}.take_picked(tid[], text[], text, float8);
-- The view over both shows the new column (its `*` was expanded when it
-- was made).
CREATE OR REPLACE VIEW {s}.jobs AS
    SELECT * FROM {s}.jobs_live UNION ALL SELECT * FROM {s}.jobs_finished;
