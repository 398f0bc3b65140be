-- Claims up to p_limit runnable jobs of the queues, in the order given,
-- for p_owner, leased for p_lease seconds.
--
-- Claims of a queue take turns on a transaction-level advisory lock per
-- queue (which PgBouncer's transaction pooling keeps), taken in name
-- order so two fleets working the same queues in other orders cannot
-- deadlock: a claim never meets another's rows in flight, and updates
-- what it picked without locking it first (migration 10). In each queue
-- it walks the priority levels that have queued jobs, and in each level
-- takes the due jobs oldest first, one ordered index descent each.
--
-- The caller's floors (p_floor_queues, p_floor_levels, p_floor_starts: a
-- level per index, its start in seconds since the epoch) say where each
-- level it knows is scanned from, past the index entries of the jobs
-- already claimed there, which a pinned horizon keeps (queue/floors.rs has
-- the rule and its scenarios; migration 24): see next_level and
-- level_start. It returns each job's run_at, which the caller raises its
-- floors to.
--
-- With p_kinds, it claims only jobs of those kinds (migration 25): in each
-- level, each kind's oldest due jobs through the index led by queue and
-- kind, merged oldest first, so no kind waits behind another's backlog
-- and no other kind's jobs are walked. Without, every kind.
--
-- The next level is an ordered look-up (`ORDER BY priority LIMIT 1`, not
-- `min()`, which a table not yet analysed planned as a scan of the whole
-- backlog: migration 14). A row another session changed after this
-- statement's snapshot has another tuple id by then: take_picked skips
-- it, and the claim returns one job fewer.
CREATE OR REPLACE FUNCTION {s}.claim(p_queues text[], p_limit int, p_owner text, p_lease float8,
                                     p_floor_queues text[] DEFAULT '{}',
                                     p_floor_levels int[] DEFAULT '{}',
                                     p_floor_starts float8[] DEFAULT '{}',
                                     p_kinds text[] DEFAULT NULL)
RETURNS TABLE (job_id int8, job_payload text, job_attempt int, job_queue text,
               job_priority int, job_timeout float8, job_max_attempts int,
               job_suspect bool, job_run_at float8, job_kind text)
LANGUAGE plpgsql AS $f$
DECLARE
    picked tid[] := '{}';
    q text;
    level int;
    since timestamptz;
BEGIN
    -- Commit without waiting for the WAL flush: see claim() in store.rs.
    PERFORM set_config('synchronous_commit', 'off', true);
    FOR q IN SELECT DISTINCT u.q FROM unnest(p_queues) AS u(q) ORDER BY 1 LOOP
        PERFORM pg_advisory_xact_lock(hashtext('{s}.claim'), hashtext(q));
    END LOOP;
    FOREACH q IN ARRAY p_queues LOOP
        level := -1;
        LOOP
            level := {s}.next_level(q, level, p_floor_queues, p_floor_levels, p_kinds);
            EXIT WHEN level IS NULL;
            since := {s}.level_start(q, level, p_floor_queues, p_floor_levels, p_floor_starts);
            IF p_kinds IS NULL THEN
                picked := picked || ARRAY(
                    SELECT k.ctid FROM {s}.jobs_live AS k
                    WHERE k.queue = q AND k.state = 'queued' AND k.priority = level
                      AND k.run_at >= since AND k.run_at <= now()
                    ORDER BY k.run_at, k.id LIMIT p_limit - cardinality(picked));
            ELSE
                picked := picked || ARRAY(
                    SELECT m.ctid
                    FROM unnest(p_kinds) AS u(kind)
                    CROSS JOIN LATERAL (
                        SELECT k.ctid, k.run_at, k.id FROM {s}.jobs_live AS k
                        WHERE k.queue = q AND k.kind = u.kind AND k.state = 'queued'
                          AND k.priority = level AND k.run_at >= since AND k.run_at <= now()
                        ORDER BY k.run_at, k.id LIMIT p_limit - cardinality(picked)) AS m
                    ORDER BY m.run_at, m.id LIMIT p_limit - cardinality(picked));
            END IF;
            EXIT WHEN cardinality(picked) >= p_limit;
        END LOOP;
        EXIT WHEN cardinality(picked) >= p_limit;
    END LOOP;
    RETURN QUERY SELECT * FROM {s}.take_picked(picked, p_queues, p_owner, p_lease);
END $f$;
