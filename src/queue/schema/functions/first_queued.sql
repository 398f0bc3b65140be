-- Each priority level of the queues that has a queued job, with the
-- run_at of its first (at most now(), in seconds since the epoch): where a
-- child's floors fall to if a job became visible below them (a late
-- commit, a run_at in the past; queue/floors.rs). It walks every level
-- from its first index entry, so under a pinned horizon it is as slow as
-- claims were without floors; a child runs it every few seconds, outside
-- any claim. With p_kinds, of those kinds only.
CREATE OR REPLACE FUNCTION {s}.first_queued(p_queues text[], p_kinds text[] DEFAULT NULL)
RETURNS TABLE (queue text, priority int, run_at float8)
LANGUAGE plpgsql STABLE AS $f$
DECLARE
    q text;
    level int;
BEGIN
    FOREACH q IN ARRAY p_queues LOOP
        level := -1;
        LOOP
            level := {s}.next_level(q, level, '{}', '{}', p_kinds);
            EXIT WHEN level IS NULL;
            queue := q;
            priority := level;
            run_at := extract(epoch FROM least(now(), CASE
                WHEN p_kinds IS NULL THEN
                    (SELECT k.run_at FROM {s}.jobs_live AS k
                     WHERE k.queue = q AND k.state = 'queued' AND k.priority = level
                     ORDER BY k.run_at, k.id LIMIT 1)
                ELSE
                    (SELECT min(m.run_at) FROM unnest(p_kinds) AS u(kind)
                     CROSS JOIN LATERAL (
                         SELECT k.run_at FROM {s}.jobs_live AS k
                         WHERE k.queue = q AND k.kind = u.kind AND k.state = 'queued'
                           AND k.priority = level
                         ORDER BY k.run_at, k.id LIMIT 1) AS m)
                END));
            RETURN NEXT;
        END LOOP;
    END LOOP;
END $f$;
