//! The crate's layers, as the crate docs list them, checked in the sources:
//! a module uses only modules of lower layers, so there is no import cycle
//! between them. Reads `src/` as text; a `crate::x` path in code (not in a
//! comment) is a use of `x`.

mod source;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

/// Top-level modules by layer, lowest first.
const LAYERS: &[&[&str]] = &[
    &["procfs", "duration", "error", "cluster"],
    &["conn"],
    &["fork"],
    &["pool"],
    &["prefork"],
    &["queue"],
];

/// Where the items re-exported at the crate root live.
const ROOT_ITEMS: &[(&str, &str)] = &[
    ("Pid", "procfs"),
    ("Error", "error"),
    ("APPLICATION_NAME_PREFIX", "conn"),
    ("Canceller", "conn"),
    ("Database", "conn"),
    ("MaxAge", "conn"),
    ("Stats", "conn"),
    ("ThreadStats", "conn"),
    ("application_name", "conn"),
    ("close", "conn"),
    ("close_all", "conn"),
    ("close_old", "conn"),
    ("is_configured", "conn"),
    ("parse_application_name", "conn"),
    ("stats", "conn"),
    ("thread_open_count", "conn"),
    ("with_client", "conn"),
    ("with_client_cancellable", "conn"),
    ("with_client_for", "conn"),
    ("set_role", "conn"),
    ("configure", "fork"),
    ("Fork", "fork"),
    ("ForkError", "fork"),
    ("install_atfork_handlers", "fork"),
    ("ready_to_fork", "fork"),
    ("ShutdownTimeout", "pool"),
    ("TaskError", "pool"),
    ("TaskHandle", "pool"),
    ("ThreadPool", "pool"),
    ("ThreadPoolBuilder", "pool"),
    ("thread", "pool"),
];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// The top-level module a file belongs to (`None`: the crate root or the
/// binary, which may use everything).
fn home(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib" && name != "bin").then(|| name.to_owned())
}

/// The `crate::x` names used in code lines of `text`.
fn uses(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        let code = code.split(" //").next().unwrap_or(code);
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
        // `use crate::{a, b}` lists
        if let Some(i) = code.find("crate::{") {
            let list = &code[i + "crate::{".len()..];
            for name in list.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if !name.is_empty() {
                    found.insert(name.to_owned());
                }
            }
        }
    }
    found
}

#[test]
fn each_module_uses_only_lower_layers() {
    let src = source::src();
    let all = source::rust_files(&src);
    let mut wrong = Vec::new();
    let mut checked = 0;
    for file in &all {
        let Some(module) = home(&src, file) else {
            continue;
        };
        let own = layer(&module).unwrap_or_else(|| {
            panic!("{module} is in no layer: add it to LAYERS and to the crate docs")
        });
        let text = fs::read_to_string(file).unwrap();
        for used in uses(&text) {
            let target = match ROOT_ITEMS.iter().find(|(item, _)| *item == used) {
                Some((_, home)) => (*home).to_owned(),
                None => used.clone(),
            };
            checked += 1;
            if target == module {
                continue;
            }
            match layer(&target) {
                Some(l) if l < own => {}
                Some(_) => wrong.push(format!(
                    "{} ({module}) uses crate::{used} ({target}), not a lower layer",
                    file.display()
                )),
                None => wrong.push(format!(
                    "{} uses crate::{used}, which is in no layer",
                    file.display()
                )),
            }
        }
    }
    assert!(checked > 50, "the scan found only {checked} uses");
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

/// The `pub mod` names declared in `text`, and the modules `pub use`
/// re-exports from (`pub use conn::{...}` names `conn`).
fn public_modules_and_reexports(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut modules = BTreeSet::new();
    let mut reexported = BTreeSet::new();
    for line in text.lines().map(str::trim_start) {
        if let Some(rest) = line.strip_prefix("pub mod ") {
            modules.insert(rest.trim_end_matches(';').trim().to_owned());
        } else if let Some(rest) = line.strip_prefix("pub use ") {
            let path = rest.strip_prefix("self::").unwrap_or(rest);
            if let Some((first, _)) = path.split_once("::") {
                reexported.insert(first.to_owned());
            }
        }
    }
    (modules, reexported)
}

/// One path per public item: a module that is public is not also
/// re-exported from by its parent, so `fork_safe::x::Item` and
/// `fork_safe::Item` never both exist.
#[test]
fn each_public_item_has_one_path() {
    let src = source::src();
    let all = source::rust_files(&src);
    let mut wrong = Vec::new();
    let mut parents = 0;
    for file in all.iter().filter(|f| {
        f.file_name()
            .is_some_and(|n| n == "lib.rs" || n == "mod.rs")
    }) {
        parents += 1;
        let (modules, reexported) =
            public_modules_and_reexports(&fs::read_to_string(file).unwrap());
        for both in modules.intersection(&reexported) {
            wrong.push(format!(
                "{}: `pub mod {both}` and `pub use {both}::...`: two paths to its items",
                file.display()
            ));
        }
    }
    assert!(
        parents > 5,
        "the scan found only {parents} lib.rs/mod.rs files"
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
