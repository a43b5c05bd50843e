//! `vsplice bench`: iperf-style throughput measurement over vsock, TCP and UNIX sockets, with
//! both ends' figures, byte counts checked, optional pattern verification and MSG_ZEROCOPY,
//! write-size sweeps, and a self-contained demo of the relay's cost.
//!
//! [`proto`] is the wire protocol, `stream` the sender and receiver loops, `server` and
//! [`client`] the two ends, `demo` the one-command demonstration, `cpu` the accounting.

pub(crate) mod budget;
pub mod client;
pub(crate) mod cpu;
pub(crate) mod demo;
pub(crate) mod end;
pub(crate) mod hello;
pub(crate) mod iperf3;
pub(crate) mod message;
pub(crate) mod pattern;
pub(crate) mod plot;
pub mod proto;
#[cfg(test)]
mod proto_props;
pub(crate) mod receive;
pub(crate) mod report;
pub(crate) mod rr;
pub(crate) mod send;
pub(crate) mod server;
pub(crate) mod stream;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Subcommand;

use crate::addr::{Address, parse_duration, parse_size};
use crate::engine::Mode;
use crate::error::{Error, Result};
use crate::net::open::Listener;
use crate::sys::signal::{StopSignals, ignore_sigpipe};
pub use client::DEFAULT_STALL_TIMEOUT;
use client::run_test;
use demo::{DemoPlan, Transport};
use proto::{Limit, Params, TestDirection, Workload};
use report::{Output, TestReport, print_sweep};

/// How long a bench client waits for each connection when the address does not say.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

fn size_arg(s: &str) -> std::result::Result<usize, String> {
    match parse_size(s)? {
        0 => Err(format!("size \"{s}\" must be more than 0")),
        n => Ok(n),
    }
}

/// A write size within the protocol's bound (clap names the option in its message).
fn len_arg(s: &str) -> std::result::Result<usize, String> {
    match size_arg(s)? {
        n if n <= proto::MAX_LEN => Ok(n),
        _ => Err(format!(
            "size \"{s}\" is more than the largest write size, 16M"
        )),
    }
}

fn bytes_arg(s: &str) -> std::result::Result<usize, String> {
    match size_arg(s)? {
        n if n as u64 <= proto::MAX_BYTES => Ok(n),
        _ => Err(format!("size \"{s}\" is more than 1P")),
    }
}

/// A test length: more than 0, at most a day (as iperf3).
fn time_arg(s: &str) -> std::result::Result<Duration, String> {
    let t = parse_duration(s)?;
    if t.as_millis() == 0 || t.as_millis() > u128::from(proto::MAX_TIME_MS) {
        return Err(format!(
            "\"{s}\" is not a test length from 0.001 to 86400 seconds"
        ));
    }
    Ok(t)
}

/// Seconds between progress lines: 0 (none) or 0.1-60, as iperf3.
fn interval_arg(s: &str) -> std::result::Result<Duration, String> {
    let t = parse_duration(s)?;
    if !t.is_zero() && !(0.1..=60.0).contains(&t.as_secs_f64()) {
        return Err(format!(
            "\"{s}\" is not an interval: 0 (none) or 0.1 to 60 seconds"
        ));
    }
    Ok(t)
}

fn streams_arg(s: &str) -> std::result::Result<u32, String> {
    match s.parse::<u32>() {
        Ok(n) if (1..=proto::MAX_STREAMS).contains(&n) => Ok(n),
        _ => Err(format!("\"{s}\" is not a stream count 1-20000")),
    }
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Serve bench tests on a listening address until stopped
    /// (VSOCK-LISTEN:port, TCP-LISTEN:port, UNIX-LISTEN:path, VSOCK-UDS-LISTEN:path:port)
    Server(ServerArgs),
    /// Run a test against a bench server
    /// (VSOCK-CONNECT:cid:port, TCP:host:port, UNIX-CONNECT:path, VSOCK-UDS-CONNECT:path:port)
    Client(ClientArgs),
    /// Measure on this machine, without setup: straight to a bench server, and through a
    /// vsplice relay (and socat, when installed), side by side
    Demo(DemoArgs),
}

#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// Where to listen
    pub address: String,
    /// Tests at once; a client past them is refused with a message saying so
    #[arg(long, value_name = "N", default_value = "4", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_sessions: u32,
    /// Data connections of all tests at once (each takes a thread, two for --bidir)
    #[arg(long, value_name = "N", default_value = "1024", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_streams: u64,
    /// Buffer bytes all tests at once may make the server hold (streams x write size)
    #[arg(long, value_name = "SIZE", default_value = "2G", value_parser = size_arg)]
    pub max_buffered: usize,
    /// Listen for SOCK_SEQPACKET tests (UNIX-LISTEN, VSOCK-LISTEN; the same as the address
    /// option socktype=seqpacket)
    #[arg(long)]
    pub seqpacket: bool,
    /// Read a PROXY protocol header (v1 or v2) before the hello on every connection, as from
    /// a relay with `send-proxy`; report the client it declares. A connection without a valid
    /// header within 5 s is refused with a message saying so
    #[arg(long)]
    pub accept_proxy: bool,
}

#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// The bench server to connect to
    pub address: String,
    /// Seconds to send for [default: 10]
    #[arg(long, value_name = "SECONDS", value_parser = time_arg, conflicts_with = "bytes")]
    pub time: Option<Duration>,
    /// Bytes to send in total (K, M, G suffixes) instead of --time
    #[arg(long, value_name = "SIZE", value_parser = bytes_arg)]
    pub bytes: Option<usize>,
    /// Parallel streams
    #[arg(long, default_value = "1", value_parser = streams_arg)]
    pub streams: u32,
    /// Bytes per write and read, or each way per transaction (at most 16M) [default: 128K,
    /// 1 with --rr or --crr]
    #[arg(long, value_name = "SIZE", value_parser = len_arg)]
    pub len: Option<usize>,
    /// Request/response transactions back to back on each stream: transactions per second
    /// and latency percentiles instead of throughput
    #[arg(long, conflicts_with_all = ["reverse", "bidir", "zerocopy", "sweep", "verify", "crr"])]
    pub rr: bool,
    /// Like --rr with a new connection per transaction (connection setup included)
    #[arg(long, conflicts_with_all = ["reverse", "bidir", "zerocopy", "sweep", "verify"])]
    pub crr: bool,
    /// Set the vsock buffer (SO_VM_SOCKETS_BUFFER_SIZE and _MAX) of every vsock data socket at
    /// both ends, 4K-256M; the sizes read back are reported (the default is 256K)
    #[arg(long, value_name = "SIZE", value_parser = size_arg)]
    pub vsock_buffer: Option<usize>,
    /// Draw the run as an SVG picture: throughput per interval per stream and their sum,
    /// Gbit/s by write size for --sweep, the latency spectrum (p50 to p99.999) for --rr/--crr
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<std::path::PathBuf>,
    /// The server sends, the client receives
    #[arg(long, conflicts_with = "bidir")]
    pub reverse: bool,
    /// Both ends send at once on every stream
    #[arg(long)]
    pub bidir: bool,
    /// Seconds between progress lines: 0.1 to 60, or 0 for none
    #[arg(long, value_name = "SECONDS", default_value = "1", value_parser = interval_arg)]
    pub interval: Duration,
    /// Print one JSON document instead of text; --json=iperf3 prints it in the shape of
    /// `iperf3 -J`
    #[arg(long, value_enum, value_name = "STYLE", num_args = 0..=1, require_equals = true,
          default_missing_value = "vsplice")]
    pub json: Option<JsonStyle>,
    /// Send with MSG_ZEROCOPY (TCP; vsock from Linux 6.7)
    #[arg(long)]
    pub zerocopy: bool,
    /// Run once per write size and print one table, e.g. --sweep 4K,64K,1M
    #[arg(long, value_name = "SIZES", value_delimiter = ',', value_parser = len_arg)]
    pub sweep: Vec<usize>,
    /// Fill the data with a known pattern and check every byte on receipt
    #[arg(long)]
    pub verify: bool,
    /// End the test with an error once no byte moved for this long (a server that stopped
    /// reading or sending)
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = time_arg)]
    pub stall_timeout: Duration,
    /// SOCK_SEQPACKET (UNIX-CONNECT, VSOCK-CONNECT; the same as socktype=seqpacket): every
    /// write is one message of --len bytes (at most 256K), messages per second are reported
    /// beside throughput, and one merged or split message fails the test
    #[arg(long, conflicts_with_all = ["zerocopy", "rr", "crr"])]
    pub seqpacket: bool,
}

/// The shape of `--json` output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum JsonStyle {
    /// vsplice's own document (both ends per stream and direction, intervals, CPU).
    Vsplice,
    /// The shape of `iperf3 -J`, for tools written for iperf3.
    Iperf3,
}

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Seconds per measured run
    #[arg(long, value_name = "SECONDS", default_value = "3", value_parser = time_arg)]
    pub time: Duration,
    /// Bytes per write and read, or each way per transaction (at most 16M) [default: 128K,
    /// 1 with --rr or --crr]
    #[arg(long, value_name = "SIZE", value_parser = len_arg)]
    pub len: Option<usize>,
    /// Request/response latency instead of throughput: each path's transactions per second
    /// and percentiles
    #[arg(long, conflicts_with = "crr")]
    pub rr: bool,
    /// Like --rr with a new connection per transaction
    #[arg(long)]
    pub crr: bool,
    /// Parallel streams
    #[arg(long, default_value = "1", value_parser = streams_arg)]
    pub streams: u32,
    /// Runs per path, interleaved; the median is shown
    #[arg(long, default_value = "1")]
    pub rounds: u32,
    /// Socket family
    #[arg(long, value_enum, default_value = "tcp")]
    pub transport: Transport,
    /// The relay's data path
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// Draw the paths side by side as SVG: Gbit/s and relay CPU-s/GiB bars, or a latency
    /// spectrum per path with --rr/--crr
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<std::path::PathBuf>,
    /// Leave socat out even if it is installed
    #[arg(long)]
    pub no_socat: bool,
    /// Print one JSON document instead of the table
    #[arg(long)]
    pub json: bool,
}

/// A checked client run.
#[derive(Debug)]
pub struct ClientPlan {
    pub address: Arc<Address>,
    pub params: Params,
    pub interval: Option<Duration>,
    pub json: Option<JsonStyle>,
    /// Write sizes to sweep; empty for a single run.
    pub sweep: Vec<usize>,
    /// Where to draw the run (`--plot`).
    pub plot: Option<std::path::PathBuf>,
    /// `--stall-timeout`.
    pub stall: Duration,
}

#[derive(Debug)]
pub enum BenchPlan {
    /// The listening address, the limits, `--accept-proxy`.
    Server(Address, budget::Limits, bool),
    Client(ClientPlan),
    Demo(DemoPlan),
}

fn parse_address(text: &str) -> Result<Address> {
    let address = Address::parse(text).map_err(|source| Error::Address {
        text: text.to_string(),
        source,
    })?;
    // The bench client does not write a PROXY header (a relay in front of the server does);
    // the server reads one with `--accept-proxy`, a flag of its own.
    let proxy = [
        (address.options.send_proxy.is_some(), "send-proxy", ""),
        (
            address.options.accept_proxy,
            "accept-proxy",
            " (bench server --accept-proxy reads the header)",
        ),
    ];
    if let Some((_, option, hint)) = proxy.iter().find(|(set, ..)| *set) {
        return Err(Error::Usage(format!(
            "option \"{option}\" is not supported by the bench, in \"{text}\"{hint}"
        )));
    }
    Ok(address)
}

/// Applies `--seqpacket` to a bench address: only UNIX and vsock (not hybrid) addresses have
/// SOCK_SEQPACKET. Returns whether the address is SEQPACKET now (the flag, or its own
/// `socktype=seqpacket`).
fn seqpacket(address: &mut Address, flag: bool) -> Result<bool> {
    use crate::addr::{KindTag, SocketType};
    if flag {
        let has_seqpacket = matches!(
            address.kind.tag(),
            KindTag::UnixConnect
                | KindTag::UnixListen
                | KindTag::VsockConnect
                | KindTag::VsockListen
        );
        if !has_seqpacket {
            return Err(Error::Usage(format!(
                "--seqpacket: \"{}\" has no SOCK_SEQPACKET (UNIX and VSOCK addresses have)",
                address.text
            )));
        }
        if address.options.socktype == Some(SocketType::Stream) {
            return Err(Error::Usage(format!(
                "--seqpacket: \"{}\" asks for a stream (socktype=1)",
                address.text
            )));
        }
        address.options.socktype = Some(SocketType::Seqpacket);
    }
    Ok(address.options.socktype == Some(SocketType::Seqpacket))
}

/// Stage two for `vsplice bench`.
pub fn plan(args: BenchArgs) -> Result<BenchPlan> {
    match args.command {
        BenchCommand::Server(a) => {
            let mut address = parse_address(&a.address)?;
            if seqpacket(&mut address, a.seqpacket)? && a.accept_proxy {
                // A PROXY header is a stream's prefix; a message relay writes none.
                return Err(Error::Usage(format!(
                    "--accept-proxy: \"{}\" is SOCK_SEQPACKET, which carries no PROXY header",
                    address.text
                )));
            }
            if !address.is_listener() {
                return Err(Error::Usage(format!(
                    "bench server needs a listening address (VSOCK-LISTEN, TCP-LISTEN, UNIX-LISTEN, VSOCK-UDS-LISTEN), not \"{}\"",
                    address.text
                )));
            }
            let limits = budget::Limits {
                max_sessions: a.max_sessions,
                max_streams: a.max_streams,
                max_buffered: a.max_buffered as u64,
            };
            Ok(BenchPlan::Server(address, limits, a.accept_proxy))
        }
        BenchCommand::Client(c) => {
            let mut address = parse_address(&c.address)?;
            // A server that never answers must give an error, not a hang in TCP's SYN backoff.
            address
                .options
                .connect_timeout
                .get_or_insert(DEFAULT_CONNECT_TIMEOUT);
            if !address.is_connector() {
                return Err(Error::Usage(format!(
                    "bench client needs a connect address (VSOCK-CONNECT, TCP, UNIX-CONNECT, VSOCK-UDS-CONNECT), not \"{}\"",
                    address.text
                )));
            }
            let limit = match (c.bytes, c.time) {
                (Some(b), _) => Limit::Bytes { total: b as u64 },
                (None, t) => Limit::Time {
                    ms: t.unwrap_or(Duration::from_secs(10)).as_millis() as u64,
                },
            };
            let direction = match (c.reverse, c.bidir) {
                (true, _) => TestDirection::Reverse,
                (_, true) => TestDirection::Bidir,
                _ => TestDirection::Forward,
            };
            let workload = match (c.rr, c.crr) {
                (true, _) => Workload::Rr,
                (_, true) => Workload::Crr,
                _ => Workload::Stream,
            };
            let messages = seqpacket(&mut address, c.seqpacket)?;
            let len = c
                .len
                .unwrap_or(if workload.is_stream() { 128 << 10 } else { 1 });
            let params = Params {
                streams: c.streams,
                len,
                direction,
                limit,
                verify: c.verify,
                zerocopy: c.zerocopy,
                workload,
                vsock_buffer: c.vsock_buffer.map(|b| b as u64),
                messages,
            };
            for len in std::iter::once(len).chain(c.sweep.iter().copied()) {
                Params {
                    len,
                    ..params.clone()
                }
                .check()
                .map_err(|bad| Error::Usage(format!("--{bad}")))?;
            }
            if c.json == Some(JsonStyle::Iperf3) && !c.sweep.is_empty() {
                return Err(Error::Usage(
                    "--json=iperf3 describes one test: not with --sweep".into(),
                ));
            }
            Ok(BenchPlan::Client(ClientPlan {
                address: Arc::new(address),
                params,
                interval: Some(c.interval).filter(|i| !i.is_zero()),
                json: c.json,
                plot: c.plot,
                sweep: c.sweep,
                stall: c.stall_timeout,
            }))
        }
        BenchCommand::Demo(d) => {
            if d.rounds == 0 {
                return Err(Error::Usage("--rounds must be at least 1".into()));
            }
            let workload = match (d.rr, d.crr) {
                (true, _) => Workload::Rr,
                (_, true) => Workload::Crr,
                _ => Workload::Stream,
            };
            Ok(BenchPlan::Demo(DemoPlan {
                transport: d.transport,
                seconds: d.time.as_secs_f64(),
                len: d
                    .len
                    .unwrap_or(if workload.is_stream() { 128 << 10 } else { 1 }),
                workload,
                streams: d.streams,
                rounds: d.rounds,
                mode: d.mode,
                socat: !d.no_socat,
                json: d.json,
                plot: d.plot,
            }))
        }
    }
}

pub fn run(plan: BenchPlan) -> Result<ExitCode> {
    ignore_sigpipe().map_err(|e| Error::io("ignoring SIGPIPE", e))?;
    match plan {
        BenchPlan::Server(address, limits, accept_proxy) => {
            let signals =
                StopSignals::install().map_err(|e| Error::io("installing signal handling", e))?;
            let _ = crate::sys::limits::raise_nofile(1 << 16);
            let listener = Listener::open(&address)?;
            println!(
                "vsplice bench server listening on {}",
                listener.local_addr()
            );
            server::serve(listener, &signals, limits, accept_proxy)
                .map_err(|e| Error::io("bench server", e))?;
            Ok(ExitCode::SUCCESS)
        }
        BenchPlan::Client(c) => run_client(c),
        BenchPlan::Demo(d) => {
            demo::run(&d)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn run_client(c: ClientPlan) -> Result<ExitCode> {
    let _ = crate::sys::limits::raise_nofile(u64::from(c.params.streams) * 2 + 64);
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let output = if c.json.is_some() {
        Output::Json
    } else if c.sweep.is_empty() {
        Output::Text
    } else {
        Output::Quiet
    };
    let reports: Vec<TestReport> = if c.sweep.is_empty() {
        vec![run_test(
            &c.address, &c.params, c.interval, output, c.stall,
        )?]
    } else {
        let mut reports = Vec::new();
        for &len in &c.sweep {
            let params = Params {
                len,
                ..c.params.clone()
            };
            reports.push(run_test(&c.address, &params, None, Output::Quiet, c.stall)?);
        }
        reports
    };
    if c.json == Some(JsonStyle::Iperf3) {
        let doc = serde_json::to_string_pretty(&iperf3::document(&reports[0], started_unix));
        println!("{}", doc.map_err(|e| Error::Bench(e.to_string()))?);
    } else if c.json.is_some() {
        let doc = if c.sweep.is_empty() {
            serde_json::to_string_pretty(&reports[0])
        } else {
            serde_json::to_string_pretty(&serde_json::json!({ "sweep": reports }))
        };
        println!("{}", doc.map_err(|e| Error::Bench(e.to_string()))?);
    } else if !c.sweep.is_empty() {
        print_sweep(&reports);
    }
    if let Some(path) = &c.plot {
        if c.sweep.is_empty() {
            plot::run(path, &reports[0])?;
        } else {
            plot::sweep(path, &reports)?;
        }
    }
    let errors: Vec<&String> = reports.iter().flat_map(|r| r.errors.iter()).collect();
    if errors.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        for e in errors {
            eprintln!("vsplice bench: {e}");
        }
        Ok(ExitCode::from(1))
    }
}
