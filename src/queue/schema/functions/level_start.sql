-- Where the scan of queue p_queue's level p_level starts: the caller's
-- floor of it less its margin (p_floor_starts, a level per index with
-- p_floor_queues and p_floor_levels; queue/floors.rs), or -infinity for a
-- level it holds no floor of.
CREATE OR REPLACE FUNCTION {s}.level_start(p_queue text, p_level int, p_floor_queues text[],
                                           p_floor_levels int[], p_floor_starts float8[])
RETURNS timestamptz
LANGUAGE plpgsql STABLE AS $f$
BEGIN
    RETURN COALESCE((SELECT to_timestamp(f.fs)
                     FROM unnest(p_floor_queues, p_floor_levels, p_floor_starts) AS f(fq, fl, fs)
                     WHERE f.fq = p_queue AND f.fl = p_level LIMIT 1),
                    '-infinity');
END $f$;
