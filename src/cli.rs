//! The command line, parsed in two stages: clap turns `argv` into raw strings and flags
//! ([`Cli`]), then [`plan`] resolves them into checked objects ([`Plan`]): parsed addresses,
//! the engine configuration, the bench settings. Every grammar or usage error surfaces before
//! anything is opened, with exit status 2.

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgAction, Parser, Subcommand};

use crate::addr::check_pair;
use crate::addr::{Address, parse_duration, parse_size};
use crate::bench::{BenchArgs, BenchPlan};
use crate::engine::flow::FillPolicy;
use crate::engine::rcvbudget::ReceiveBudget;
use crate::engine::{DEFAULT_PIPE_SIZE, EngineConfig, Mode, RelayOptions};
use crate::error::{Error, Result};
use crate::relay::RelayPlan;

const ADDRESS_HELP: &str = "\
Addresses (socat syntax: KEYWORD:param:param,option,option=value; case-insensitive):
  TCP:host:port            TCP4:, TCP6:, TCP-CONNECT:
  TCP-LISTEN:port          TCP-L:, TCP4-LISTEN:, TCP6-LISTEN:
  UNIX-CONNECT:path        UNIX:
  UNIX-LISTEN:path         UNIX-L:   (removes the socket file on exit)
  VSOCK-CONNECT:cid:port   VSOCK:    (cid 2 = host, 1 = local, -1 = any)
  VSOCK-LISTEN:port        VSOCK-L:
  VSOCK-UDS-CONNECT:path:port   hybrid vsock (Firecracker, cloud-hypervisor): CONNECT <port>
  VSOCK-UDS-LISTEN:path:port    guest connections to host port <port>, at <path>_<port>
  STDIO                    -
  ACCEPT-FD:n              a listening socket inherited as descriptor n (systemd), with fork
  UDP:host:port            UDP4:, UDP6:, UDP-CONNECT: (each datagram a message)
  UDP-LISTEN:port          UDP-L:, UDP4-LISTEN:, UDP6-LISTEN: (a session per sender; -T idle, 60 s)
Options: fork, max-children=N, backlog=N, reuseaddr, reuseport, bind=ADDR,
  connect-timeout=S, retry=N, interval=S, rcvbuf=SIZE, sndbuf=SIZE, nodelay,
  keepalive, keepidle=S, keepintvl=S, keepcnt=N, unlink-early,
  allow=ENTRY (listeners; repeat: cid:N[-M], uid:N[-M], an IP network like 10.0.0.0/8),
  socktype=5 (UNIX, VSOCK: SEQPACKET, messages kept whole),
  framing=len16 (a stream opposite a message address: 2-byte length before each message)

Examples:
  vsplice VSOCK-LISTEN:5201,fork TCP:localhost:5201
  vsplice TCP-LISTEN:2222,fork VSOCK-UDS-CONNECT:/run/firecracker.vsock:22
  vsplice bench demo
  vsplice serve --config /etc/vsplice/relays.toml";

/// How long a UDP session lives without a datagram when `-T` is not given.
pub const UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

fn size_arg(s: &str) -> std::result::Result<usize, String> {
    let n = parse_size(s)?;
    if n < 4096 {
        return Err(format!("size \"{s}\" is below the 4K minimum"));
    }
    if n > 1 << 30 {
        return Err(format!("size \"{s}\" is above the 1G maximum"));
    }
    Ok(n)
}

fn duration_arg(s: &str) -> std::result::Result<Duration, String> {
    parse_duration(s)
}

fn idle_timeout_arg(s: &str) -> std::result::Result<Duration, String> {
    crate::addr::check_idle_timeout(s, parse_duration(s)?)
}

fn threads_arg(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=1024).contains(&n) => Ok(n),
        _ => Err(format!("\"{s}\" is not a thread count 1-1024")),
    }
}

/// Stage one: what clap sees.
#[derive(Debug, Parser)]
#[command(
    name = "vsplice",
    version,
    about = "Relay bytes between AF_VSOCK, TCP, UNIX sockets and STDIO with splice(2) on io_uring",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = ADDRESS_HELP
)]
pub struct Cli {
    /// Pipe / buffer size per direction (K, M suffixes) [default: 1M]
    #[arg(short = 'b', value_name = "SIZE", value_parser = size_arg)]
    pub block: Option<usize>,
    /// After one side's EOF, how long the other direction may go on [default: until it ends]
    #[arg(short = 't', value_name = "SECONDS", value_parser = duration_arg)]
    pub half_close_timeout: Option<Duration>,
    /// Close a connection after this long without data
    #[arg(short = 'T', value_name = "SECONDS", value_parser = idle_timeout_arg)]
    pub idle_timeout: Option<Duration>,
    /// On SIGTERM/SIGINT, stop accepting and let open connections finish for this long, then
    /// cut them with resets (a second signal cuts at once; 0: cut at once)
    #[arg(long, value_name = "SECONDS", value_parser = duration_arg, default_value = "30")]
    pub drain_timeout: Duration,
    /// One-way: only first address -> second address
    #[arg(short = 'u', conflicts_with = "reverse_only")]
    pub forward_only: bool,
    /// One-way: only second address -> first address
    #[arg(short = 'U')]
    pub reverse_only: bool,
    /// More diagnostics on stderr (repeat: -d warnings, -dd notices, -ddd info, -dddd debug)
    #[arg(short = 'd', action = ArgAction::Count, global = true)]
    pub debug: u8,
    /// Print byte counts per connection and in total at exit
    #[arg(short = 'S')]
    pub stats: bool,
    /// Worker threads [default: one per core]
    #[arg(long, value_name = "N", value_parser = threads_arg)]
    pub threads: Option<usize>,
    /// Data path [default: auto]
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// Pin each worker thread to a core [default: only when workers leave cores free]
    #[arg(long, conflicts_with = "no_pin")]
    pub pin: bool,
    /// Do not pin worker threads to cores
    #[arg(long)]
    pub no_pin: bool,
    /// Memory the relay's TCP receive queues may hold together; past it, each connection's
    /// TCP sockets get a fixed receive buffer instead of autotuning (0: never)
    /// [default: half of net.ipv4.tcp_mem's pressure threshold]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub receive_budget: Option<usize>,
    /// Tuning: transfers a direction makes before yielding to other connections
    #[arg(long, hide = true, value_name = "N")]
    pub budget: Option<u32>,
    /// Tuning: after a short fill, try the source again (eager), wait for readiness (lazy),
    /// or decide by the fill's size (adaptive, the default)
    #[arg(long, hide = true, value_enum)]
    pub fill: Option<FillPolicy>,
    /// Tuning: a kernel thread polls each worker's submission queue (IORING_SETUP_SQPOLL),
    /// going idle after this many milliseconds without submissions
    #[arg(long, hide = true, value_name = "MS")]
    pub sqpoll: Option<u32>,
    /// The two addresses to relay between
    #[arg(value_name = "ADDRESS", num_args = 2, required = true)]
    pub addresses: Vec<String>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Measure throughput (iperf style) over vsock, TCP or UNIX, with or without a relay
    Bench(BenchArgs),
    /// Run the relays a TOML file declares (service mode); --check only validates it
    Serve(crate::service::ServeArgs),
}

/// Stage two: checked objects, ready to run.
#[derive(Debug)]
pub enum Plan {
    Relay(Box<RelayPlan>),
    Bench(Box<BenchPlan>),
    Serve(Box<crate::service::ServeCommand>),
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
    let [first, second] = <[String; 2]>::try_from(cli.addresses.clone())
        .map_err(|_| Error::Usage("exactly two addresses are needed".into()))?;
    let first = parse_address(&first)?;
    let second = parse_address(&second)?;
    check_pair(&first, &second).map_err(Error::Usage)?;
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
        engine.relay.idle_timeout = Some(UDP_IDLE_TIMEOUT);
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

/// Relay options that take their value as the next word (`-b 64K`), read from the one
/// definition of the flags ([`Cli`]), so a new flag with a value is never missed here.
fn relay_value_options() -> Vec<String> {
    use clap::CommandFactory;
    Cli::command()
        .get_arguments()
        .filter(|a| !a.is_positional() && a.get_action().takes_values())
        .flat_map(|a| {
            let short = a.get_short().map(|c| format!("-{c}"));
            let long = a.get_long().map(|l| format!("--{l}"));
            short.into_iter().chain(long)
        })
        .collect()
}

/// Options written before the `bench` subcommand. `-d` applies everywhere, so
/// `vsplice -d bench ...` becomes `vsplice bench -d ...`; a relay option there
/// (`vsplice -S bench demo`) is an error naming it, where clap would take `bench` for an
/// address. Any other command line is returned as it is.
pub fn options_after_bench(args: Vec<OsString>) -> Result<Vec<OsString>> {
    let value_options = relay_value_options();
    let mut before = Vec::new();
    let mut i = 1;
    while i < args.len() {
        let word = args[i].to_string_lossy();
        if word == "bench" {
            break;
        }
        if !word.starts_with('-') || word == "-" || word == "--" {
            return Ok(args);
        }
        before.push(i);
        if value_options.iter().any(|o| *o == word) && i + 1 < args.len() {
            i += 1;
            before.push(i);
        }
        i += 1;
    }
    if i >= args.len() || before.is_empty() {
        return Ok(args);
    }
    let is_debug = |w: &str| w.len() > 1 && w.starts_with('-') && w[1..].bytes().all(|b| b == b'd');
    if let Some(&j) = before
        .iter()
        .find(|&&j| !is_debug(&args[j].to_string_lossy()))
    {
        return Err(Error::Usage(format!(
            "\"{}\" is an option of the relay, not of `vsplice bench`: write bench options \
             after `bench` (see `vsplice bench --help`)",
            args[j].to_string_lossy()
        )));
    }
    let mut out = vec![args[0].clone(), args[i].clone()];
    out.extend(before.iter().map(|&j| args[j].clone()));
    out.extend(args[i + 1..].iter().cloned());
    Ok(out)
}

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
    }
}

#[cfg(test)]
mod tests {
    /// README's Addresses section (its two tables), up to the global options.
    fn readme_addresses() -> &'static str {
        let readme = include_str!("../README.md");
        let start = readme
            .find("## Addresses")
            .expect("README has an Addresses section");
        let end = start
            + readme[start..]
                .find("### Global options")
                .expect("then Global options");
        &readme[start..end]
    }

    #[test]
    fn every_address_keyword_and_alias_is_in_readme_and_every_type_in_the_help() {
        let readme = readme_addresses();
        for k in crate::addr::KindTag::keywords() {
            assert!(
                readme.contains(&format!("`{k}:")) || readme.contains(&format!("`{k}`")),
                "README's address table lacks keyword {k}"
            );
            let tag = crate::addr::KindTag::from_keyword(k).unwrap();
            assert!(
                ADDRESS_HELP.contains(tag.name()),
                "--help lacks address type {}",
                tag.name()
            );
        }
    }

    #[test]
    fn every_option_name_and_alias_is_in_readme_and_every_option_in_the_help() {
        let readme = readme_addresses();
        for (name, canonical) in crate::addr::option_names() {
            assert!(
                readme.contains(&format!("`{name}`")) || readme.contains(&format!("`{name}=")),
                "README's option table lacks option {name}"
            );
            if canonical {
                assert!(ADDRESS_HELP.contains(name), "--help lacks option {name}");
            }
        }
    }

    #[test]
    fn the_value_taking_relay_flags_are_read_from_the_flag_definitions() {
        let flags = relay_value_options();
        for f in [
            "-b",
            "-t",
            "-T",
            "--threads",
            "--mode",
            "--receive-budget",
            "--drain-timeout",
        ] {
            assert!(flags.iter().any(|x| x == f), "{f} takes a value: {flags:?}");
        }
        assert!(!flags.iter().any(|x| x == "-d" || x == "-S" || x == "--pin"));
    }

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

    fn words(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn debug_flags_before_bench_move_after_it_and_relay_options_there_are_named() {
        assert_eq!(
            options_after_bench(words(&["vsplice", "-d", "bench", "server", "X"])).unwrap(),
            words(&["vsplice", "bench", "-d", "server", "X"])
        );
        assert_eq!(
            options_after_bench(words(&["vsplice", "-dd", "-d", "bench", "demo"])).unwrap(),
            words(&["vsplice", "bench", "-dd", "-d", "demo"])
        );
        let e = options_after_bench(words(&["vsplice", "-S", "bench", "demo"])).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(
            e.to_string()
                .starts_with("\"-S\" is an option of the relay"),
            "{e}"
        );
        let e = options_after_bench(words(&["vsplice", "-b", "64K", "bench", "demo"]));
        assert!(e.unwrap_err().to_string().contains("\"-b\""));
        // Relay command lines pass unchanged, even with an address after the options.
        for line in [
            &["vsplice", "-d", "TCP-L:1", "TCP:h:1"][..],
            &["vsplice", "-b", "bench", "TCP-L:1", "TCP:h:1"][..],
            &["vsplice", "bench", "demo"][..],
            &["vsplice", "-d", "TCP-L:1", "bench"][..],
        ] {
            assert_eq!(options_after_bench(words(line)).unwrap(), words(line));
        }
        // `vsplice -d bench server X` then plans as `bench server X`: an error about "X".
        let args = options_after_bench(words(&["vsplice", "-d", "bench", "server", "X"])).unwrap();
        let e = plan(Cli::try_parse_from(args).unwrap()).unwrap_err();
        assert!(e.to_string().contains("\"X\""), "{e}");
        assert_eq!(e.exit_code(), 2);
    }
}
