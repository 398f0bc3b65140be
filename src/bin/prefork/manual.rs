//! What the command line says about itself beyond `--help`: shell
//! completion scripts and a man page, both generated from the clap
//! definitions at run time, so they never drift from the options.

use std::io::Write;

use clap::{Args, Command};
use clap_complete::Shell;

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish, elvish or powershell.
    pub shell: Shell,
}

/// Prints the completion script of `shell` for `command`.
///
/// # Errors
///
/// Standard output could not be written.
pub fn completions(mut command: Command, shell: Shell) -> std::io::Result<()> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut command, "prefork", &mut out);
    std::io::stdout().lock().write_all(&out)
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// A subcommand's page (prefork-enqueue(1), ...) instead of prefork(1).
    pub subcommand: Option<String>,
}

/// Prints the man page of `command` (prefork(1), whose SUBCOMMANDS section
/// names the others), or of its subcommand `sub` (prefork-SUB(1)).
///
/// # Errors
///
/// No such subcommand (as a message), or standard output could not be
/// written.
pub fn man(command: Command, sub: Option<&str>) -> Result<(), String> {
    let command = command.name("prefork");
    let page = match sub {
        None => command,
        Some(name) => {
            let Some(sub) = command
                .get_subcommands()
                .find(|c| c.get_name() == name && name != "help")
            else {
                let names: Vec<&str> = command
                    .get_subcommands()
                    .map(Command::get_name)
                    .filter(|n| *n != "help")
                    .collect();
                return Err(format!(
                    "no subcommand {name:?}; the pages are prefork and prefork-{}",
                    names.join(", prefork-")
                ));
            };
            let full = format!("prefork-{name}");
            sub.clone()
                .name(full)
                .bin_name(format!("prefork {name}"))
                .version(env!("CARGO_PKG_VERSION"))
        }
    };
    let mut out = Vec::new();
    clap_mangen::Man::new(page)
        .render(&mut out)
        .and_then(|()| std::io::stdout().lock().write_all(&out))
        .map_err(|e| format!("writing the man page: {e}"))
}
