//! Stage two of the command line: the raw strings and flags of [`Cli`] resolved into checked
//! objects ([`Plan`]): parsed addresses, the engine configuration, the bench and service
//! settings. Every grammar or usage error surfaces here, before anything is opened, with exit
//! status 2.

use crate::addr::Address;
use crate::addr::check_pair;
use crate::bench::BenchPlan;
use crate::engine::FillPolicy;
use crate::engine::rcvbudget::ReceiveBudget;
use crate::engine::{DEFAULT_PIPE_SIZE, EngineConfig, Mode, RelayOptions};
use crate::error::{Error, Result};
use crate::relay::RelayPlan;

use super::flags::{Cli, Command, Generate};

/// Stage two: checked objects, ready to run.
#[derive(Debug)]
pub enum Plan {
    Relay(Box<RelayPlan>),
    Bench(Box<BenchPlan>),
    Serve(Box<crate::service::ServeCommand>),
    Generate(Generate),
}

fn parse_address(text: &str) -> Result<Address> {
    Address::parse(text).map_err(|source| Error::Address {
        text: text.to_string(),
        source,
    })
}

/// The engine configuration the global options describe.
pub fn engine_config(cli: &Cli) -> EngineConfig {
    let size = cli.block.unwrap_or(DEFAULT_PIPE_SIZE);
    EngineConfig {
        relay: RelayOptions {
            mode: cli.mode.unwrap_or(Mode::Auto),
            pipe_size: size,
            copy_size: size,
            directions: [!cli.reverse_only, !cli.forward_only],
            idle_timeout: cli.idle_timeout,
            linger: cli.half_close_timeout,
            stats: cli.stats,
            fill_policy: cli.fill.unwrap_or(FillPolicy::Adaptive),
            ..RelayOptions::default()
        },
        turn_budget: cli
            .budget
            .unwrap_or(EngineConfig::default().turn_budget)
            .max(1),
        sqpoll_idle_ms: cli.sqpoll,
        ..EngineConfig::default()
    }
}

/// The relay options of an `ACCEPT-FD` relay's one service, from the command line's flags.
fn accept_fd_options(cli: &Cli) -> crate::service::config::ServiceOptions {
    use crate::service::config::{OneWay, ServiceOptions};
    ServiceOptions {
        idle_timeout: cli.idle_timeout,
        linger: cli.half_close_timeout,
        one_way: match (cli.forward_only, cli.reverse_only) {
            (true, _) => Some(OneWay::FirstToSecond),
            (_, true) => Some(OneWay::SecondToFirst),
            _ => None,
        },
        buffer: cli.block,
        mode: cli.mode,
    }
}

/// What `--pin` and `--no-pin` ask for: `None` when neither was given.
fn pin_setting(cli: &Cli) -> Option<bool> {
    (cli.pin || cli.no_pin).then_some(cli.pin)
}

/// Resolves parsed arguments into a plan.
pub fn plan(cli: Cli) -> Result<Plan> {
    if let Some(Command::Bench(args)) = cli.command {
        return Ok(Plan::Bench(Box::new(crate::bench::plan(args)?)));
    }
    if let Some(Command::Serve(args)) = cli.command {
        return Ok(Plan::Serve(Box::new(crate::service::plan(args)?)));
    }
    if let Some(Command::Generate(args)) = cli.command {
        return Ok(Plan::Generate(args.what));
    }
    let [first, second] = <[String; 2]>::try_from(cli.addresses.clone())
        .map_err(|_| Error::Usage("exactly two addresses are needed".into()))?;
    let first = parse_address(&first)?;
    let mut second = parse_address(&second)?;
    check_pair(&first, &second).map_err(Error::Usage)?;
    crate::addr::load_password(&mut second).map_err(Error::Usage)?;
    if let crate::addr::Kind::AcceptFd { .. } = first.kind {
        let serve = crate::service::accept_fd_relay(
            first,
            second,
            accept_fd_options(&cli),
            crate::service::config::GlobalOptions {
                drain_timeout: std::time::Duration::ZERO,
                threads: cli.threads,
                receive_budget: cli.receive_budget,
                pin: pin_setting(&cli),
                defaults: crate::service::config::ServiceOptions::default(),
            },
        )?;
        return Ok(Plan::Serve(Box::new(serve)));
    }
    let mut engine = engine_config(&cli);
    // A UDP session has no end of its own: it ends when idle (socat's -T), by default 60 s.
    if engine.relay.idle_timeout.is_none()
        && (first.kind.tag().is_udp() || second.kind.tag().is_udp())
    {
        engine.relay.idle_timeout = Some(crate::net::udp::UDP_IDLE_TIMEOUT);
    }
    engine.relay.single_connection = !first.options.fork;
    engine.receive_budget = ReceiveBudget::resolve(cli.receive_budget);
    engine.relay.user_rcvbuf = [
        first.options.rcvbuf.is_some(),
        second.options.rcvbuf.is_some(),
    ];
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let threads = cli.threads.unwrap_or(cores);
    engine.pin_workers = crate::engine::pin_policy(pin_setting(&cli), threads, cores);
    Ok(Plan::Relay(Box::new(RelayPlan {
        first,
        second,
        threads,
        engine,
        drain_timeout: cli.drain_timeout,
    })))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;

    use super::*;

    fn plan_of(args: &[&str]) -> Result<Plan> {
        let mut argv = vec!["vsplice"];
        argv.extend_from_slice(args);
        plan(Cli::try_parse_from(argv).map_err(|e| Error::Usage(e.to_string()))?)
    }

    fn usage_error(args: &[&str]) -> String {
        match plan_of(args) {
            Ok(p) => panic!("{args:?} planned as {p:?}"),
            Err(e) => {
                assert_eq!(e.exit_code(), 2, "{e}");
                e.to_string()
            }
        }
    }

    #[test]
    fn receive_budget_defaults_to_the_system_and_yields_to_rcvbuf() {
        let relay = |args: &[&str]| match plan_of(args).unwrap() {
            Plan::Relay(p) => p,
            _ => panic!("relay"),
        };
        let p = relay(&["TCP-LISTEN:1,fork", "TCP:h:2"]);
        assert_eq!(p.engine.receive_budget, ReceiveBudget::from_system());
        assert_eq!(p.engine.relay.user_rcvbuf, [false, false]);
        let p = relay(&[
            "--receive-budget",
            "0",
            "TCP-LISTEN:1,fork",
            "TCP:h:2,rcvbuf=1M",
        ]);
        assert_eq!(p.engine.receive_budget, None);
        assert_eq!(p.engine.relay.user_rcvbuf, [false, true]);
        let p = relay(&[
            "--receive-budget",
            "1G",
            "TCP-LISTEN:1,rcvbuf=64K",
            "TCP:h:2",
        ]);
        assert_eq!(p.engine.receive_budget, Some(ReceiveBudget(1 << 30)));
        assert_eq!(p.engine.relay.user_rcvbuf, [true, false]);
        assert!(
            usage_error(&["--receive-budget", "lots", "TCP-LISTEN:1", "TCP:h:2"]).contains("lots")
        );
    }

    #[test]
    fn global_options_reach_the_engine() {
        let Plan::Relay(p) = plan_of(&[
            "-b",
            "64K",
            "-t",
            "1.5",
            "-T",
            "30",
            "-u",
            "-dd",
            "-S",
            "--threads",
            "3",
            "--mode",
            "copy",
            "TCP-LISTEN:1,fork",
            "TCP:h:2",
        ])
        .unwrap() else {
            panic!("relay")
        };
        assert_eq!(p.engine.relay.pipe_size, 65536);
        assert_eq!(p.engine.relay.linger, Some(Duration::from_millis(1500)));
        assert_eq!(p.engine.relay.idle_timeout, Some(Duration::from_secs(30)));
        assert_eq!(p.engine.relay.directions, [true, false]);
        assert!(p.engine.relay.stats);
        assert_eq!(p.threads, 3);
        assert_eq!(p.engine.relay.mode, Mode::Copy);
        assert!(!p.engine.relay.single_connection);
        let Plan::Relay(p) = plan_of(&["-U", "-", "TCP:h:2"]).unwrap() else {
            panic!()
        };
        assert_eq!(p.engine.relay.directions, [false, true]);
        assert!(p.engine.relay.single_connection);
    }

    #[test]
    fn workers_are_pinned_when_they_leave_cores_free_or_when_asked() {
        use crate::engine::pin_policy;
        assert!(!pin_policy(None, 2, 2));
        assert!(pin_policy(None, 2, 8));
        assert!(pin_policy(Some(true), 2, 2));
        assert!(!pin_policy(Some(false), 2, 8));
        let Plan::Relay(p) = plan_of(&["--threads", "1", "TCP-L:1,fork", "TCP:h:2"]).unwrap()
        else {
            panic!()
        };
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        assert_eq!(p.engine.pin_workers, cores > 1);
        let Plan::Relay(p) = plan_of(&["--pin", "TCP-L:1,fork", "TCP:h:2"]).unwrap() else {
            panic!()
        };
        assert!(p.engine.pin_workers);
    }

    #[test]
    fn address_errors_exit_2_and_name_the_token() {
        assert_eq!(
            usage_error(&["NOPE:1", "TCP:h:1"]),
            "invalid address \"NOPE:1\": unknown address type \"NOPE\""
        );
        assert_eq!(
            usage_error(&["TCP-LISTEN:99999", "TCP:h:1"]),
            "invalid address \"TCP-LISTEN:99999\": port 99999 out of range 0-65535"
        );
        assert_eq!(
            usage_error(&["TCP-LISTEN:1,frobnicate", "TCP:h:1"]),
            "invalid address \"TCP-LISTEN:1,frobnicate\": option \"frobnicate\" is not valid for TCP-LISTEN"
        );
        assert_eq!(
            usage_error(&["TCP-L:1", "VSOCK-CONNECT:5"]),
            "invalid address \"VSOCK-CONNECT:5\": VSOCK-CONNECT needs cid:port"
        );
    }

    #[test]
    fn pair_errors() {
        assert!(
            usage_error(&["TCP:h:1", "TCP-L:2,fork"]).contains("only valid on the first address")
        );
        assert!(usage_error(&["-", "STDIO"]).contains("STDIO can be used only once"));
        assert!(usage_error(&["TCP-L:1,fork", "-"]).contains("STDIO cannot serve more than one"));
        assert!(usage_error(&["TCP-L:1,max-children=3", "TCP:h:1"]).contains("needs \"fork\""));
        assert_eq!(
            usage_error(&["TCP-L:1", "UNIX-L:/x"]),
            "both addresses listen (\"TCP-L:1\" and \"UNIX-L:/x\"): one of them must connect or \
             be STDIO"
        );
    }

    #[test]
    fn global_option_errors_name_the_value() {
        let e = usage_error(&["-b", "12Q", "TCP-L:1", "TCP:h:1"]);
        assert!(e.contains("12Q"), "{e}");
        let e = usage_error(&["-b", "100", "TCP-L:1", "TCP:h:1"]);
        assert!(e.contains("below the 4K minimum"), "{e}");
        let e = usage_error(&["--threads", "0", "TCP-L:1", "TCP:h:1"]);
        assert!(e.contains("not a thread count"), "{e}");
        let e = usage_error(&["-t", "soon", "TCP-L:1", "TCP:h:1"]);
        assert!(e.contains("soon"), "{e}");
        let e = usage_error(&["-u", "-U", "TCP-L:1", "TCP:h:1"]);
        assert!(e.contains("cannot be used with"), "{e}");
        let e = usage_error(&["TCP-L:1"]);
        assert!(e.contains("2 values required"), "{e}");
    }

    #[test]
    fn an_inactivity_timeout_of_zero_is_rejected_naming_the_value() {
        let e = usage_error(&["-T", "0", "TCP-L:1", "TCP:h:1"]);
        assert!(e.contains("'0'") && e.contains("-T"), "{e}");
        assert!(e.contains("\"0\" is less than 1 ms"), "{e}");
        let e = usage_error(&["-T", "0.000", "TCP-L:1", "TCP:h:1"]);
        assert!(e.contains("\"0.000\" is less than 1 ms"), "{e}");
        let e = usage_error(&["-T", "0.0001", "TCP-L:1", "TCP:h:1"]);
        assert!(e.contains("\"0.0001\" is less than 1 ms"), "{e}");
        // -t 0 is defined: after one side's end, the other direction stops at once.
        let Plan::Relay(p) = plan_of(&["-t", "0", "TCP-L:1", "TCP:h:1"]).unwrap() else {
            panic!()
        };
        assert_eq!(p.engine.relay.linger, Some(Duration::ZERO));
    }
}
