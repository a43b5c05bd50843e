//! Service mode (`vsplice serve`): many relays declared in one TOML file, run by one process.
//!
//! The pieces stand apart from the engine so each is tested alone: `config` turns the file
//! into a checked `config::ServePlan` (raw TOML, then resolved values, like the command
//! line's two stages), `crate::addr::allow` decides which peers a listener serves, [`metrics`] keeps the
//! Prometheus counters and serves them over HTTP, `observer` feeds them from the engine.
//! `run` runs every service on one engine (`acceptor`: a service's listening socket
//! as an accept group of the engine; `server`: what a running `serve` holds; `reload`: SIGHUP;
//! `upgrade`: SIGUSR2, the listening sockets handed to a new binary; `sessions`: a
//! `UDP-LISTEN` service's sessions). This module holds the `serve` subcommand.

mod acceptor;
pub(crate) mod config;
pub mod metrics;
pub(crate) mod observer;
mod reload;
pub(crate) mod run;
pub(crate) mod server;
mod sessions;
pub(crate) mod upgrade;

use std::path::PathBuf;
use std::process::ExitCode;

use crate::addr::Address;
use crate::error::{Error, Result};
use config::ServePlan;

/// `vsplice serve` as clap sees it.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The TOML file that declares the services
    #[arg(long, value_name = "FILE", required_unless_present = "upgrade")]
    pub config: Option<PathBuf>,
    /// Only check the file: print a summary and exit 0, or the first error and exit 2
    #[arg(long, conflicts_with = "upgrade")]
    pub check: bool,
    /// Write the process id here once serving (a binary upgrade's new process writes its own)
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// Upgrade the running `serve` named by --pid-file to the binary now at its path
    /// (SIGUSR2), and wait until the new process serves
    #[arg(long, requires = "pid_file", conflicts_with = "config")]
    pub upgrade: bool,
}

/// `vsplice serve`, resolved.
#[derive(Debug)]
pub enum ServeCommand {
    /// Serve the plan (or only print its summary).
    Run {
        plan: Box<ServePlan>,
        check_only: bool,
        pid_file: Option<PathBuf>,
    },
    /// Ask the process named by the pid file to upgrade itself.
    Upgrade { pid_file: PathBuf },
}

/// Reads and checks the configuration file (stage two of the command line).
pub fn plan(args: ServeArgs) -> Result<ServeCommand> {
    if let (true, Some(pid_file)) = (args.upgrade, &args.pid_file) {
        return Ok(ServeCommand::Upgrade {
            pid_file: pid_file.clone(),
        });
    }
    let config = args
        .config
        .ok_or_else(|| Error::Usage("serve needs --config FILE".into()))?;
    Ok(ServeCommand::Run {
        plan: Box::new(ServePlan::load(&config)?),
        check_only: args.check,
        pid_file: args.pid_file,
    })
}

pub fn run(command: ServeCommand) -> Result<ExitCode> {
    match command {
        ServeCommand::Run {
            plan,
            check_only: true,
            ..
        } => {
            print!("{}", plan.summary());
            Ok(ExitCode::SUCCESS)
        }
        ServeCommand::Run { plan, pid_file, .. } => run::run(&plan, pid_file.as_deref()),
        ServeCommand::Upgrade { pid_file } => upgrade::request(&pid_file),
    }
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
    Ok(ServeCommand::Run {
        plan: Box::new(plan),
        check_only: false,
        pid_file: None,
    })
}
