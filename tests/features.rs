//! The crate without default features is the connection core, the fork
//! guard and the pool: what the supervisor, the queue, the launcher and
//! the throwaway cluster bring stays out of its dependency tree.

use std::process::Command;

/// Crates only the features bring.
const FEATURES_ONLY: [&str; 10] = [
    "croner",
    "chrono",
    "chrono-tz",
    "httparse",
    "serde_json",
    "fastrand",
    "clap",
    "env_logger",
    "toml_edit",
    "indicatif",
];

/// The normal (not dev, not build) dependencies of the library with
/// `args`, one crate name a line.
fn tree(args: &[&str]) -> Vec<String> {
    let out = Command::new(env!("CARGO"))
        .args(["tree", "--offline", "-e", "normal", "--prefix", "none"])
        .args(["--format", "{p}"])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running cargo tree");
    assert!(
        out.status.success(),
        "cargo tree {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[test]
fn the_core_alone_pulls_in_no_features_crates() {
    let core = tree(&["--no-default-features"]);
    assert!(core.iter().any(|c| c == "postgres"), "{core:?}");
    for name in FEATURES_ONLY {
        assert!(
            !core.iter().any(|c| c == name),
            "{name} is a dependency without default features"
        );
    }
}

#[test]
fn each_feature_brings_its_own() {
    let supervisor = tree(&["--no-default-features", "--features", "supervisor"]);
    assert!(supervisor.iter().any(|c| c == "httparse"));
    assert!(!supervisor.iter().any(|c| c == "croner"));
    let queue = tree(&["--no-default-features", "--features", "queue"]);
    assert!(queue.iter().any(|c| c == "croner"));
    assert!(!queue.iter().any(|c| c == "clap"));
}
