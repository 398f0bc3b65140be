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
    render(page)
        .and_then(|out| std::io::stdout().lock().write_all(&out))
        .map_err(|e| format!("writing the man page: {e}"))
}

/// clap_mangen's sections, with `--help`'s closing examples as an
/// EXAMPLES section of their own whose lines stay lines (as plain EXTRA
/// text, roff would run them together into one paragraph).
fn render(page: Command) -> std::io::Result<Vec<u8>> {
    let examples = page.get_after_help().map(ToString::to_string);
    let man = clap_mangen::Man::new(page.clone());
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    if page.get_arguments().next().is_some() {
        man.render_options_section(&mut out)?;
    }
    if page.has_subcommands() {
        man.render_subcommands_section(&mut out)?;
    }
    if let Some(text) = examples {
        let body = text.trim_start_matches("Examples:").trim_matches('\n');
        writeln!(out, ".SH EXAMPLES\n.nf")?;
        for line in body.lines() {
            // Roff: a backslash is escaped, and a line starting with a
            // dot or a quote would be a request.
            let line = line.trim_start().replace('\\', "\\e").replace('-', "\\-");
            writeln!(out, "\\&{line}")?;
        }
        writeln!(out, ".fi")?;
    }
    if page.get_version().is_some() {
        man.render_version_section(&mut out)?;
    }
    Ok(out)
}
