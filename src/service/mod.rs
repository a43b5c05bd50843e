//! Service mode (`vsplice serve`): many relays declared in one TOML file, run by one process.
//!
//! The pieces stand apart from the engine so each is tested alone: [`config`] turns the file
//! into a checked [`config::ServePlan`] (raw TOML, then resolved values, like the command
//! line's two stages), [`allow`] decides which peers a listener serves, [`metrics`] keeps the
//! Prometheus counters and serves them over HTTP. This module holds the `serve` subcommand.

pub mod allow;
pub mod config;
pub mod metrics;
mod metrics_http;

use std::path::PathBuf;
use std::process::ExitCode;

use crate::addr::{Address, Kind};
use crate::error::{Error, Result};
use config::ServePlan;

/// `vsplice serve` as clap sees it.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The TOML file that declares the services
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Only check the file: print a summary and exit 0, or the first error and exit 2
    #[arg(long)]
    pub check: bool,
}

/// `vsplice serve`, resolved.
#[derive(Debug)]
pub struct ServeCommand {
    pub plan: ServePlan,
    pub check_only: bool,
}

/// Reads and checks the configuration file (stage two of the command line).
pub fn plan(args: ServeArgs) -> Result<ServeCommand> {
    Ok(ServeCommand {
        plan: ServePlan::load(&args.config)?,
        check_only: args.check,
    })
}

pub fn run(command: ServeCommand) -> Result<ExitCode> {
    if command.check_only {
        print!("{}", command.plan.summary());
        return Ok(ExitCode::SUCCESS);
    }
    Err(Error::Usage(format!(
        "{}: the configuration is valid, but running services is not implemented yet \
         (use --check to validate)",
        command.plan.file.display()
    )))
}

/// Address types the grammar knows but plain relays cannot open yet.
pub fn refuse_unwired(first: &Address) -> Result<()> {
    if let Kind::AcceptFd { .. } = first.kind {
        return Err(Error::Usage(format!(
            "\"{}\": inherited listening sockets (ACCEPT-FD) are not served yet",
            first.text
        )));
    }
    Ok(())
}
