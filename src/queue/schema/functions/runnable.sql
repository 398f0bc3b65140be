-- Whether one of the queues has a job runnable now: the claim's walk,
-- from the caller's floors, of the caller's kinds (see claim), without
-- claiming.
CREATE OR REPLACE FUNCTION {s}.runnable(p_queues text[],
                                        p_floor_queues text[] DEFAULT '{}',
                                        p_floor_levels int[] DEFAULT '{}',
                                        p_floor_starts float8[] DEFAULT '{}',
                                        p_kinds text[] DEFAULT NULL)
RETURNS bool
LANGUAGE plpgsql STABLE AS $f$
DECLARE
    q text;
    level int;
    since timestamptz;
BEGIN
    FOREACH q IN ARRAY p_queues LOOP
        level := -1;
        LOOP
            level := {s}.next_level(q, level, p_floor_queues, p_floor_levels, p_kinds);
            EXIT WHEN level IS NULL;
            since := {s}.level_start(q, level, p_floor_queues, p_floor_levels, p_floor_starts);
            IF p_kinds IS NULL THEN
                IF EXISTS (SELECT 1 FROM {s}.jobs_live AS k
                           WHERE k.queue = q AND k.state = 'queued' AND k.priority = level
                             AND k.run_at >= since AND k.run_at <= now()) THEN
                    RETURN true;
                END IF;
            ELSIF EXISTS (SELECT 1 FROM unnest(p_kinds) AS u(kind)
                          CROSS JOIN LATERAL (
                              SELECT 1 FROM {s}.jobs_live AS k
                              WHERE k.queue = q AND k.kind = u.kind AND k.state = 'queued'
                                AND k.priority = level AND k.run_at >= since
                                AND k.run_at <= now()
                              LIMIT 1) AS m) THEN
                RETURN true;
            END IF;
        END LOOP;
    END LOOP;
    RETURN false;
END $f$;
