//! The queue's PostgreSQL schema: its name, the queue names it accepts,
//! and how it is created and upgraded.
//!
//! | where | what |
//! |---|---|
//! | `migrations/NNN_*.sql` | the tables, indexes and views, one numbered migration a file: version N has run the first N; each says why it was made |
//! | `functions/*.sql` | the server-side functions (the hot path: claim, complete, `--sql` batches, enqueue), one a file, each defined once |
//!
//! An upgrade ([`migrate`]) is one transaction: the migrations the schema
//! has not run, then every function with `CREATE OR REPLACE`, then the new
//! version. So a schema of any version ends with the same tables and the
//! same definitions (a test upgrades dumps of versions 3 and 18 and
//! compares them with a fresh schema). A migration that changes a
//! function's result or arguments drops the old one itself (`DROP
//! FUNCTION IF EXISTS`); a function's arguments stay callable by the
//! previous version's fleets, which may still run beside a new one.

use std::fmt;

use postgres::Client;
use postgres::types::Type;

/// A schema or queue name the queue does not take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    /// A schema of PostgreSQL's own (`pg_*`, `information_schema`).
    ReservedSchema(String),
    /// A schema name that would need quoting, or is too long.
    Schema(String),
    /// A queue name with other characters than letters, digits, `_ - . :`,
    /// empty or too long.
    Queue(String),
    /// A job kind's name, by the same rule.
    Kind(String),
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::ReservedSchema(name) => write!(
                f,
                "invalid schema name {name:?}: that schema belongs to PostgreSQL; \
                 name one for the queue alone"
            ),
            NameError::Schema(name) => write!(
                f,
                "invalid schema name {name:?}: use lower-case letters, digits and _ (max 63)"
            ),
            NameError::Queue(name) => write!(
                f,
                "invalid queue name {name:?}: use 1 to 100 letters, digits, '_', '-', '.' or ':'"
            ),
            NameError::Kind(name) => write!(
                f,
                "invalid job kind {name:?}: use 1 to 100 letters, digits, '_', '-', '.' or ':'"
            ),
        }
    }
}

impl std::error::Error for NameError {}

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
    /// [`NameError::ReservedSchema`] or [`NameError::Schema`].
    pub fn new(name: &str) -> Result<Schema, NameError> {
        if name.starts_with("pg_") || name == "information_schema" {
            return Err(NameError::ReservedSchema(name.to_owned()));
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
            Err(NameError::Schema(name.to_owned()))
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
/// [`NameError::Queue`].
pub fn check_queue_name(name: &str) -> Result<(), NameError> {
    match is_name(name) {
        true => Ok(()),
        false => Err(NameError::Queue(name.to_owned())),
    }
}

/// Checks a job kind's name, by the rule of queue names: 1 to 100
/// letters, digits, `_`, `-`, `.` or `:` (`send_email`, `app.tasks.mail`).
///
/// # Errors
///
/// [`NameError::Kind`].
pub fn check_kind_name(name: &str) -> Result<(), NameError> {
    match is_name(name) {
        true => Ok(()),
        false => Err(NameError::Kind(name.to_owned())),
    }
}

/// 1 to 100 letters, digits, `_`, `-`, `.` or `:`.
fn is_name(name: &str) -> bool {
    (1..=100).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
}

/// The migrations, in order: version N is the first N applied. Each is a
/// file of its own; a migration is never changed once released (a database
/// that ran it will not run it again), only followed by another.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/001_jobs.sql"),
    include_str!("migrations/002_children.sql"),
    include_str!("migrations/003_hot_path.sql"),
    include_str!("migrations/004_history.sql"),
    include_str!("migrations/005_enqueue.sql"),
    include_str!("migrations/006_words.sql"),
    include_str!("migrations/007_fenced_run_sql.sql"),
    include_str!("migrations/008_diet.sql"),
    include_str!("migrations/009_small_plans.sql"),
    include_str!("migrations/010_claims_take_turns.sql"),
    include_str!("migrations/011_job_semantics.sql"),
    include_str!("migrations/012_schedules.sql"),
    include_str!("migrations/013_masters.sql"),
    include_str!("migrations/014_priority_lookup.sql"),
    include_str!("migrations/015_claim_by_tid.sql"),
    include_str!("migrations/016_claim_max_attempts.sql"),
    include_str!("migrations/017_sql_outcomes.sql"),
    include_str!("migrations/018_schedule_unique_key.sql"),
    include_str!("migrations/019_functions_in_files.sql"),
    include_str!("migrations/020_child_leases.sql"),
    include_str!("migrations/021_finished_at_when_recorded.sql"),
    include_str!("migrations/022_job_rows.sql"),
    include_str!("migrations/023_suspects.sql"),
    include_str!("migrations/024_claim_floors.sql"),
    include_str!("migrations/025_kinds.sql"),
    include_str!("migrations/026_served_kinds.sql"),
    include_str!("migrations/027_schedule_kinds.sql"),
];

/// The server-side functions, each defined once, in the order they are
/// created (a function before the `LANGUAGE sql` ones that call it: those
/// are checked as they are created). They are applied with `CREATE OR
/// REPLACE` in the transaction of every migration, after the migrations,
/// so a database of any version ends with these definitions. A change to
/// one comes with a new migration (if only a comment saying so): that is
/// what makes every database apply it, once.
const FUNCTIONS: &[(&str, &str)] = &[
    ("retry_delay", include_str!("functions/retry_delay.sql")),
    ("finished_row", include_str!("functions/finished_row.sql")),
    ("queued_again", include_str!("functions/queued_again.sql")),
    ("take_picked", include_str!("functions/take_picked.sql")),
    ("next_level", include_str!("functions/next_level.sql")),
    ("level_start", include_str!("functions/level_start.sql")),
    ("claim", include_str!("functions/claim.sql")),
    ("runnable", include_str!("functions/runnable.sql")),
    ("first_queued", include_str!("functions/first_queued.sql")),
    ("complete_jobs", include_str!("functions/complete_jobs.sql")),
    ("complete", include_str!("functions/complete.sql")),
    (
        "run_sql_outcomes",
        include_str!("functions/run_sql_outcomes.sql"),
    ),
    ("run_sql", include_str!("functions/run_sql.sql")),
    ("enqueue_job", include_str!("functions/enqueue_job.sql")),
    ("enqueue", include_str!("functions/enqueue.sql")),
];

/// Creates or upgrades the schema; safe to run from many processes at once.
///
/// A schema that is up to date is only read (its version), so a role with
/// no right to create anything can run a fleet, enqueue and read status
/// once the schema's owner has migrated it (the README lists the grants).
/// An upgrade is one transaction: the migrations the schema has not run,
/// then every server-side function, then the new version.
///
/// # Errors
///
/// The server's error.
pub fn migrate(client: &mut Client, schema: &Schema) -> Result<(), postgres::Error> {
    if version(client, schema)?.is_some_and(|v| v as usize >= MIGRATIONS.len()) {
        return Ok(());
    }
    upgrade(client, schema)
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

/// Runs the migrations the schema has not run, then the functions, in one
/// transaction (never down: a newer schema is left as it is).
fn upgrade(client: &mut Client, schema: &Schema) -> Result<(), postgres::Error> {
    let s = schema.name();
    let mut tx = client.transaction()?;
    // Serialises concurrent migrations; a transaction-level lock also works
    // behind PgBouncer in transaction mode.
    tx.execute_typed(
        "SELECT pg_advisory_xact_lock(hashtext($1))",
        &[(&format!("{s}.migrate"), Type::TEXT)],
    )?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {s};
         CREATE TABLE IF NOT EXISTS {s}.schema_version (version int NOT NULL);"
    ))?;
    let version: i32 = tx
        .query_typed_opt(&format!("SELECT version FROM {s}.schema_version"), &[])?
        .map_or(0, |row| row.get(0));
    if version as usize >= MIGRATIONS.len() {
        return tx.commit();
    }
    for (i, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.batch_execute(&migration.replace("{s}", s))?;
        log::debug!("queue schema {s}: migration {} applied", i + 1);
    }
    for (name, function) in FUNCTIONS {
        tx.batch_execute(&function.replace("{s}", s))?;
        log::debug!("queue schema {s}: function {name} defined");
    }
    let latest = MIGRATIONS.len() as i32;
    tx.execute_typed(&format!("DELETE FROM {s}.schema_version"), &[])?;
    tx.execute_typed(
        &format!("INSERT INTO {s}.schema_version VALUES ($1)"),
        &[(&latest, Type::INT4)],
    )?;
    tx.commit()?;
    // One line, once it is true: the migrations are one transaction.
    match version {
        0 => log::info!("queue schema {s}: created at version {latest}"),
        _ => log::info!("queue schema {s}: migrated from version {version} to {latest}"),
    }
    Ok(())
}

/// Makes `schema` what the code of `version` (3 or 18) made it, from a
/// dump of it (`tests/fixtures`): an old database to upgrade.
#[cfg(all(test, feature = "cluster"))]
pub(super) fn at_version(client: &mut Client, schema: &Schema, version: u32) {
    let dump = match version {
        3 => include_str!("../../../tests/fixtures/queue-schema-v3.sql"),
        18 => include_str!("../../../tests/fixtures/queue-schema-v18.sql"),
        other => panic!("no dump of version {other}"),
    };
    let mut tx = client.transaction().unwrap();
    tx.batch_execute("SET LOCAL check_function_bodies = off")
        .unwrap();
    tx.batch_execute(&dump.replace("{s}", schema.name()))
        .unwrap();
    tx.commit().unwrap();
}

#[cfg(all(test, feature = "cluster"))]
mod tests {
    use super::*;
    use crate::cluster::TempCluster;

    /// What a schema is made of, its name written `{s}`: every function
    /// (signature, result, body), column, index, constraint and view.
    fn shape(client: &mut Client, schema: &Schema) -> Vec<String> {
        let rows = client
            .query(
                "SELECT 'function ' || p.proname || '(' || pg_get_function_identity_arguments(p.oid)
                        || ') ' || pg_get_function_result(p.oid) || ' '
                        || md5(replace(p.prosrc, $2::text, '{s}'))
                 FROM pg_proc p WHERE p.pronamespace = $1::text::regnamespace
                 UNION ALL
                 SELECT 'column ' || c.table_name || '.' || c.column_name || ' ' || c.data_type
                        || ' ' || c.is_nullable || ' ' || coalesce(c.column_default, '')
                 FROM information_schema.columns c WHERE c.table_schema = $2::text
                 UNION ALL
                 SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = $2::text::text
                 UNION ALL
                 SELECT 'constraint ' || conrelid::regclass || ' ' || pg_get_constraintdef(oid)
                 FROM pg_constraint WHERE connamespace = $1::text::regnamespace
                 UNION ALL
                 SELECT 'view ' || viewname || ' ' || definition FROM pg_views
                 WHERE schemaname = $2::text
                 ORDER BY 1",
                &[&schema.name(), &schema.name()],
            )
            .unwrap();
        rows.iter()
            .map(|r| r.get::<_, String>(0).replace(schema.name(), "{s}"))
            .collect()
    }

    fn count(client: &mut Client, sql: &str) -> i64 {
        client.query_one(sql, &[]).unwrap().get(0)
    }

    /// A fresh schema, one upgraded from version 3 and one from version 18
    /// (each with jobs) end alike, with every function defined once, and
    /// the jobs kept.
    #[test]
    fn fresh_and_upgraded_schemas_end_alike_with_their_jobs() {
        let cluster = TempCluster::start().unwrap();
        let mut client = Client::connect(&cluster.connection_string(), postgres::NoTls).unwrap();
        let fresh = Schema::new("fresh").unwrap();
        migrate(&mut client, &fresh).unwrap();
        let expected = shape(&mut client, &fresh);
        let functions: Vec<&String> = expected
            .iter()
            .filter(|l| l.starts_with("function "))
            .collect();
        assert_eq!(functions.len(), FUNCTIONS.len(), "{functions:#?}");

        let v3 = Schema::new("from_v3").unwrap();
        at_version(&mut client, &v3, 3);
        client
            .batch_execute(
                "INSERT INTO from_v3.jobs (queue, payload, state, finished_at)
                 SELECT 'q', g::text, CASE WHEN g <= 2 THEN 'done' ELSE 'queued' END,
                        CASE WHEN g <= 2 THEN now() END
                 FROM generate_series(1, 5) g",
            )
            .unwrap();
        let v18 = Schema::new("from_v18").unwrap();
        at_version(&mut client, &v18, 18);
        client
            .batch_execute(
                "SELECT from_v18.enqueue('q', 'a');
                 SELECT from_v18.enqueue('q', 'b', p_unique_key => 'k');
                 INSERT INTO from_v18.jobs_finished (id, queue, payload, state, finished_at)
                 VALUES (100, 'q', 'old', 'done', now());
                 INSERT INTO from_v18.schedules (name, cron, queue, payload, next_at)
                 VALUES ('s', '* * * * *', 'q', 'p', now());",
            )
            .unwrap();
        for schema in [&v3, &v18] {
            migrate(&mut client, schema).unwrap();
            assert_eq!(shape(&mut client, schema), expected, "{}", schema.name());
            // Idempotent.
            migrate(&mut client, schema).unwrap();
        }
        assert_eq!(
            count(&mut client, "SELECT count(*) FROM from_v3.jobs_live"),
            3
        );
        assert_eq!(
            count(&mut client, "SELECT count(*) FROM from_v3.jobs_finished"),
            2
        );
        assert_eq!(count(&mut client, "SELECT count(*) FROM from_v18.jobs"), 3);
        assert_eq!(
            count(&mut client, "SELECT count(*) FROM from_v18.schedules"),
            1
        );
        // The upgraded queues work: a claim takes their queued jobs.
        for (schema, queued) in [(&v3, 3), (&v18, 2)] {
            let s = schema.name();
            let claimed = count(
                &mut client,
                &format!("SELECT count(*) FROM {s}.claim(ARRAY['q'], 10, 'h:1/0.0', 60)"),
            );
            assert_eq!(claimed, queued, "{s}");
        }
    }

    /// Only finished_row and queued_again list every job column: a move
    /// between the tables anywhere else maps its rows through them.
    #[test]
    fn only_the_row_functions_list_the_job_columns() {
        let statements = [
            ("store.rs", include_str!("../store.rs")),
            ("admin.rs", include_str!("../admin.rs")),
            ("schedule.rs", include_str!("../schedule.rs")),
        ]
        .into_iter()
        .chain(
            FUNCTIONS
                .iter()
                .copied()
                .filter(|(name, _)| !matches!(*name, "finished_row" | "queued_again")),
        );
        for (name, text) in statements {
            for listed in ["jobs_finished (id", "jobs_live (id"] {
                assert!(!text.contains(listed), "{name} lists the job columns");
            }
        }
    }

    #[test]
    fn every_function_file_defines_its_function_once() {
        for (name, sql) in FUNCTIONS {
            let defined = format!("FUNCTION {{s}}.{name}(");
            assert_eq!(sql.matches(&defined).count(), 1, "{name}");
            assert!(sql.contains("CREATE OR REPLACE FUNCTION"), "{name}");
        }
        for (i, migration) in MIGRATIONS.iter().enumerate() {
            assert!(
                !migration.contains("CREATE FUNCTION")
                    && !migration.contains("CREATE OR REPLACE FUNCTION"),
                "migration {} defines a function: it belongs in functions/",
                i + 1
            );
        }
    }
}
