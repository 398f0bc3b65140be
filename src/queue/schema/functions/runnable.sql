-- Whether one of the queues has a job runnable now: the claim's walk,
-- from the caller's floors (see claim), without claiming.
CREATE OR REPLACE FUNCTION {s}.runnable(p_queues text[],
                                        p_floor_queues text[] DEFAULT '{}',
                                        p_floor_levels int[] DEFAULT '{}',
                                        p_floor_starts float8[] DEFAULT '{}')
RETURNS bool
LANGUAGE plpgsql STABLE AS $f$
DECLARE
    q text;
    level int;
BEGIN
    FOREACH q IN ARRAY p_queues LOOP
        level := -1;
        LOOP
            level := {s}.next_level(q, level, p_floor_queues, p_floor_levels);
            EXIT WHEN level IS NULL;
            IF EXISTS (SELECT 1 FROM {s}.jobs_live AS k
                       WHERE k.queue = q AND k.state = 'queued' AND k.priority = level
                         AND k.run_at >= {s}.level_start(q, level, p_floor_queues,
                                                         p_floor_levels, p_floor_starts)
                         AND k.run_at <= now()) THEN
                RETURN true;
            END IF;
        END LOOP;
    END LOOP;
    RETURN false;
END $f$;
