//! The queue's PostgreSQL schema: its name, the queue names it accepts,
//! and the versioned migrations that create and upgrade its tables and
//! functions.

use postgres::Client;

/// A valid PostgreSQL schema name for the queue's tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema(String);

impl Schema {
    /// Checks `name`: lower-case letters, digits and `_`, not starting with
    /// a digit, at most 63 bytes (so it needs no quoting), and not one of
    /// PostgreSQL's own (`pg_*`, `information_schema`).
    ///
    /// # Errors
    ///
    /// A one-line description of what is wrong.
    pub fn new(name: &str) -> Result<Schema, String> {
        if name.starts_with("pg_") || name == "information_schema" {
            return Err(format!(
                "invalid schema name {name:?}: that schema belongs to PostgreSQL; \
                 name one for the queue alone"
            ));
        }
        let ok = !name.is_empty()
            && name.len() <= 63
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if ok {
            Ok(Schema(name.to_owned()))
        } else {
            Err(format!(
                "invalid schema name {name:?}: use lower-case letters, digits and _ (max 63)"
            ))
        }
    }

    /// The schema's name.
    pub fn name(&self) -> &str {
        &self.0
    }

    /// The LISTEN/NOTIFY channel for new jobs.
    pub(crate) fn channel(&self) -> String {
        format!("{}_jobs", self.0)
    }
}

impl Default for Schema {
    fn default() -> Schema {
        Schema("prefork".to_owned())
    }
}

/// Checks a queue name: 1 to 100 characters of letters, digits, `_ - . :`.
///
/// # Errors
///
/// A one-line description of what is wrong.
pub fn check_queue_name(name: &str) -> Result<(), String> {
    let ok = (1..=100).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid queue name {name:?}: use 1 to 100 letters, digits, '_', '-', '.' or ':'"
        ))
    }
}

const MIGRATIONS: &[&str] = &[
    // 1: jobs, with a partial index over runnable jobs only.
    "CREATE TABLE {s}.jobs (
        id bigserial PRIMARY KEY,
        queue text NOT NULL,
        payload text NOT NULL,
        state text NOT NULL DEFAULT 'queued'
            CHECK (state IN ('queued', 'running', 'done', 'failed')),
        attempts int NOT NULL DEFAULT 0,
        max_attempts int NOT NULL DEFAULT 3,
        run_at timestamptz NOT NULL DEFAULT now(),
        locked_by text,
        locked_until timestamptz,
        result text,
        last_error text,
        created_at timestamptz NOT NULL DEFAULT now(),
        finished_at timestamptz
     );
     CREATE INDEX jobs_queued ON {s}.jobs (queue, run_at, id) WHERE state = 'queued';
     CREATE INDEX jobs_running ON {s}.jobs (locked_until) WHERE state = 'running';
     CREATE INDEX jobs_locked_by ON {s}.jobs (locked_by) WHERE state = 'running';",
    // 2: live children (called workers until migration 6), kept by each
    // master.
    "CREATE TABLE {s}.workers (
        host text NOT NULL,
        pid int NOT NULL,
        master_pid int NOT NULL,
        queue text NOT NULL,
        since timestamptz NOT NULL,
        tasks bigint NOT NULL DEFAULT 0,
        seen_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (host, pid)
     );",
    // 3: the hot path as server-side functions, so that a batch costs two
    // round trips (claim; run and complete) with plans cached per session,
    // and no named prepared statement (which PgBouncer's transaction
    // pooling would break).
    r#"CREATE FUNCTION {s}.claim(p_queue text, p_limit int, p_owner text, p_lease float8)
     RETURNS TABLE (job_id int8, job_payload text, job_attempt int)
     LANGUAGE plpgsql AS $f$
     BEGIN
         -- Commit without waiting for the WAL flush: see claim() in store.rs.
         PERFORM set_config('synchronous_commit', 'off', true);
         RETURN QUERY
         UPDATE {s}.jobs AS j
         SET state = 'running', attempts = j.attempts + 1, locked_by = p_owner,
             locked_until = now() + make_interval(secs => p_lease)
         FROM (SELECT k.id FROM {s}.jobs AS k
               WHERE k.queue = p_queue AND k.state = 'queued' AND k.run_at <= now()
               ORDER BY k.run_at, k.id LIMIT p_limit
               FOR UPDATE SKIP LOCKED) AS next
         WHERE j.id = next.id
         RETURNING j.id, j.payload, j.attempts;
     END $f$;

     CREATE FUNCTION {s}.complete(p_owner text, p_ids int8[], p_oks bool[], p_texts text[])
     RETURNS int8 LANGUAGE plpgsql AS $f$
     DECLARE
         n int8;
     BEGIN
         UPDATE {s}.jobs AS j SET
             state = CASE WHEN o.ok THEN 'done'
                          WHEN j.attempts >= j.max_attempts THEN 'failed'
                          ELSE 'queued' END,
             result = CASE WHEN o.ok THEN o.text ELSE j.result END,
             last_error = CASE WHEN o.ok THEN j.last_error ELSE o.text END,
             run_at = CASE WHEN o.ok THEN j.run_at
                           ELSE now() + make_interval(secs => least(3600, 0.2 * 4 ^ (j.attempts - 1)))
                      END,
             finished_at = CASE WHEN o.ok OR j.attempts >= j.max_attempts THEN now() END,
             locked_by = NULL, locked_until = NULL
         FROM unnest(p_ids, p_oks, p_texts) AS o(id, ok, text)
         WHERE j.id = o.id AND j.state = 'running' AND j.locked_by = p_owner;
         GET DIAGNOSTICS n = ROW_COUNT;
         RETURN n;
     END $f$;

     CREATE FUNCTION {s}.run_sql(p_sql text, p_owner text, p_ids int8[], p_payloads text[])
     RETURNS int8 LANGUAGE plpgsql AS $f$
     DECLARE
         n int := coalesce(cardinality(p_ids), 0);
         oks bool[] := array_fill(true, ARRAY[n]);
         texts text[] := array_fill(NULL::text, ARRAY[n]);
         affected int8;
         failed bool := false;
         message text;
         code text;
     BEGIN
         -- The whole batch in one subtransaction ...
         BEGIN
             FOR i IN 1..n LOOP
                 EXECUTE p_sql USING p_payloads[i];
                 GET DIAGNOSTICS affected = ROW_COUNT;
                 texts[i] := affected || ' row(s)';
             END LOOP;
         EXCEPTION WHEN OTHERS THEN
             failed := true;
         END;
         -- ... and if a job failed (which rolled the batch back), one
         -- subtransaction per job, so that only the failing jobs fail.
         IF failed THEN
             FOR i IN 1..n LOOP
                 BEGIN
                     EXECUTE p_sql USING p_payloads[i];
                     GET DIAGNOSTICS affected = ROW_COUNT;
                     oks[i] := true;
                     texts[i] := affected || ' row(s)';
                 EXCEPTION WHEN OTHERS THEN
                     GET STACKED DIAGNOSTICS message = MESSAGE_TEXT, code = RETURNED_SQLSTATE;
                     oks[i] := false;
                     texts[i] := 'ERROR: ' || message || ' (SQLSTATE ' || code || ')';
                 END;
             END LOOP;
         END IF;
         RETURN {s}.complete(p_owner, p_ids, oks, texts);
     END $f$;"#,
    // 4: finished jobs move to their own table. The live table then holds
    // only queued and running jobs, so its size, its vacuums and the claim's
    // index walk follow the backlog, not the queue's history. (With every
    // job ever run in one table, a vacuum that finds few dead rows in a big
    // table skips its indexes, and the claim index's dead entries stay.)
    // `jobs` becomes a view over both, for reading.
    r#"ALTER TABLE {s}.jobs RENAME TO jobs_live;
     CREATE TABLE {s}.jobs_finished
         (LIKE {s}.jobs_live INCLUDING DEFAULTS INCLUDING CONSTRAINTS, PRIMARY KEY (id));
     CREATE INDEX jobs_finished_at ON {s}.jobs_finished (finished_at);
     INSERT INTO {s}.jobs_finished SELECT * FROM {s}.jobs_live WHERE state IN ('done', 'failed');
     DELETE FROM {s}.jobs_live WHERE state IN ('done', 'failed');
     CREATE VIEW {s}.jobs AS
         SELECT * FROM {s}.jobs_live UNION ALL SELECT * FROM {s}.jobs_finished;

     CREATE OR REPLACE FUNCTION {s}.claim(p_queue text, p_limit int, p_owner text, p_lease float8)
     RETURNS TABLE (job_id int8, job_payload text, job_attempt int)
     LANGUAGE plpgsql AS $f$
     BEGIN
         -- Commit without waiting for the WAL flush: see claim() in store.rs.
         PERFORM set_config('synchronous_commit', 'off', true);
         RETURN QUERY
         UPDATE {s}.jobs_live AS j
         SET state = 'running', attempts = j.attempts + 1, locked_by = p_owner,
             locked_until = now() + make_interval(secs => p_lease)
         FROM (SELECT k.id FROM {s}.jobs_live AS k
               WHERE k.queue = p_queue AND k.state = 'queued' AND k.run_at <= now()
               ORDER BY k.run_at, k.id LIMIT p_limit
               FOR UPDATE SKIP LOCKED) AS next
         WHERE j.id = next.id
         RETURNING j.id, j.payload, j.attempts;
     END $f$;

     -- Moves the running jobs `p_ids` held by `p_owner` that are finished
     -- (done, or failed with no attempt left) to jobs_finished. `p_texts`
     -- are the results of done jobs and the errors of failed ones.
     CREATE FUNCTION {s}.finish(p_owner text, p_ids int8[], p_oks bool[], p_texts text[])
     RETURNS int8 LANGUAGE plpgsql AS $f$
     DECLARE
         n int8;
     BEGIN
         WITH moved AS (
             DELETE FROM {s}.jobs_live AS j
             USING unnest(p_ids, p_oks, p_texts) AS o(id, ok, text)
             WHERE j.id = o.id AND j.state = 'running' AND j.locked_by = p_owner
               AND (o.ok OR j.attempts >= j.max_attempts)
             RETURNING j.*, o.ok, o.text
         )
         INSERT INTO {s}.jobs_finished (id, queue, payload, state, attempts, max_attempts,
                                        run_at, result, last_error, created_at, finished_at)
         SELECT m.id, m.queue, m.payload, CASE WHEN m.ok THEN 'done' ELSE 'failed' END,
                m.attempts, m.max_attempts, m.run_at,
                CASE WHEN m.ok THEN m.text ELSE m.result END,
                CASE WHEN m.ok THEN m.last_error ELSE m.text END,
                m.created_at, now()
         FROM moved AS m;
         GET DIAGNOSTICS n = ROW_COUNT;
         RETURN n;
     END $f$;

     CREATE OR REPLACE FUNCTION {s}.complete(p_owner text, p_ids int8[], p_oks bool[], p_texts text[])
     RETURNS int8 LANGUAGE plpgsql AS $f$
     DECLARE
         n int8;
     BEGIN
         -- Failed attempts with attempts left: queued again after a backoff.
         UPDATE {s}.jobs_live AS j SET
             state = 'queued', last_error = o.text,
             run_at = now() + make_interval(secs => least(3600, 0.2 * 4 ^ (j.attempts - 1))),
             locked_by = NULL, locked_until = NULL
         FROM unnest(p_ids, p_oks, p_texts) AS o(id, ok, text)
         WHERE j.id = o.id AND NOT o.ok AND j.attempts < j.max_attempts
           AND j.state = 'running' AND j.locked_by = p_owner;
         GET DIAGNOSTICS n = ROW_COUNT;
         RETURN n + {s}.finish(p_owner, p_ids, p_oks, p_texts);
     END $f$;"#,
    // 5: enqueue from SQL, inside the application's own transaction: the
    // job exists, and the fleet hears of it, only if that transaction
    // commits.
    r#"CREATE FUNCTION {s}.enqueue(p_queue text, p_payload text,
                                  p_max_attempts int DEFAULT 3,
                                  p_run_at timestamptz DEFAULT now())
     RETURNS int8 LANGUAGE plpgsql AS $f$
     DECLARE
         new_id int8;
     BEGIN
         INSERT INTO {s}.jobs_live (queue, payload, max_attempts, run_at)
         VALUES (p_queue, p_payload, p_max_attempts, p_run_at)
         RETURNING id INTO new_id;
         -- The channel of Schema::channel.
         PERFORM pg_notify('{s}_jobs', p_queue);
         RETURN new_id;
     END $f$;"#,
    // 6: the launcher's words: the processes a master forks are children,
    // and what they count is jobs.
    r#"ALTER TABLE {s}.workers RENAME TO children;
     ALTER TABLE {s}.children RENAME COLUMN tasks TO jobs;"#,
    // 7: run_sql fences its effects with the claim. It locks the jobs the
    // worker still holds (its owner stamp and the attempt it claimed)
    // before running anything, and runs only those: a worker that resumes
    // after its lease was taken over (a stopped process, a long pause)
    // runs nothing for the jobs it lost, and the row locks keep any
    // release from taking a job between its effect and its completion,
    // which commit together.
    r#"DROP FUNCTION {s}.run_sql(text, text, int8[], text[]);
     CREATE FUNCTION {s}.run_sql(p_sql text, p_owner text, p_ids int8[], p_attempts int[],
                                 p_payloads text[])
     RETURNS int8 LANGUAGE plpgsql AS $f$
     DECLARE
         held int8[];
         ids int8[];
         payloads text[];
         n int;
         oks bool[];
         texts text[];
         affected int8;
         failed bool := false;
         message text;
         code text;
     BEGIN
         -- The fence: lock what this owner still holds at this attempt, in
         -- id order (as release() does, so the two never deadlock).
         SELECT array_agg(h.id) INTO held FROM (
             SELECT j.id FROM {s}.jobs_live AS j
             JOIN unnest(p_ids, p_attempts) AS c(id, attempt)
               ON j.id = c.id AND j.attempts = c.attempt
             WHERE j.state = 'running' AND j.locked_by = p_owner
             ORDER BY j.id FOR UPDATE OF j
         ) AS h;
         SELECT coalesce(array_agg(o.id ORDER BY o.i), '{}'),
                coalesce(array_agg(o.payload ORDER BY o.i), '{}')
         INTO ids, payloads
         FROM unnest(p_ids, p_payloads) WITH ORDINALITY AS o(id, payload, i)
         WHERE o.id = ANY(held);
         n := cardinality(ids);
         IF n = 0 THEN
             RETURN 0;
         END IF;
         oks := array_fill(true, ARRAY[n]);
         texts := array_fill(NULL::text, ARRAY[n]);
         -- The whole batch in one subtransaction ...
         BEGIN
             FOR i IN 1..n LOOP
                 EXECUTE p_sql USING payloads[i];
                 GET DIAGNOSTICS affected = ROW_COUNT;
                 texts[i] := affected || ' row(s)';
             END LOOP;
         EXCEPTION WHEN OTHERS THEN
             failed := true;
         END;
         -- ... and if a job failed (which rolled the batch back), one
         -- subtransaction per job, so that only the failing jobs fail.
         IF failed THEN
             FOR i IN 1..n LOOP
                 BEGIN
                     EXECUTE p_sql USING payloads[i];
                     GET DIAGNOSTICS affected = ROW_COUNT;
                     oks[i] := true;
                     texts[i] := affected || ' row(s)';
                 EXCEPTION WHEN OTHERS THEN
                     GET STACKED DIAGNOSTICS message = MESSAGE_TEXT, code = RETURNED_SQLSTATE;
                     oks[i] := false;
                     texts[i] := 'ERROR: ' || message || ' (SQLSTATE ' || code || ')';
                 END;
             END LOOP;
         END IF;
         RETURN {s}.complete(p_owner, ids, oks, texts);
     END $f$;"#,
    // 8: the engine's diet. The partial indexes on running jobs
    // (locked_until, locked_by) cost every claim two index inserts of the
    // same key per job, on the same rightmost pages for every claimer:
    // measured, they more than halved the claim-and-complete rate (24,000
    // jobs/s against 59,000 without them, 500-job batches, 4 clients,
    // 2 cores). What used them is rare (the expiry sweep, releasing a dead
    // child's or a failed worker's jobs) and now scans the live table, which
    // holds the backlog only.
    //
    // Completion can keep no history (`p_keep` false): a done job is then
    // only deleted, no copy written (a third cheaper, measured), while a
    // failed one is still kept to be looked at.
    //
    // Completion checks the attempt as well as the owner: with a child
    // claiming for all its workers, one owner can hold a job at a new
    // attempt while a stale copy of an older one is still in its hands.
    //
    // run_sql's fence becomes a check on the common path: the batch runs
    // and completes in one subtransaction, and only if every job was still
    // held (complete recorded them all) does it stand; otherwise, or if a
    // statement failed, it is rolled back and the slow path locks what is
    // still held and runs job by job, as migration 7's did.
    //
    // The finished jobs' btree on finished_at took every completion's
    // insert on its rightmost page, with one key per transaction: a BRIN
    // index does for pruning by age (finished_at grows with the table) at
    // a fraction of the cost (44,000 against 56,000 to 64,000 jobs/s in the
    // same measurement).
    r#"DROP INDEX {s}.jobs_running;
     DROP INDEX {s}.jobs_locked_by;
     DROP INDEX {s}.jobs_finished_at;
     CREATE INDEX jobs_finished_at ON {s}.jobs_finished USING brin (finished_at);

     CREATE FUNCTION {s}.finish(p_owner text, p_ids int8[], p_attempts int[], p_oks bool[],
                                p_texts text[], p_keep bool)
     RETURNS int8 LANGUAGE plpgsql AS $f$
     DECLARE
         n int8;
         gone int8;
     BEGIN
         -- Without history, done jobs are only deleted; failed ones are
         -- still kept, to be looked at.
         IF NOT p_keep THEN
             DELETE FROM {s}.jobs_live AS j
             USING unnest(p_ids, p_attempts, p_oks) AS o(id, attempt, ok)
             WHERE j.id = o.id AND j.attempts = o.attempt AND o.ok
               AND j.state = 'running' AND j.locked_by = p_owner;
             GET DIAGNOSTICS gone = ROW_COUNT;
             IF gone = cardinality(p_ids) THEN
                 RETURN gone;
             END IF;
         END IF;
         WITH moved AS (
             DELETE FROM {s}.jobs_live AS j
             USING unnest(p_ids, p_attempts, p_oks, p_texts) AS o(id, attempt, ok, text)
             WHERE j.id = o.id AND j.attempts = o.attempt AND j.state = 'running'
               AND j.locked_by = p_owner AND (o.ok OR j.attempts >= j.max_attempts)
             RETURNING j.*, o.ok, o.text
         )
         INSERT INTO {s}.jobs_finished (id, queue, payload, state, attempts, max_attempts,
                                        run_at, result, last_error, created_at, finished_at)
         SELECT m.id, m.queue, m.payload, CASE WHEN m.ok THEN 'done' ELSE 'failed' END,
                m.attempts, m.max_attempts, m.run_at,
                CASE WHEN m.ok THEN m.text ELSE m.result END,
                CASE WHEN m.ok THEN m.last_error ELSE m.text END,
                m.created_at, now()
         FROM moved AS m;
         GET DIAGNOSTICS n = ROW_COUNT;
         RETURN n + coalesce(gone, 0);
     END $f$;

     CREATE FUNCTION {s}.complete(p_owner text, p_ids int8[], p_attempts int[], p_oks bool[],
                                  p_texts text[], p_keep bool)
     RETURNS int8 LANGUAGE plpgsql AS $f$
     DECLARE
         n int8;
     BEGIN
         -- Failed attempts with attempts left: queued again after a backoff.
         UPDATE {s}.jobs_live AS j SET
             state = 'queued', last_error = o.text,
             run_at = now() + make_interval(secs => least(3600, 0.2 * 4 ^ (j.attempts - 1))),
             locked_by = NULL, locked_until = NULL
         FROM unnest(p_ids, p_attempts, p_oks, p_texts) AS o(id, attempt, ok, text)
         WHERE j.id = o.id AND j.attempts = o.attempt AND NOT o.ok
           AND j.attempts < j.max_attempts AND j.state = 'running' AND j.locked_by = p_owner;
         GET DIAGNOSTICS n = ROW_COUNT;
         RETURN n + {s}.finish(p_owner, p_ids, p_attempts, p_oks, p_texts, p_keep);
     END $f$;

     DROP FUNCTION {s}.run_sql(text, text, int8[], int[], text[]);
     CREATE FUNCTION {s}.run_sql(p_sql text, p_owner text, p_ids int8[], p_attempts int[],
                                 p_payloads text[], p_keep bool)
     RETURNS int8 LANGUAGE plpgsql AS $f$
     DECLARE
         n int := coalesce(cardinality(p_ids), 0);
         held int8[];
         ids int8[];
         attempts int[];
         payloads text[];
         oks bool[];
         texts text[];
         affected int8;
         recorded int8;
         message text;
         code text;
     BEGIN
         IF n = 0 THEN
             RETURN 0;
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
                 RETURN recorded;
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
             WHERE j.state = 'running' AND j.locked_by = p_owner
             ORDER BY j.id FOR UPDATE OF j
         ) AS h;
         SELECT coalesce(array_agg(o.id ORDER BY o.i), '{}'),
                coalesce(array_agg(o.attempt ORDER BY o.i), '{}'),
                coalesce(array_agg(o.payload ORDER BY o.i), '{}')
         INTO ids, attempts, payloads
         FROM unnest(p_ids, p_attempts, p_payloads) WITH ORDINALITY AS o(id, attempt, payload, i)
         WHERE o.id = ANY(held);
         n := cardinality(ids);
         IF n = 0 THEN
             RETURN 0;
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
                 texts[i] := 'ERROR: ' || message || ' (SQLSTATE ' || code || ')';
             END;
         END LOOP;
         RETURN {s}.complete(p_owner, ids, attempts, oks, texts, p_keep);
     END $f$;"#,
    // 9: plans that stay small whatever the backlog. The planner guessed
    // that few rows are running and owned by one claim, so it planned
    // completion as a scan of the whole live table joined to the batch
    // (measured: 460 ms to complete 1,000 jobs of a 100,000 backlog), and
    // the claim's join back to the rows it locked as a hash join over the
    // whole table (40 ms per 1,000 jobs). Every statement that works on a
    // batch now names its ids (`id = ANY`), which only an index scan of the
    // primary key answers, and the claim updates the rows it locked by
    // their tuple ids, a TID scan (11 ms per 1,000 jobs).
    //
    // Completion joins the batch's rows to its outcomes (attempt, ok, text).
    // Estimating one row for the first, the planner nests a rescan of the
    // outcomes inside each row: quadratic in the batch (2.4 of 3.6 ms for
    // 64 jobs). Completion now plans without nested loops, so the join
    // hashes (8.7 ms for 1,000 jobs, moved to the history).
    //
    // And a child's workers record their outcomes together, in one
    // statement and one commit for many claims (`complete_jobs`): per job,
    // the server's cost halves from batches of 16 to batches of 128
    // (pgbench, 4 clients: 58 against 30 µs of machine CPU per job).
    //
    // The claim by tuple id: the rows are locked, so their tuple ids cannot
    // change before the commit. A row another session updated after this
    // statement's snapshot (and left queued) is locked in its newer version,
    // which the snapshot does not see: the update skips it, the claim
    // returns one job fewer, and the lock ends at the commit.
    r#"CREATE OR REPLACE FUNCTION {s}.claim(p_queue text, p_limit int, p_owner text, p_lease float8)
     RETURNS TABLE (job_id int8, job_payload text, job_attempt int)
     LANGUAGE plpgsql AS $f$
     BEGIN
         -- Commit without waiting for the WAL flush: see claim() in store.rs.
         PERFORM set_config('synchronous_commit', 'off', true);
         RETURN QUERY
         UPDATE {s}.jobs_live AS j
         SET state = 'running', attempts = j.attempts + 1, locked_by = p_owner,
             locked_until = now() + make_interval(secs => p_lease)
         WHERE j.ctid = ANY(ARRAY(
               SELECT k.ctid FROM {s}.jobs_live AS k
               WHERE k.queue = p_queue AND k.state = 'queued' AND k.run_at <= now()
               ORDER BY k.run_at, k.id LIMIT p_limit
               FOR UPDATE SKIP LOCKED))
         RETURNING j.id, j.payload, j.attempts;
     END $f$;

     -- The outcomes of jobs of any number of claims, each job's owner stamp
     -- beside it, in one statement: a child's workers record together (see
     -- completions.rs). Failed attempts with attempts left are queued again
     -- after a backoff; done jobs, and failed ones out of attempts, move to
     -- jobs_finished (done ones are only deleted without history). Jobs no
     -- longer held by that owner at that attempt are left alone. Returns
     -- how many it recorded.
     CREATE FUNCTION {s}.complete_jobs(p_owners text[], p_ids int8[], p_attempts int[],
                                       p_oks bool[], p_texts text[], p_keep bool)
     RETURNS int8 LANGUAGE plpgsql SET enable_nestloop = off AS $f$
     DECLARE
         requeued int8 := 0;
         gone int8 := 0;
         moved int8;
     BEGIN
         IF NOT true = ALL(p_oks) THEN
             UPDATE {s}.jobs_live AS j SET
                 state = 'queued', last_error = o.text,
                 run_at = now() + make_interval(secs => least(3600, 0.2 * 4 ^ (j.attempts - 1))),
                 locked_by = NULL, locked_until = NULL
             FROM unnest(p_owners, p_ids, p_attempts, p_oks, p_texts)
                  AS o(owner, id, attempt, ok, text)
             WHERE j.id = ANY(p_ids) AND j.id = o.id AND j.attempts = o.attempt
               AND j.locked_by = o.owner AND j.state = 'running' AND NOT o.ok
               AND j.attempts < j.max_attempts;
             GET DIAGNOSTICS requeued = ROW_COUNT;
         END IF;
         IF NOT p_keep THEN
             DELETE FROM {s}.jobs_live AS j
             USING unnest(p_owners, p_ids, p_attempts, p_oks) AS o(owner, id, attempt, ok)
             WHERE j.id = ANY(p_ids) AND j.id = o.id AND j.attempts = o.attempt
               AND j.locked_by = o.owner AND j.state = 'running' AND o.ok;
             GET DIAGNOSTICS gone = ROW_COUNT;
             IF requeued + gone = cardinality(p_ids) THEN
                 RETURN requeued + gone;
             END IF;
         END IF;
         WITH finished AS (
             DELETE FROM {s}.jobs_live AS j
             USING unnest(p_owners, p_ids, p_attempts, p_oks, p_texts)
                   AS o(owner, id, attempt, ok, text)
             WHERE j.id = ANY(p_ids) AND j.id = o.id AND j.attempts = o.attempt
               AND j.locked_by = o.owner AND j.state = 'running'
               AND (o.ok OR j.attempts >= j.max_attempts)
             RETURNING j.*, o.ok, o.text
         )
         INSERT INTO {s}.jobs_finished (id, queue, payload, state, attempts, max_attempts,
                                        run_at, result, last_error, created_at, finished_at)
         SELECT f.id, f.queue, f.payload, CASE WHEN f.ok THEN 'done' ELSE 'failed' END,
                f.attempts, f.max_attempts, f.run_at,
                CASE WHEN f.ok THEN f.text ELSE f.result END,
                CASE WHEN f.ok THEN f.last_error ELSE f.text END,
                f.created_at, now()
         FROM finished AS f;
         GET DIAGNOSTICS moved = ROW_COUNT;
         RETURN requeued + gone + moved;
     END $f$;

     -- One claim's outcomes (run_sql's, and older binaries').
     CREATE OR REPLACE FUNCTION {s}.complete(p_owner text, p_ids int8[], p_attempts int[],
                                             p_oks bool[], p_texts text[], p_keep bool)
     RETURNS int8 LANGUAGE sql AS $f$
         SELECT {s}.complete_jobs(array_fill(p_owner, ARRAY[coalesce(cardinality(p_ids), 0)]),
                                  p_ids, p_attempts, p_oks, p_texts, p_keep)
     $f$;
     DROP FUNCTION {s}.finish(text, int8[], int[], bool[], text[], bool);

     CREATE OR REPLACE FUNCTION {s}.run_sql(p_sql text, p_owner text, p_ids int8[], p_attempts int[],
                                 p_payloads text[], p_keep bool)
     RETURNS int8 LANGUAGE plpgsql AS $f$
     DECLARE
         n int := coalesce(cardinality(p_ids), 0);
         held int8[];
         ids int8[];
         attempts int[];
         payloads text[];
         oks bool[];
         texts text[];
         affected int8;
         recorded int8;
         message text;
         code text;
     BEGIN
         IF n = 0 THEN
             RETURN 0;
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
                 RETURN recorded;
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
         IF n = 0 THEN
             RETURN 0;
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
                 texts[i] := 'ERROR: ' || message || ' (SQLSTATE ' || code || ')';
             END;
         END LOOP;
         RETURN {s}.complete(p_owner, ids, attempts, oks, texts, p_keep);
     END $f$;"#,
    // 10: one claim of a queue at a time. Claims that ran together each
    // walked the rows the others had locked and not yet committed: a
    // SKIP LOCKED try per row, and a lock record in the WAL for each row
    // it took before updating it. Claims now take turns on a
    // transaction-level advisory lock per queue (which PgBouncer's
    // transaction pooling keeps), so a claim never meets another's rows
    // in flight, and updates what it picked without locking it first.
    //
    // Without the row locks, a row that another session updated after
    // this statement's snapshot (a release, a cancel) is found changed by
    // the update, which then rechecks it in its newest version: that
    // version has another tuple id, so the update skips it. The claim
    // returns fewer jobs than it picked, and never a job that is no longer
    // queued.
    r#"CREATE OR REPLACE FUNCTION {s}.claim(p_queue text, p_limit int, p_owner text, p_lease float8)
     RETURNS TABLE (job_id int8, job_payload text, job_attempt int)
     LANGUAGE plpgsql AS $f$
     BEGIN
         -- Commit without waiting for the WAL flush: see claim() in store.rs.
         PERFORM set_config('synchronous_commit', 'off', true);
         PERFORM pg_advisory_xact_lock(hashtext('{s}.claim'), hashtext(p_queue));
         RETURN QUERY
         UPDATE {s}.jobs_live AS j
         SET state = 'running', attempts = j.attempts + 1, locked_by = p_owner,
             locked_until = now() + make_interval(secs => p_lease)
         WHERE j.ctid = ANY(ARRAY(
               SELECT k.ctid FROM {s}.jobs_live AS k
               WHERE k.queue = p_queue AND k.state = 'queued' AND k.run_at <= now()
               ORDER BY k.run_at, k.id LIMIT p_limit))
           AND j.state = 'queued'
         RETURNING j.id, j.payload, j.attempts;
     END $f$;"#,
    // 11: job semantics. Priorities (smaller first, 0 by default, never
    // negative), unique keys (at most one unfinished job per queue and key:
    // a unique index on the live table, which holds only unfinished jobs),
    // a timeout per job (seconds; NULL: the fleet's), each failed
    // attempt's error, who ran a finished job, and the `cancelled` state
    // (a queued job cancelled at once; a running one marked, and finished
    // as cancelled instead of retried).
    //
    // The claim index leads with the priority. A claim walks the levels
    // that have queued jobs (one index descent each) and, in each, the due
    // jobs oldest first, so a job scheduled for later never stands in the
    // way; and it works several queues in the order given. Claims take
    // their turns per queue, in name order, so two fleets working the same
    // queues in different orders cannot deadlock. The jobs come back in
    // the order they are to run.
    r#"ALTER TABLE {s}.jobs_live
         ADD COLUMN priority int NOT NULL DEFAULT 0 CHECK (priority >= 0),
         ADD COLUMN unique_key text,
         ADD COLUMN timeout float8 CHECK (timeout > 0),
         ADD COLUMN errors jsonb NOT NULL DEFAULT '[]',
         ADD COLUMN cancel_requested bool NOT NULL DEFAULT false;
     ALTER TABLE {s}.jobs_finished
         ADD COLUMN priority int NOT NULL DEFAULT 0,
         ADD COLUMN unique_key text,
         ADD COLUMN timeout float8,
         ADD COLUMN errors jsonb NOT NULL DEFAULT '[]',
         ADD COLUMN cancel_requested bool NOT NULL DEFAULT false;
     ALTER TABLE {s}.jobs_live DROP CONSTRAINT jobs_state_check,
         ADD CONSTRAINT jobs_state_check
             CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled'));
     ALTER TABLE {s}.jobs_finished DROP CONSTRAINT jobs_state_check,
         ADD CONSTRAINT jobs_state_check
             CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled'));
     CREATE OR REPLACE VIEW {s}.jobs AS
         SELECT * FROM {s}.jobs_live UNION ALL SELECT * FROM {s}.jobs_finished;
     DROP INDEX {s}.jobs_queued;
     CREATE INDEX jobs_queued ON {s}.jobs_live (queue, priority, run_at, id)
         WHERE state = 'queued';
     CREATE UNIQUE INDEX jobs_unique ON {s}.jobs_live (queue, unique_key)
         WHERE unique_key IS NOT NULL;

     CREATE FUNCTION {s}.claim(p_queues text[], p_limit int, p_owner text, p_lease float8)
     RETURNS TABLE (job_id int8, job_payload text, job_attempt int, job_queue text,
                    job_priority int, job_timeout float8)
     LANGUAGE plpgsql AS $f$
     DECLARE
         picked tid[] := '{}';
         q text;
         level int;
     BEGIN
         -- Commit without waiting for the WAL flush: see claim() in store.rs.
         PERFORM set_config('synchronous_commit', 'off', true);
         FOR q IN SELECT DISTINCT u.q FROM unnest(p_queues) AS u(q) ORDER BY 1 LOOP
             PERFORM pg_advisory_xact_lock(hashtext('{s}.claim'), hashtext(q));
         END LOOP;
         FOREACH q IN ARRAY p_queues LOOP
             level := -1;
             LOOP
                 SELECT min(k.priority) INTO level FROM {s}.jobs_live AS k
                 WHERE k.queue = q AND k.state = 'queued' AND k.priority > level;
                 EXIT WHEN level IS NULL;
                 picked := picked || ARRAY(
                     SELECT k.ctid FROM {s}.jobs_live AS k
                     WHERE k.queue = q AND k.state = 'queued' AND k.priority = level
                       AND k.run_at <= now()
                     ORDER BY k.run_at, k.id LIMIT p_limit - cardinality(picked));
                 EXIT WHEN cardinality(picked) >= p_limit;
             END LOOP;
             EXIT WHEN cardinality(picked) >= p_limit;
         END LOOP;
         RETURN QUERY
         WITH claimed AS (
             UPDATE {s}.jobs_live AS j
             SET state = 'running', attempts = j.attempts + 1, locked_by = p_owner,
                 locked_until = now() + make_interval(secs => p_lease)
             WHERE j.ctid = ANY(picked) AND j.state = 'queued'
             RETURNING j.id, j.payload, j.attempts, j.queue, j.priority, j.timeout, j.run_at
         )
         SELECT c.id, c.payload, c.attempts, c.queue, c.priority, c.timeout FROM claimed AS c
         ORDER BY array_position(p_queues, c.queue), c.priority, c.run_at, c.id;
     END $f$;

     -- Whether one of the queues has a job runnable now: the claim's walk,
     -- without claiming.
     CREATE FUNCTION {s}.runnable(p_queues text[]) RETURNS bool
     LANGUAGE plpgsql STABLE AS $f$
     DECLARE
         q text;
         level int;
     BEGIN
         FOREACH q IN ARRAY p_queues LOOP
             level := -1;
             LOOP
                 SELECT min(k.priority) INTO level FROM {s}.jobs_live AS k
                 WHERE k.queue = q AND k.state = 'queued' AND k.priority > level;
                 EXIT WHEN level IS NULL;
                 IF EXISTS (SELECT 1 FROM {s}.jobs_live AS k
                            WHERE k.queue = q AND k.state = 'queued' AND k.priority = level
                              AND k.run_at <= now()) THEN
                     RETURN true;
                 END IF;
             END LOOP;
         END LOOP;
         RETURN false;
     END $f$;

     -- The one-queue claim of older binaries.
     CREATE OR REPLACE FUNCTION {s}.claim(p_queue text, p_limit int, p_owner text, p_lease float8)
     RETURNS TABLE (job_id int8, job_payload text, job_attempt int)
     LANGUAGE sql AS $f$
         SELECT c.job_id, c.job_payload, c.job_attempt
         FROM {s}.claim(ARRAY[p_queue], p_limit, p_owner, p_lease) AS c
     $f$;

     CREATE OR REPLACE FUNCTION {s}.complete_jobs(p_owners text[], p_ids int8[], p_attempts int[],
                                                  p_oks bool[], p_texts text[], p_keep bool)
     RETURNS int8 LANGUAGE plpgsql SET enable_nestloop = off AS $f$
     DECLARE
         requeued int8 := 0;
         gone int8 := 0;
         moved int8;
     BEGIN
         -- Failed attempts with attempts left, not cancelled: queued again
         -- after a backoff, the attempt's error kept.
         IF NOT true = ALL(p_oks) THEN
             UPDATE {s}.jobs_live AS j SET
                 state = 'queued', last_error = o.text,
                 errors = j.errors || jsonb_build_object('attempt', j.attempts, 'error', o.text,
                                                         'at', now(), 'by', j.locked_by),
                 run_at = now() + make_interval(secs => least(3600, 0.2 * 4 ^ (j.attempts - 1))),
                 locked_by = NULL, locked_until = NULL
             FROM unnest(p_owners, p_ids, p_attempts, p_oks, p_texts)
                  AS o(owner, id, attempt, ok, text)
             WHERE j.id = ANY(p_ids) AND j.id = o.id AND j.attempts = o.attempt
               AND j.locked_by = o.owner AND j.state = 'running' AND NOT o.ok
               AND j.attempts < j.max_attempts AND NOT j.cancel_requested;
             GET DIAGNOSTICS requeued = ROW_COUNT;
         END IF;
         IF NOT p_keep THEN
             DELETE FROM {s}.jobs_live AS j
             USING unnest(p_owners, p_ids, p_attempts, p_oks) AS o(owner, id, attempt, ok)
             WHERE j.id = ANY(p_ids) AND j.id = o.id AND j.attempts = o.attempt
               AND j.locked_by = o.owner AND j.state = 'running' AND o.ok;
             GET DIAGNOSTICS gone = ROW_COUNT;
             IF requeued + gone = cardinality(p_ids) THEN
                 RETURN requeued + gone;
             END IF;
         END IF;
         WITH finished AS (
             DELETE FROM {s}.jobs_live AS j
             USING unnest(p_owners, p_ids, p_attempts, p_oks, p_texts)
                   AS o(owner, id, attempt, ok, text)
             WHERE j.id = ANY(p_ids) AND j.id = o.id AND j.attempts = o.attempt
               AND j.locked_by = o.owner AND j.state = 'running'
               AND (o.ok OR j.attempts >= j.max_attempts OR j.cancel_requested)
             RETURNING j.*, o.ok, o.text
         )
         INSERT INTO {s}.jobs_finished (id, queue, payload, state, attempts, max_attempts,
                                        run_at, locked_by, result, last_error, created_at,
                                        finished_at, priority, unique_key, timeout, errors,
                                        cancel_requested)
         SELECT f.id, f.queue, f.payload,
                CASE WHEN f.ok THEN 'done' WHEN f.cancel_requested THEN 'cancelled'
                     ELSE 'failed' END,
                f.attempts, f.max_attempts, f.run_at, f.locked_by,
                CASE WHEN f.ok THEN f.text ELSE f.result END,
                CASE WHEN f.ok THEN f.last_error ELSE f.text END,
                f.created_at, now(), f.priority, f.unique_key, f.timeout,
                CASE WHEN f.ok THEN f.errors
                     ELSE f.errors || jsonb_build_object('attempt', f.attempts, 'error', f.text,
                                                         'at', now(), 'by', f.locked_by) END,
                f.cancel_requested
         FROM finished AS f;
         GET DIAGNOSTICS moved = ROW_COUNT;
         RETURN requeued + gone + moved;
     END $f$;

     -- Queues one job; with a unique key already held by an unfinished job
     -- of the queue, queues nothing and returns that job's id with
     -- `created` false. Safe under concurrent enqueues: the unique index
     -- decides (an insert waits for a concurrent one with the same key to
     -- commit or roll back); a job that finishes between the conflict and
     -- the look-up lets the next round insert.
     CREATE FUNCTION {s}.enqueue_job(p_queue text, p_payload text,
                                     p_max_attempts int DEFAULT 3,
                                     p_run_at timestamptz DEFAULT now(),
                                     p_priority int DEFAULT 0,
                                     p_unique_key text DEFAULT NULL,
                                     p_timeout float8 DEFAULT NULL)
     RETURNS TABLE (job_id int8, created bool) LANGUAGE plpgsql AS $f$
     DECLARE
         found_id int8;
     BEGIN
         LOOP
             INSERT INTO {s}.jobs_live AS j (queue, payload, max_attempts, run_at, priority,
                                             unique_key, timeout)
             VALUES (p_queue, p_payload, p_max_attempts, coalesce(p_run_at, now()), p_priority,
                     p_unique_key, p_timeout)
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

     -- The id of the job queued (or already holding the unique key). Every
     -- parameter but the first two has a default, so calls of older
     -- versions keep working.
     DROP FUNCTION {s}.enqueue(text, text, int, timestamptz);
     CREATE FUNCTION {s}.enqueue(p_queue text, p_payload text,
                                 p_max_attempts int DEFAULT 3,
                                 p_run_at timestamptz DEFAULT now(),
                                 p_priority int DEFAULT 0,
                                 p_unique_key text DEFAULT NULL,
                                 p_timeout float8 DEFAULT NULL)
     RETURNS int8 LANGUAGE sql AS $f$
         SELECT e.job_id FROM {s}.enqueue_job(p_queue, p_payload, p_max_attempts, p_run_at,
                                          p_priority, p_unique_key, p_timeout) AS e
     $f$;"#,
    // 12: schedules: jobs queued on a cron expression by whichever master
    // runs (see schedule.rs for how each tick fires exactly once).
    r#"CREATE TABLE {s}.schedules (
         name text PRIMARY KEY,
         cron text NOT NULL,
         timezone text,
         queue text NOT NULL,
         payload text NOT NULL,
         priority int NOT NULL DEFAULT 0 CHECK (priority >= 0),
         max_attempts int NOT NULL DEFAULT 3,
         timeout float8,
         next_at timestamptz NOT NULL,
         last_at timestamptz,
         last_job int8,
         created_at timestamptz NOT NULL DEFAULT now()
     );
     CREATE INDEX schedules_next_at ON {s}.schedules (next_at);"#,
    // 13: masters' heartbeats. Each master records one every second, with
    // its children; a master whose heartbeat is older than
    // `--rescue-after` is taken for dead, and a live master hands its
    // children's running jobs back (see store::rescue).
    r#"CREATE TABLE {s}.masters (
         host text NOT NULL,
         pid int NOT NULL,
         queues text NOT NULL,
         started_at timestamptz NOT NULL DEFAULT now(),
         heartbeat_at timestamptz NOT NULL DEFAULT now(),
         PRIMARY KEY (host, pid)
     );"#,
    // 14: the next priority level as an ordered look-up. `min(priority)`
    // was planned, on a table not yet analysed (a fleet started right
    // after a bulk enqueue), as an aggregate over every queued job of the
    // queue: each claim read the whole backlog's index (17,000 against
    // 30,000 jobs/s on 100,000 fresh jobs). `ORDER BY priority LIMIT 1`
    // stops at the first entry whatever the statistics.
    r#"     CREATE OR REPLACE FUNCTION {s}.claim(p_queues text[], p_limit int, p_owner text, p_lease float8)
     RETURNS TABLE (job_id int8, job_payload text, job_attempt int, job_queue text,
                    job_priority int, job_timeout float8)
     LANGUAGE plpgsql AS $f$
     DECLARE
         picked tid[] := '{}';
         q text;
         level int;
     BEGIN
         -- Commit without waiting for the WAL flush: see claim() in store.rs.
         PERFORM set_config('synchronous_commit', 'off', true);
         FOR q IN SELECT DISTINCT u.q FROM unnest(p_queues) AS u(q) ORDER BY 1 LOOP
             PERFORM pg_advisory_xact_lock(hashtext('{s}.claim'), hashtext(q));
         END LOOP;
         FOREACH q IN ARRAY p_queues LOOP
             level := -1;
             LOOP
                 level := (SELECT k.priority FROM {s}.jobs_live AS k
                           WHERE k.queue = q AND k.state = 'queued' AND k.priority > level
                           ORDER BY k.priority LIMIT 1);
                 EXIT WHEN level IS NULL;
                 picked := picked || ARRAY(
                     SELECT k.ctid FROM {s}.jobs_live AS k
                     WHERE k.queue = q AND k.state = 'queued' AND k.priority = level
                       AND k.run_at <= now()
                     ORDER BY k.run_at, k.id LIMIT p_limit - cardinality(picked));
                 EXIT WHEN cardinality(picked) >= p_limit;
             END LOOP;
             EXIT WHEN cardinality(picked) >= p_limit;
         END LOOP;
         RETURN QUERY
         WITH claimed AS (
             UPDATE {s}.jobs_live AS j
             SET state = 'running', attempts = j.attempts + 1, locked_by = p_owner,
                 locked_until = now() + make_interval(secs => p_lease)
             WHERE j.ctid = ANY(picked) AND j.state = 'queued'
             RETURNING j.id, j.payload, j.attempts, j.queue, j.priority, j.timeout, j.run_at
         )
         SELECT c.id, c.payload, c.attempts, c.queue, c.priority, c.timeout FROM claimed AS c
         ORDER BY array_position(p_queues, c.queue), c.priority, c.run_at, c.id;
     END $f$;

     -- Whether one of the queues has a job runnable now: the claim's walk,
     -- without claiming.
     CREATE OR REPLACE FUNCTION {s}.runnable(p_queues text[]) RETURNS bool
     LANGUAGE plpgsql STABLE AS $f$
     DECLARE
         q text;
         level int;
     BEGIN
         FOREACH q IN ARRAY p_queues LOOP
             level := -1;
             LOOP
                 level := (SELECT k.priority FROM {s}.jobs_live AS k
                           WHERE k.queue = q AND k.state = 'queued' AND k.priority > level
                           ORDER BY k.priority LIMIT 1);
                 EXIT WHEN level IS NULL;
                 IF EXISTS (SELECT 1 FROM {s}.jobs_live AS k
                            WHERE k.queue = q AND k.state = 'queued' AND k.priority = level
                              AND k.run_at <= now()) THEN
                     RETURN true;
                 END IF;
             END LOOP;
         END LOOP;
         RETURN false;
     END $f$;"#,
    // 15: the claim takes the rows it picked by their tuple ids, whatever
    // the statistics. On a table not yet analysed (a fleet started right
    // after a bulk enqueue) the planner guessed that few jobs were queued
    // and updated through the queued-jobs index, reading the whole backlog
    // to find the 512 rows it had just picked (14 ms against 0.2 ms per
    // claim on 100,000 fresh jobs; 27,800 against 33,500 jobs/s for
    // `--sql`). A seq scan is no better, and `IS TRUE` on the state only
    // turns the plan into one. So the update is a function of its own
    // with every other way in switched off for its plan, and the claim
    // calls it.
    r#"     CREATE OR REPLACE FUNCTION {s}.take_picked(p_picked tid[], p_queues text[],
                                                  p_owner text, p_lease float8)
     RETURNS TABLE (job_id int8, job_payload text, job_attempt int, job_queue text,
                    job_priority int, job_timeout float8)
     LANGUAGE sql
     SET enable_seqscan = off SET enable_bitmapscan = off SET enable_indexscan = off
     AS $f$
         WITH claimed AS (
             UPDATE {s}.jobs_live AS j
             SET state = 'running', attempts = j.attempts + 1, locked_by = p_owner,
                 locked_until = now() + make_interval(secs => p_lease)
             WHERE j.ctid = ANY(p_picked) AND j.state = 'queued'
             RETURNING j.id, j.payload, j.attempts, j.queue, j.priority, j.timeout, j.run_at
         )
         SELECT c.id, c.payload, c.attempts, c.queue, c.priority, c.timeout FROM claimed AS c
         ORDER BY array_position(p_queues, c.queue), c.priority, c.run_at, c.id
     $f$;

     CREATE OR REPLACE FUNCTION {s}.claim(p_queues text[], p_limit int, p_owner text, p_lease float8)
     RETURNS TABLE (job_id int8, job_payload text, job_attempt int, job_queue text,
                    job_priority int, job_timeout float8)
     LANGUAGE plpgsql AS $f$
     DECLARE
         picked tid[] := '{}';
         q text;
         level int;
     BEGIN
         -- Commit without waiting for the WAL flush: see claim() in store.rs.
         PERFORM set_config('synchronous_commit', 'off', true);
         FOR q IN SELECT DISTINCT u.q FROM unnest(p_queues) AS u(q) ORDER BY 1 LOOP
             PERFORM pg_advisory_xact_lock(hashtext('{s}.claim'), hashtext(q));
         END LOOP;
         FOREACH q IN ARRAY p_queues LOOP
             level := -1;
             LOOP
                 level := (SELECT k.priority FROM {s}.jobs_live AS k
                           WHERE k.queue = q AND k.state = 'queued' AND k.priority > level
                           ORDER BY k.priority LIMIT 1);
                 EXIT WHEN level IS NULL;
                 picked := picked || ARRAY(
                     SELECT k.ctid FROM {s}.jobs_live AS k
                     WHERE k.queue = q AND k.state = 'queued' AND k.priority = level
                       AND k.run_at <= now()
                     ORDER BY k.run_at, k.id LIMIT p_limit - cardinality(picked));
                 EXIT WHEN cardinality(picked) >= p_limit;
             END LOOP;
             EXIT WHEN cardinality(picked) >= p_limit;
         END LOOP;
         RETURN QUERY SELECT * FROM {s}.take_picked(picked, p_queues, p_owner, p_lease);
     END $f$;"#,
    // 16: the claim returns each job's max_attempts too, so a worker can
    // tell a failure that will be retried from a final one (the status
    // endpoint's `prefork_jobs_total{outcome}`). A column more in the
    // result: a fleet of the previous version names the columns it reads
    // and runs on unchanged.
    r#"     DROP FUNCTION {s}.claim(text[], int, text, float8);
     DROP FUNCTION {s}.take_picked(tid[], text[], text, float8);
     CREATE FUNCTION {s}.take_picked(p_picked tid[], p_queues text[],
                                                  p_owner text, p_lease float8)
     RETURNS TABLE (job_id int8, job_payload text, job_attempt int, job_queue text,
                    job_priority int, job_timeout float8, job_max_attempts int)
     LANGUAGE sql
     SET enable_seqscan = off SET enable_bitmapscan = off SET enable_indexscan = off
     AS $f$
         WITH claimed AS (
             UPDATE {s}.jobs_live AS j
             SET state = 'running', attempts = j.attempts + 1, locked_by = p_owner,
                 locked_until = now() + make_interval(secs => p_lease)
             WHERE j.ctid = ANY(p_picked) AND j.state = 'queued'
             RETURNING j.id, j.payload, j.attempts, j.queue, j.priority, j.timeout, j.run_at,
                       j.max_attempts
         )
         SELECT c.id, c.payload, c.attempts, c.queue, c.priority, c.timeout, c.max_attempts
         FROM claimed AS c
         ORDER BY array_position(p_queues, c.queue), c.priority, c.run_at, c.id
     $f$;

     CREATE FUNCTION {s}.claim(p_queues text[], p_limit int, p_owner text, p_lease float8)
     RETURNS TABLE (job_id int8, job_payload text, job_attempt int, job_queue text,
                    job_priority int, job_timeout float8, job_max_attempts int)
     LANGUAGE plpgsql AS $f$
     DECLARE
         picked tid[] := '{}';
         q text;
         level int;
     BEGIN
         -- Commit without waiting for the WAL flush: see claim() in store.rs.
         PERFORM set_config('synchronous_commit', 'off', true);
         FOR q IN SELECT DISTINCT u.q FROM unnest(p_queues) AS u(q) ORDER BY 1 LOOP
             PERFORM pg_advisory_xact_lock(hashtext('{s}.claim'), hashtext(q));
         END LOOP;
         FOREACH q IN ARRAY p_queues LOOP
             level := -1;
             LOOP
                 level := (SELECT k.priority FROM {s}.jobs_live AS k
                           WHERE k.queue = q AND k.state = 'queued' AND k.priority > level
                           ORDER BY k.priority LIMIT 1);
                 EXIT WHEN level IS NULL;
                 picked := picked || ARRAY(
                     SELECT k.ctid FROM {s}.jobs_live AS k
                     WHERE k.queue = q AND k.state = 'queued' AND k.priority = level
                       AND k.run_at <= now()
                     ORDER BY k.run_at, k.id LIMIT p_limit - cardinality(picked));
                 EXIT WHEN cardinality(picked) >= p_limit;
             END LOOP;
             EXIT WHEN cardinality(picked) >= p_limit;
         END LOOP;
         RETURN QUERY SELECT * FROM {s}.take_picked(picked, p_queues, p_owner, p_lease);
     END $f$;"#,
    // 17: `--sql` batches say which of their jobs failed, for the status
    // endpoint's counts: `run_sql_outcomes` is `run_sql` returning the
    // failed ids beside the count recorded. `run_sql` stays, for fleets of
    // the previous version, as its first column.
    r#"CREATE FUNCTION {s}.run_sql_outcomes(p_sql text, p_owner text, p_ids int8[],
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

     CREATE OR REPLACE FUNCTION {s}.run_sql(p_sql text, p_owner text, p_ids int8[], p_attempts int[],
                                 p_payloads text[], p_keep bool)
     RETURNS int8 LANGUAGE sql AS $f$
         SELECT (o).recorded FROM (SELECT {s}.run_sql_outcomes(p_sql, p_owner, p_ids, p_attempts,
                                                               p_payloads, p_keep) AS o) AS r
     $f$;"#,
    // 18: a schedule may give its jobs a unique key: a tick while the
    // previous tick's job is still queued or running queues nothing (an
    // overlapping run is skipped, as River's unique periodic jobs and
    // sidekiq-cron do). Fleets of the previous version ignore the column.
    r#"ALTER TABLE {s}.schedules ADD COLUMN unique_key text;"#,
];

/// Creates or upgrades the schema; safe to run from many processes at once.
///
/// A schema that is up to date is only read (its version), so a role with
/// no right to create anything can run a fleet, enqueue and read status
/// once the schema's owner has migrated it (the README lists the grants).
///
/// # Errors
///
/// The server's error.
pub fn migrate(client: &mut Client, schema: &Schema) -> Result<(), postgres::Error> {
    if version(client, schema)?.is_some_and(|v| v as usize >= MIGRATIONS.len()) {
        return Ok(());
    }
    migrate_to(client, schema, MIGRATIONS.len())
}

/// The schema's version, `None` if it has none yet.
fn version(client: &mut Client, schema: &Schema) -> Result<Option<i32>, postgres::Error> {
    let s = schema.name();
    // Unnamed statements (query_typed), as on the hot path: nothing here
    // may outlive its round trip behind PgBouncer.
    let table = format!("{s}.schema_version");
    let exists: bool = client
        .query_typed_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[(&table, postgres::types::Type::TEXT)],
        )?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let rows = client.query_typed(&format!("SELECT version FROM {table}"), &[])?;
    Ok(rows.first().map(|r| r.get(0)))
}

/// Migrates up to version `target` (never down).
pub(super) fn migrate_to(
    client: &mut Client,
    schema: &Schema,
    target: usize,
) -> Result<(), postgres::Error> {
    let s = schema.name();
    let mut tx = client.transaction()?;
    // Serialises concurrent migrations; a transaction-level lock also works
    // behind PgBouncer in transaction mode.
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext($1))",
        &[&format!("{s}.migrate")],
    )?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {s};
         CREATE TABLE IF NOT EXISTS {s}.schema_version (version int NOT NULL);"
    ))?;
    let version: i32 = tx
        .query_opt(&format!("SELECT version FROM {s}.schema_version"), &[])?
        .map_or(0, |row| row.get(0));
    let target = target.min(MIGRATIONS.len());
    for (i, migration) in MIGRATIONS[..target]
        .iter()
        .enumerate()
        .skip(version as usize)
    {
        tx.batch_execute(&migration.replace("{s}", s))?;
        log::debug!("queue schema {s}: migration {} applied", i + 1);
    }
    if (version as usize) >= target {
        return tx.commit();
    }
    let latest = target as i32;
    tx.execute(&format!("DELETE FROM {s}.schema_version"), &[])?;
    tx.execute(
        &format!("INSERT INTO {s}.schema_version VALUES ($1)"),
        &[&latest],
    )?;
    tx.commit()?;
    // One line, once it is true: the migrations are one transaction.
    match version {
        0 => log::info!("queue schema {s}: created at version {latest}"),
        _ => log::info!("queue schema {s}: migrated from version {version} to {latest}"),
    }
    Ok(())
}
