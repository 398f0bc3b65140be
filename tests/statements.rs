//! Every statement the library sends is unnamed, so it works behind
//! PgBouncer in transaction mode: a string given to `query`, `query_one`,
//! `query_opt`, `execute` or `prepare` makes the driver prepare a named
//! statement, which another server connection may not have. The library
//! uses `query_typed*`/`execute_typed` (and `batch_execute` for scripts
//! without parameters). Reads `src/` as text, code only (no comments, no
//! test modules).

mod source;

use std::fs;

/// Calls that prepare a named statement when given a string.
const NAMED: [&str; 5] = [
    ".query(",
    ".query_one(",
    ".query_opt(",
    ".execute(",
    ".prepare(",
];

#[test]
fn every_statement_is_unnamed() {
    let src = source::src();
    let all = source::rust_files(&src);
    let mut named = Vec::new();
    let mut typed = 0;
    for file in &all {
        let code = source::without_tests(&fs::read_to_string(file).unwrap());
        for (n, line) in code.lines().enumerate() {
            typed += line.matches("_typed").count();
            if NAMED.iter().any(|call| line.contains(call)) {
                named.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(typed > 30, "the scan found only {typed} typed statements");
    assert!(
        named.is_empty(),
        "named statements (use query_typed/execute_typed):\n{}",
        named.join("\n")
    );
}
