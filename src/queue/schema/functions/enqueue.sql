-- The id of the job queued (or already holding the unique key), from
-- SQL, inside the application's own transaction: `enqueue('default',
-- p_kind => 'send_email', p_args => '{"to": "a@b.c"}')`, or a payload.
-- Every parameter but the queue has a default, and new ones come last,
-- so calls of older versions keep working.
CREATE OR REPLACE FUNCTION {s}.enqueue(p_queue text, p_payload text DEFAULT '',
                            p_max_attempts int DEFAULT 3,
                            p_run_at timestamptz DEFAULT now(),
                            p_priority int DEFAULT 0,
                            p_unique_key text DEFAULT NULL,
                            p_timeout float8 DEFAULT NULL,
                            p_kind text DEFAULT 'default',
                            p_args jsonb DEFAULT NULL)
RETURNS int8 LANGUAGE sql AS $f$
    SELECT e.job_id FROM {s}.enqueue_job(p_queue, p_payload, p_max_attempts, p_run_at,
                                     p_priority, p_unique_key, p_timeout, p_kind,
                                     p_args) AS e
$f$;
