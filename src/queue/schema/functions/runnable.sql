-- Whether one of the queues has a job runnable now: the claim's walk,
-- without claiming.
CREATE OR REPLACE FUNCTION {s}.runnable(p_queues text[]) RETURNS bool
LANGUAGE plpgsql STABLE AS $f$
DECLARE
    q text;
    level int;
BEGIN
    FOREACH q IN ARRAY p_queues LOOP
        level := -1;
        LOOP
            level := (SELECT k.priority FROM {s}.jobs_live AS k
                      WHERE k.queue = q AND k.state = 'queued' AND k.priority > level
                      ORDER BY k.priority LIMIT 1);
            EXIT WHEN level IS NULL;
            IF EXISTS (SELECT 1 FROM {s}.jobs_live AS k
                       WHERE k.queue = q AND k.state = 'queued' AND k.priority = level
                         AND k.run_at <= now()) THEN
                RETURN true;
            END IF;
        END LOOP;
    END LOOP;
    RETURN false;
END $f$;
