-- A `--sql` batch: p_sql run with each job's payload as $1, and the
-- outcomes recorded, in one call; returns how many jobs it recorded and
-- which of them failed.
--
-- The fence: a batch's effects stand only if every job was still held by
-- p_owner at its attempt. The common path runs the batch and its
-- completion in one subtransaction, standing only if complete recorded
-- them all; otherwise (a claim lost, or a statement failed) it is rolled
-- back, and the slow path locks what is still held, in id order (as
-- release() does, so the two never deadlock), and runs those, each job in
-- a subtransaction of its own, so only the failing jobs fail (migrations
-- 7, 8, 17).
CREATE OR REPLACE FUNCTION {s}.run_sql_outcomes(p_sql text, p_owner text, p_ids int8[],
                                     p_attempts int[], p_payloads text[], p_keep bool,
                                     OUT recorded int8, OUT failed int8[])
LANGUAGE plpgsql AS $f$
DECLARE
    n int := coalesce(cardinality(p_ids), 0);
    held int8[];
    ids int8[];
    attempts int[];
    payloads text[];
    oks bool[];
    texts text[];
    affected int8;
    message text;
    code text;
BEGIN
    failed := '{}';
    recorded := 0;
    IF n = 0 THEN
        RETURN;
    END IF;
    -- The common path: the batch and its completion in one
    -- subtransaction, standing only if every job was still held.
    BEGIN
        texts := array_fill(NULL::text, ARRAY[n]);
        FOR i IN 1..n LOOP
            EXECUTE p_sql USING p_payloads[i];
            GET DIAGNOSTICS affected = ROW_COUNT;
            texts[i] := affected || ' row(s)';
        END LOOP;
        recorded := {s}.complete(p_owner, p_ids, p_attempts, array_fill(true, ARRAY[n]),
                                 texts, p_keep);
        IF recorded = n THEN
            RETURN;
        END IF;
        RAISE EXCEPTION USING ERRCODE = 'PF001', MESSAGE = 'a claim was lost';
    EXCEPTION WHEN OTHERS THEN
        NULL;
    END;
    -- The slow path: lock what this owner still holds at this attempt,
    -- in id order (as release() does, so the two never deadlock), and
    -- run those, each job in a subtransaction of its own, so that only
    -- the failing jobs fail.
    SELECT array_agg(h.id) INTO held FROM (
        SELECT j.id FROM {s}.jobs_live AS j
        JOIN unnest(p_ids, p_attempts) AS c(id, attempt)
          ON j.id = c.id AND j.attempts = c.attempt
        WHERE j.id = ANY(p_ids) AND j.state = 'running' AND j.locked_by = p_owner
        ORDER BY j.id FOR UPDATE OF j
    ) AS h;
    SELECT coalesce(array_agg(o.id ORDER BY o.i), '{}'),
           coalesce(array_agg(o.attempt ORDER BY o.i), '{}'),
           coalesce(array_agg(o.payload ORDER BY o.i), '{}')
    INTO ids, attempts, payloads
    FROM unnest(p_ids, p_attempts, p_payloads) WITH ORDINALITY AS o(id, attempt, payload, i)
    WHERE o.id = ANY(held);
    n := cardinality(ids);
    recorded := 0;
    IF n = 0 THEN
        RETURN;
    END IF;
    oks := array_fill(true, ARRAY[n]);
    texts := array_fill(NULL::text, ARRAY[n]);
    FOR i IN 1..n LOOP
        BEGIN
            EXECUTE p_sql USING payloads[i];
            GET DIAGNOSTICS affected = ROW_COUNT;
            texts[i] := affected || ' row(s)';
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS message = MESSAGE_TEXT, code = RETURNED_SQLSTATE;
            oks[i] := false;
            failed := failed || ids[i];
            texts[i] := 'ERROR: ' || message || ' (SQLSTATE ' || code || ')';
        END;
    END LOOP;
    recorded := {s}.complete(p_owner, ids, attempts, oks, texts, p_keep);
END $f$;
