-- run_sql_outcomes' count alone, for fleets of versions before 17.
CREATE OR REPLACE FUNCTION {s}.run_sql(p_sql text, p_owner text, p_ids int8[], p_attempts int[],
                            p_payloads text[], p_keep bool)
RETURNS int8 LANGUAGE sql AS $f$
    SELECT (o).recorded FROM (SELECT {s}.run_sql_outcomes(p_sql, p_owner, p_ids, p_attempts,
                                                          p_payloads, p_keep) AS o) AS r
$f$;
