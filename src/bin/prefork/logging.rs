//! The log's two formats: text for people (env_logger's own), and JSON
//! lines for log shippers (`--log-format json`): one object per line with
//! the time, level, target, message, the process's pid and role, and the
//! fields a line carries (`child`, `pid`, `reason`, `job`, ...).

use std::io::Write;

use clap::ValueEnum;
use serde_json::{Map, Value};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// `[time LEVEL target] message`, for people.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Installs the logger: `RUST_LOG` filters (default `info`), in `format`.
pub fn init(format: LogFormat) {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if format == LogFormat::Json {
        builder.format(|buf, record| {
            let line = json_line(record);
            writeln!(buf, "{line}")
        });
    }
    // The master's lines clear a live progress line while they print (see
    // `progress`).
    let logger = builder.build();
    log::set_max_level(logger.filter());
    let _ = log::set_boxed_logger(Box::new(AroundProgress(logger)));
}

/// env_logger's logger, printing around a live progress line.
struct AroundProgress(env_logger::Logger);

impl log::Log for AroundProgress {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.0.matches(record) {
            crate::progress::suspended(|| self.0.log(record));
        }
    }

    fn flush(&self) {
        self.0.flush();
    }
}

/// One record as a JSON object.
fn json_line(record: &log::Record<'_>) -> Value {
    let mut line = Map::new();
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    line.insert("time".into(), now.into());
    line.insert("level".into(), record.level().as_str().into());
    line.insert("target".into(), record.target().into());
    line.insert("message".into(), record.args().to_string().into());
    line.insert("process".into(), std::process::id().into());
    line.insert("role".into(), fork_safe::role().into());
    let mut fields = Fields(Map::new());
    let _ = record.key_values().visit(&mut fields);
    for (key, value) in fields.0 {
        // A field never hides one of the line's own.
        line.entry(key).or_insert(value);
    }
    Value::Object(line)
}

struct Fields(Map<String, Value>);

impl<'kvs> log::kv::VisitSource<'kvs> for Fields {
    fn visit_pair(
        &mut self,
        key: log::kv::Key<'kvs>,
        value: log::kv::Value<'kvs>,
    ) -> Result<(), log::kv::Error> {
        let value = if let Some(n) = value.to_i64() {
            Value::from(n)
        } else if let Some(n) = value.to_u64() {
            Value::from(n)
        } else if let Some(b) = value.to_bool() {
            Value::from(b)
        } else {
            Value::from(value.to_string())
        };
        self.0.insert(key.as_str().to_owned(), value);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_becomes_one_object_with_its_fields() {
        let line = json_line(
            &log::Record::builder()
                .args(format_args!("child 2 (pid 7) died"))
                .level(log::Level::Warn)
                .target("fork_safe::prefork::fleet")
                .key_values(&[("child", 2), ("pid", 7)])
                .build(),
        );
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["message"], "child 2 (pid 7) died");
        assert_eq!(line["child"], 2);
        assert_eq!(line["pid"], 7);
        assert!(line["time"].as_str().unwrap().ends_with('Z'));
        let text = line.to_string();
        assert!(!text.contains('\n'));
    }
}
