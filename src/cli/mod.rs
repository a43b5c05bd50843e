//! The command line. `flags` is the one definition of every flag (clap's derive: name, help
//! and parser side by side); `argv` fixes up the words before clap reads them; `plan`
//! resolves what clap parsed into checked objects, so every usage error (exit status 2) comes
//! before anything is opened; `help` holds the text beyond the flags (address types and
//! options read from the grammar's tables, examples, exit status, signals), which `man`,
//! `readme` and `--help` render; `generate` is `vsplice generate man|completions|readme-tables`.

use std::process::ExitCode;

use clap::Parser;

use crate::error::Result;

pub(crate) mod argv;
pub(crate) mod flags;
pub(crate) mod generate;
pub(crate) mod help;
pub(crate) mod man;
pub(crate) mod plan;
pub(crate) mod readme;

pub use argv::options_after_bench;
pub use flags::{Cli, Command};
pub use plan::{Plan, engine_config, plan};

/// `main` for the binary: parse, plan, run, map errors to exit codes.
pub fn main() -> ExitCode {
    // Before anything opens a descriptor: later, 3, 4, ... may be vsplice's own.
    crate::sys::systemd::adopt_listen_fds();
    let args = match options_after_bench(std::env::args_os().collect()) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("vsplice: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    let cli = Cli::parse_from(args);
    crate::log::set_verbosity(cli.debug);
    crate::log::set_format(match cli.log_format {
        flags::LogFormat::Text => crate::log::Format::Text,
        flags::LogFormat::Json => crate::log::Format::Json,
    });
    match plan(cli).and_then(run) {
        Ok(code) => {
            // The last lines sit in the log queue; a stuck standard error holds the exit
            // for a bounded time only.
            crate::log::flush(crate::log::FLUSH_TIMEOUT);
            code
        }
        Err(e) => {
            crate::log::final_message(&format!("vsplice: {e}"));
            ExitCode::from(e.exit_code())
        }
    }
}

fn run(plan: Plan) -> Result<ExitCode> {
    match plan {
        Plan::Relay(p) => crate::relay::run(*p),
        Plan::Bench(b) => crate::bench::run(*b),
        Plan::Serve(s) => crate::service::run(*s),
        Plan::Generate(what) => generate::run(what),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// Whether `word` stands in `text` on its own: not inside a longer keyword or option name.
    fn names(text: &str, word: &str) -> bool {
        let part = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        text.match_indices(word).any(|(at, _)| {
            let before = text[..at].chars().next_back();
            let after = text[at + word.len()..].chars().next();
            !before.is_some_and(part) && !after.is_some_and(part)
        })
    }

    /// The man page's text without roff's escapes for fonts, hyphens and apostrophes.
    fn man_text() -> String {
        let mut text = man::render().replace("\\-", "-").replace("\\*(Aq", "'");
        for font in ["\\fB", "\\fR", "\\fI", "\\fP"] {
            text = text.replace(font, " ");
        }
        text
    }

    /// The manual's Addresses section (`docs/manual.md`), up to the global options.
    fn readme_addresses() -> &'static str {
        let readme = include_str!("../../docs/manual.md");
        let start = readme
            .find("## Addresses")
            .expect("docs/manual.md has an Addresses section");
        let end = start
            + readme[start..]
                .find("### Global options")
                .expect("then Global options");
        &readme[start..end]
    }

    #[test]
    fn every_keyword_and_option_of_the_grammar_is_in_the_help_the_man_page_and_the_manual() {
        let short = Cli::command().render_help().to_string();
        let long = Cli::command().render_long_help().to_string();
        let man = man_text();
        let readme = readme_addresses();
        let keywords = crate::addr::KindTag::keywords();
        let options = crate::addr::option_names().map(|(name, _)| name);
        let mut checked = 0;
        for word in keywords.chain(options) {
            for (doc, text) in [
                ("-h", short.as_str()),
                ("--help", long.as_str()),
                ("the man page", man.as_str()),
                ("docs/manual.md's Addresses section", readme),
            ] {
                assert!(names(text, word), "{doc} lacks {word}");
            }
            checked += 1;
        }
        assert!(checked > 40, "{checked} names");
        // The check can fail: a word the grammar does not have is not found.
        assert!(!names(&long, "TCP-LISTEN-NOT") && !names(&man, "fork-bomb"));
        assert!(!names("TCP-LISTEN:1", "TCP") && names("(TCP-CONNECT:)", "TCP-CONNECT"));
    }
}
