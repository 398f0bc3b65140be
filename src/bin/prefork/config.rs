//! `--config FILE`: a fleet's settings in a TOML file kept under version
//! control, and `prefork config`, which prints the settings in effect and
//! where each came from.
//!
//! ```toml
//! database-url = "postgres://app@db.internal/app"
//! procs = 4
//! threads = 8
//! timeout = "5m"
//! health-checks = true
//! worker = ["python3", "jobs/worker.py"]
//! ```
//!
//! # Keys
//!
//! Every option of the fleet (and `--log-format`, the database's), under
//! its flag's name without the dashes in front; the handler as `sql = "..."`,
//! `exec = [PROGRAM, ARGS...]` or `worker = [PROGRAM, ARGS...]`. A flag's
//! value is `true` or `false`; any other is a string or a number, checked
//! by the flag's own parser. Paths are taken as given (relative to the
//! working directory, as on the command line).
//!
//! # Precedence
//!
//! flag > environment variable > file > default, the same for every
//! option, decided in one place: the file's values become the options'
//! defaults before clap parses the command line, and clap takes a flag,
//! else its environment variable, else the default. A handler on the
//! command line (`--sql`, `--exec`, `--worker`) replaces the file's.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::ops::Range;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};
use toml_edit::{ImDocument, Item, Value};

/// The file's keys that are not options: the handlers that take the rest
/// of a command line.
const PROGRAMS: [&str; 2] = ["exec", "worker"];

/// Options that are not settings: never read from a file nor reported.
const NOT_SETTINGS: [&str; 3] = ["help", "version", "config"];

/// Options whose values are connection strings: their password is masked
/// in the report.
const URLS: [&str; 2] = ["database_url", "listen_url"];

/// A config file, read and checked.
#[derive(Debug)]
pub struct File {
    path: PathBuf,
    settings: Vec<Setting>,
    /// `exec = [...]` or `worker = [...]`.
    program: Option<ProgramHandler>,
}

/// One option's value from the file.
#[derive(Debug)]
struct Setting {
    /// The clap id of the option.
    id: String,
    value: String,
    line: usize,
}

/// A handler that takes a program: its flag (`--exec`, `--worker`), the
/// program and its arguments.
#[derive(Debug, Clone)]
pub struct ProgramHandler {
    pub flag: &'static str,
    pub argv: Vec<String>,
    /// Where it was set, for the report: `None` on the command line.
    line: Option<usize>,
}

impl ProgramHandler {
    /// A handler given on the command line.
    pub fn from_flag(flag: &'static str, argv: Vec<String>) -> ProgramHandler {
        ProgramHandler {
            flag,
            argv,
            line: None,
        }
    }
}

/// The most a configuration file may hold: far more than any has options
/// for, and a bound on what a wrong path (`/dev/zero`) can make it read.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// `path`'s text, refused past [`MAX_CONFIG_BYTES`] without reading on.
fn read_limited(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(format!(
            "larger than {} KiB; is it a configuration file?",
            MAX_CONFIG_BYTES / 1024
        ));
    }
    String::from_utf8(bytes).map_err(|_| "not valid UTF-8".to_owned())
}

impl File {
    /// Reads and checks `path` against `command`'s options.
    ///
    /// # Errors
    ///
    /// One line naming the file (and the line and key, if the problem is
    /// in one): it cannot be read, it is not TOML, a key is unknown or a
    /// table, or a value has the wrong type or does not parse.
    pub fn load(path: &Path, command: &Command) -> Result<File, String> {
        let name = path.display();
        let text = read_limited(path).map_err(|e| format!("--config {name}: {e}"))?;
        let doc = ImDocument::parse(text.as_str()).map_err(|e| {
            let line = e.span().map_or(1, |s| line_of(&text, s));
            let message = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
            format!("{name}:{line}: {message}")
        })?;
        let mut file = File {
            path: path.to_owned(),
            settings: Vec::new(),
            program: None,
        };
        let table = doc.as_table();
        for (key, item) in table.iter() {
            let line = table
                .key(key)
                .and_then(toml_edit::Key::span)
                .or_else(|| item.span())
                .map_or(1, |s| line_of(&text, s));
            let at = |what: String| format!("{name}:{line}: {key}: {what}");
            let value = match item {
                Item::Value(value) => value,
                Item::None => continue,
                Item::Table(_) | Item::ArrayOfTables(_) => {
                    return Err(at(
                        "a table, but the file is flat (`key = value` lines, no [sections])".into(),
                    ));
                }
            };
            if let Some(flag) = PROGRAMS.iter().find(|p| **p == key) {
                if let Some(other) = &file.program {
                    return Err(at(format!(
                        "give one handler: {} is set too",
                        &other.flag[2..]
                    )));
                }
                let argv = program_argv(value).map_err(at)?;
                file.program = Some(ProgramHandler {
                    flag: if *flag == "exec" {
                        "--exec"
                    } else {
                        "--worker"
                    },
                    argv,
                    line: Some(line),
                });
                continue;
            }
            let Some(arg) = setting(command, key) else {
                let hint = setting(command, &key.replace('_', "-"))
                    .map(|_| format!(" (the flag's name is {:?})", key.replace('_', "-")))
                    .unwrap_or_default();
                return Err(format!(
                    "{name}:{line}: unknown key {key:?}{hint}; the keys are the fleet's flags without their dashes"
                ));
            };
            let flag = matches!(arg.get_action(), ArgAction::SetTrue);
            let text = match (flag, value) {
                (true, Value::Boolean(b)) => b.value().to_string(),
                (true, other) => {
                    return Err(at(format!("expected true or false, found {}", kind(other))));
                }
                (false, Value::String(s)) => s.value().clone(),
                (false, Value::Integer(i)) => i.value().to_string(),
                (false, Value::Float(f)) => f.value().to_string(),
                (false, other) => {
                    return Err(at(format!(
                        "expected a string or a number, found {}",
                        kind(other)
                    )));
                }
            };
            if !flag {
                check(arg, &text).map_err(at)?;
            }
            file.settings.push(Setting {
                id: arg.get_id().to_string(),
                value: text,
                line,
            });
        }
        if file.program.is_some() && file.settings.iter().any(|s| s.id == "sql") {
            return Err(format!(
                "{name}: give one handler: sql, exec or worker, not two"
            ));
        }
        Ok(file)
    }

    /// `command` with the file's values as its options' defaults: the
    /// top level's, and those of the subcommands that repeat the fleet's
    /// options (`config`).
    pub fn apply(&self, command: Command) -> Command {
        let mut command = command;
        for s in &self.settings {
            let value = s.value.clone();
            if has_arg(&command, &s.id) {
                let value = value.clone();
                command = command.mut_arg(&s.id, move |a| a.default_value(value));
            }
            let subs: Vec<String> = command
                .get_subcommands()
                .filter(|sub| has_arg(sub, &s.id))
                .map(|sub| sub.get_name().to_owned())
                .collect();
            for sub in subs {
                let value = value.clone();
                let id = s.id.clone();
                command = command
                    .mut_subcommand(sub, move |c| c.mut_arg(id, move |a| a.default_value(value)));
            }
        }
        command
    }

    /// The file's handler that takes a program, if it has one.
    pub fn program(&self) -> Option<ProgramHandler> {
        self.program.clone()
    }

    fn line_of(&self, id: &str) -> Option<usize> {
        self.settings.iter().find(|s| s.id == id).map(|s| s.line)
    }
}

/// The file named by `--config` or `PREFORK_CONFIG` in a first parse.
pub fn path(matches: &ArgMatches) -> Option<PathBuf> {
    let mut level = Some(matches);
    let mut found = None;
    while let Some(m) = level {
        if let Ok(Some(p)) = m.try_get_one::<PathBuf>("config") {
            found = Some(p.clone());
        }
        level = m.subcommand().map(|(_, sub)| sub);
    }
    found
}

/// The settings in effect for a fleet run with `matches` (the `config`
/// subcommand's), as a TOML file with where each came from: flag,
/// environment, file or default. Passwords in URLs are masked.
pub fn report(
    command: &Command,
    matches: &ArgMatches,
    file: Option<&File>,
    program: Option<&ProgramHandler>,
    database_fallback: Option<&str>,
) -> String {
    let mut lines: Vec<(String, String)> = Vec::new();
    for arg in command.get_arguments() {
        let id = arg.get_id().as_str();
        let Some(long) = arg.get_long() else {
            continue;
        };
        if NOT_SETTINGS.contains(&id) || PROGRAMS.contains(&id) {
            continue;
        }
        let values: Vec<String> = matches
            .try_get_raw(id)
            .ok()
            .flatten()
            .map(|raw| raw.map(|v| v.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let Some(value) = values.first() else {
            let why = match (id, database_fallback) {
                ("database_url", Some(_)) => "not set: libpq's PG* variables are used",
                ("database_url", None) => "not set: a fleet starts a throwaway cluster",
                _ => "not set",
            };
            lines.push((format!("# {long}"), why.to_owned()));
            continue;
        };
        let from_default = matches!(matches.value_source(id), Some(ValueSource::DefaultValue));
        if let Some(p) = program.filter(|p| id == "sql" && p.line.is_none() && from_default) {
            lines.push((
                format!("# {long}"),
                format!("replaced by {} on the command line", p.flag),
            ));
            continue;
        }
        let value = if URLS.contains(&id) {
            mask_password(value)
        } else {
            value.clone()
        };
        let flag = matches!(arg.get_action(), ArgAction::SetTrue);
        let shown = if flag || value.parse::<i64>().is_ok() {
            value
        } else {
            toml_string(&value)
        };
        let source = match matches.value_source(id) {
            Some(ValueSource::CommandLine) => "flag".to_owned(),
            Some(ValueSource::EnvVariable) => match arg.get_env() {
                Some(var) => format!("environment {}", var.to_string_lossy()),
                None => "environment".to_owned(),
            },
            Some(ValueSource::DefaultValue) => match file.and_then(|f| f.line_of(id)) {
                Some(line) => format!(
                    "file {}:{line}",
                    file.map_or(Path::new(""), |f| &f.path).display()
                ),
                None => "default".to_owned(),
            },
            _ => "default".to_owned(),
        };
        lines.push((format!("{long} = {shown}"), source));
    }
    match program {
        Some(p) => {
            let argv: Vec<String> = p.argv.iter().map(|a| toml_string(a)).collect();
            let source = match (p.line, file) {
                (Some(line), Some(f)) => format!("file {}:{line}", f.path.display()),
                _ => "flag".to_owned(),
            };
            lines.push((format!("{} = [{}]", &p.flag[2..], argv.join(", ")), source));
        }
        None => {
            if matches.try_get_raw("sql").ok().flatten().is_none() {
                lines.push((
                    "# handler".to_owned(),
                    "not set: give sql, exec or worker".to_owned(),
                ));
            }
        }
    }
    let width = lines
        .iter()
        .map(|(l, _)| l.chars().count())
        .filter(|w| *w <= 60)
        .max()
        .unwrap_or(0);
    let mut out = match file {
        Some(f) => format!(
            "# prefork: the settings in effect (flag > environment > file {} > default)\n",
            f.path.display()
        ),
        None => "# prefork: the settings in effect (flag > environment > default; no --config)\n"
            .to_owned(),
    };
    for (line, source) in lines {
        if line.starts_with('#') {
            let _ = writeln!(out, "{line}: {source}");
        } else {
            let _ = writeln!(out, "{line:width$}  # {source}");
        }
    }
    out
}

/// `url` with its password replaced by `****`: in a URL's user info, or a
/// key=value string's `password`.
pub fn mask_password(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        if let Some((userinfo, host)) = authority.rsplit_once('@') {
            if let Some((user, _)) = userinfo.split_once(':') {
                return format!("{scheme}://{user}:****@{host}{tail}");
            }
        }
        // A password in the query string (`?password=...`).
        return mask_pairs(url, '&');
    }
    mask_pairs(url, ' ')
}

/// `password=...` among `sep`-separated pairs, masked (a quoted value,
/// spaces and all, included).
fn mask_pairs(text: &str, sep: char) -> String {
    let Some(at) = text.find("password") else {
        return text.to_owned();
    };
    let after = text[at + "password".len()..].trim_start();
    let Some(value) = after.strip_prefix('=') else {
        return text.to_owned();
    };
    let value = value.trim_start();
    let start = text.len() - value.len();
    let end = if let Some(quoted) = value.strip_prefix('\'') {
        let mut escaped = false;
        let close = quoted.char_indices().find(|&(_, c)| {
            let close = c == '\'' && !escaped;
            escaped = c == '\\' && !escaped;
            close
        });
        close.map_or(text.len(), |(i, _)| start + 1 + i + 1)
    } else {
        value
            .find([sep, '&', ' '])
            .map_or(text.len(), |i| start + i)
    };
    format!("{}****{}", &text[..start], &text[end..])
}

/// The option of `command` a file's `key` sets, if it is a setting.
fn setting<'c>(command: &'c Command, key: &str) -> Option<&'c Arg> {
    command
        .get_arguments()
        .find(|a| a.get_long() == Some(key) && !NOT_SETTINGS.contains(&a.get_id().as_str()))
}

/// Parses `value` as `arg`'s on a command line of its own would be: the
/// flag's own parser and its messages.
fn check(arg: &Arg, value: &str) -> Result<(), String> {
    let alone = arg.clone().global(false).env(None).default_value(None);
    let long = format!("--{}", arg.get_long().unwrap_or_default());
    Command::new("prefork")
        .no_binary_name(true)
        .arg(alone)
        .try_get_matches_from([OsStr::new(&long), OsStr::new(value)])
        .map(|_| ())
        .map_err(|e| clap_reason(&e))
}

fn has_arg(command: &Command, id: &str) -> bool {
    command.get_arguments().any(|a| a.get_id() == id)
}

/// A program handler's value: a non-empty array of strings.
fn program_argv(value: &Value) -> Result<Vec<String>, String> {
    let Value::Array(array) = value else {
        return Err(format!(
            "expected an array of strings, [PROGRAM, ARGS...], found {}",
            kind(value)
        ));
    };
    let argv: Option<Vec<String>> = array
        .iter()
        .map(|v| v.as_str().map(str::to_owned))
        .collect();
    match argv {
        Some(argv) if !argv.is_empty() => Ok(argv),
        Some(_) => Err("the array is empty: give [PROGRAM, ARGS...]".into()),
        None => Err("every element must be a string".into()),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::InlineTable(_) => "a table",
    }
}

/// The 1-based line where `span` starts.
fn line_of(text: &str, span: Range<usize>) -> usize {
    let start = span.start.min(text.len());
    text.as_bytes()[..start]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// What clap found wrong with a value, without its "error: " and tips.
fn clap_reason(e: &clap::Error) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_owned()
}

/// `s` as a TOML basic string (JSON's escapes are TOML's).
fn toml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            mask_password("postgres://app:s3cr%40t@db:5432/app?sslmode=require"),
            "postgres://app:****@db:5432/app?sslmode=require"
        );
        assert_eq!(
            mask_password("postgres://app@db/app"),
            "postgres://app@db/app"
        );
        assert_eq!(
            mask_password("postgres://db/app?user=a&password=x&sslmode=require"),
            "postgres://db/app?user=a&password=****&sslmode=require"
        );
        assert_eq!(
            mask_password("host=db password=hunter2 dbname=app"),
            "host=db password=**** dbname=app"
        );
        assert_eq!(
            mask_password("host=db password = 'a b\\' c' dbname=app"),
            "host=db password = **** dbname=app"
        );
    }

    #[test]
    fn lines_are_counted_from_one() {
        assert_eq!(line_of("a = 1\nb = 2\n", 0..1), 1);
        assert_eq!(line_of("a = 1\nb = 2\n", 6..7), 2);
    }
}
