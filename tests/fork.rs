//! The fork guard, and raw forks that bypass it, in real processes, over
//! the Unix socket (the cases live in `common/fork_cases.rs`).

mod common;
#[path = "common/fork_cases.rs"]
mod fork_cases;

fn main() {
    common::main(
        fork_safe::cluster::Builder::new(),
        common::configure_default,
        fork_cases::CASES,
        &[],
    )
}
