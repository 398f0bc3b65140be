-- The next priority level of queue p_queue above p_level to scan: the
-- next one the caller holds a floor of (p_floor_queues, p_floor_levels: a
-- level per index; queue/floors.rs), or a level with a queued job below
-- it, whichever comes first; NULL after the last. A level the caller
-- knows is so never looked for from its first index entry, past the
-- entries of the jobs claimed there. With p_kinds, only jobs of those
-- kinds count, each kind looked up in the index led by queue and kind
-- (migration 25). The walk of claim, runnable and first_queued (which
-- knows no floors), written once.
CREATE OR REPLACE FUNCTION {s}.next_level(p_queue text, p_level int,
                                          p_floor_queues text[], p_floor_levels int[],
                                          p_kinds text[] DEFAULT NULL)
RETURNS int
LANGUAGE plpgsql STABLE AS $f$
DECLARE
    known int := (SELECT min(f.fl) FROM unnest(p_floor_queues, p_floor_levels) AS f(fq, fl)
                  WHERE f.fq = p_queue AND f.fl > p_level);
    bound int := COALESCE(known - 1, 2147483647);
BEGIN
    IF p_kinds IS NULL THEN
        RETURN COALESCE((SELECT k.priority FROM {s}.jobs_live AS k
                         WHERE k.queue = p_queue AND k.state = 'queued' AND k.priority > p_level
                           AND k.priority <= bound
                         ORDER BY k.priority LIMIT 1),
                        known);
    END IF;
    RETURN COALESCE((SELECT min(n.priority)
                     FROM unnest(p_kinds) AS u(kind)
                     CROSS JOIN LATERAL (
                         SELECT k.priority FROM {s}.jobs_live AS k
                         WHERE k.queue = p_queue AND k.kind = u.kind AND k.state = 'queued'
                           AND k.priority > p_level AND k.priority <= bound
                         ORDER BY k.priority LIMIT 1) AS n),
                    known);
END $f$;
