-- One claim's outcomes (run_sql's, and older binaries'): complete_jobs
-- with one owner for all.
CREATE OR REPLACE FUNCTION {s}.complete(p_owner text, p_ids int8[], p_attempts int[],
                                        p_oks bool[], p_texts text[], p_keep bool)
RETURNS int8 LANGUAGE sql AS $f$
    SELECT {s}.complete_jobs(array_fill(p_owner, ARRAY[coalesce(cardinality(p_ids), 0)]),
                             p_ids, p_attempts, p_oks, p_texts, p_keep)
$f$;
