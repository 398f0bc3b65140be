-- Queues one job; with a unique key already held by an unfinished job of
-- the queue, queues nothing and returns that job's id with `created`
-- false. Safe under concurrent enqueues: the unique index decides (an
-- insert waits for a concurrent one with the same key to commit or roll
-- back); a job that finishes between the conflict and the look-up lets
-- the next round insert. The fleet hears of a new job (NOTIFY) only if
-- the caller's transaction commits. A job of kind p_kind with arguments
-- p_args (JSON) needs no payload (migration 25).
CREATE OR REPLACE FUNCTION {s}.enqueue_job(p_queue text, p_payload text DEFAULT '',
                                p_max_attempts int DEFAULT 3,
                                p_run_at timestamptz DEFAULT now(),
                                p_priority int DEFAULT 0,
                                p_unique_key text DEFAULT NULL,
                                p_timeout float8 DEFAULT NULL,
                                p_kind text DEFAULT 'default',
                                p_args jsonb DEFAULT NULL)
RETURNS TABLE (job_id int8, created bool) LANGUAGE plpgsql AS $f$
DECLARE
    found_id int8;
BEGIN
    LOOP
        INSERT INTO {s}.jobs_live AS j (queue, payload, max_attempts, run_at, priority,
                                        unique_key, timeout, kind, args)
        VALUES (p_queue, coalesce(p_payload, ''), p_max_attempts, coalesce(p_run_at, now()),
                p_priority, p_unique_key, p_timeout, coalesce(p_kind, 'default'), p_args)
        ON CONFLICT (queue, unique_key) WHERE unique_key IS NOT NULL DO NOTHING
        RETURNING j.id INTO found_id;
        IF found_id IS NOT NULL THEN
            -- The channel of Schema::channel.
            PERFORM pg_notify('{s}_jobs', p_queue);
            RETURN QUERY SELECT found_id, true;
            RETURN;
        END IF;
        SELECT j.id INTO found_id FROM {s}.jobs_live AS j
        WHERE j.queue = p_queue AND j.unique_key = p_unique_key;
        IF found_id IS NOT NULL THEN
            RETURN QUERY SELECT found_id, false;
            RETURN;
        END IF;
    END LOOP;
END $f$;
