//! Service mode (`vsplice serve`): many relays declared in one TOML file, run by one process.
//!
//! The pieces stand apart from the engine so each is tested alone: [`config`] turns the file
//! into a checked [`config::ServePlan`] (raw TOML, then resolved values, like the command
//! line's two stages), [`crate::addr::allow`] decides which peers a listener serves, [`metrics`] keeps the
//! Prometheus counters and serves them over HTTP, [`observer`] feeds them from the engine.
//! [`run`](mod@run) runs every service on one engine (`acceptor`: a service's listening socket
//! as an accept group of the engine; `server`: what a running `serve` holds; `reload`: SIGHUP). This module holds the `serve` subcommand.

mod acceptor;
pub mod config;
pub mod metrics;
pub mod observer;
mod reload;
pub mod run;
pub mod server;

use std::path::PathBuf;
use std::process::ExitCode;

use crate::addr::Address;
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
    run::run(&command.plan)
}

/// A command-line relay whose first address is `ACCEPT-FD:n,fork` runs as a one-service
/// plan here: the plain relay's listener path opens its own sockets only.
pub fn accept_fd_relay(
    first: Address,
    second: Address,
    options: config::ServiceOptions,
    global: config::GlobalOptions,
) -> Result<ServeCommand> {
    if !first.options.fork {
        return Err(Error::Usage(format!(
            "\"{}\": ACCEPT-FD serves connections with \"fork\" only (for now)",
            first.text
        )));
    }
    if !(second.is_connector() || second.is_proxy()) {
        return Err(Error::Usage(format!(
            "\"{}\": ACCEPT-FD relays to a connecting address",
            second.text
        )));
    }
    let plan = ServePlan {
        file: PathBuf::from("(command line)"),
        global,
        metrics: None,
        services: vec![config::ServicePlan {
            name: "relay".into(),
            listen: first,
            connect: second,
            options,
        }],
    };
    Ok(ServeCommand {
        plan,
        check_only: false,
    })
}
