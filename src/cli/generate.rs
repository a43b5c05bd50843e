//! `vsplice generate`: the manual page, the shell completions and the manual's tables (`docs/manual.md`), written to
//! standard output from the one definition of the flags ([`super::flags`]) and the grammar's
//! tables, so a packager (or `cargo deb`) builds them from the binary they ship and help, man
//! page and completions cannot drift apart.

use std::io::Write;
use std::process::ExitCode;

use clap::CommandFactory;

use crate::error::{Error, Result};

use super::flags::{Cli, Generate, Shell};

/// The text `what` asks for.
pub(crate) fn text(what: Generate) -> String {
    match what {
        Generate::Man => super::man::render(),
        Generate::Completions { shell } => completions(shell),
        Generate::ReadmeTables => super::readme::render(),
    }
}

/// The completion script for `shell`.
pub(crate) fn completions(shell: Shell) -> String {
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "vsplice", &mut out);
    String::from_utf8(out).expect("completion scripts are UTF-8")
}

/// Writes the text to standard output.
pub(crate) fn run(what: Generate) -> Result<ExitCode> {
    std::io::stdout()
        .lock()
        .write_all(text(what).as_bytes())
        .map_err(|e| Error::io("writing to standard output", e))?;
    Ok(ExitCode::SUCCESS)
}
