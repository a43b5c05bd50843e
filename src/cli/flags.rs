//! The command line's one definition: every flag with its name, help and value parser side by
//! side (clap's derive), from which `--help`, the man page, the shell completions and the
//! manual's global-options table (`docs/manual.md`) are all generated ([`super::generate`]). A flag is added here and
//! nowhere else; what it means for the run is resolved in [`mod@super::plan`].

use std::time::Duration;

use clap::{ArgAction, Parser, Subcommand, ValueEnum};

use crate::addr::{parse_duration, parse_size};
use crate::bench::BenchArgs;
use crate::engine::FillPolicy;
use crate::engine::Mode;

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
    long_about = "Relay bytes between AF_VSOCK, TCP, UNIX sockets and STDIO with splice(2) on \
                  io_uring. vsplice speaks socat's address syntax, but runs a thread-per-core \
                  io_uring engine that moves data with splice(2) through pipes (zero-copy where \
                  the kernel can), falls back to registered buffers where it cannot, serves \
                  fork listeners without forking, and passes half-close on correctly.",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = super::help::short_help(),
    after_long_help = super::help::long_help()
)]
pub struct Cli {
    /// Pipe (and copy buffer) size per direction, K/M suffixes, 4K to 1G [default: 1M]
    #[arg(short = 'b', value_name = "SIZE", value_parser = size_arg)]
    pub block: Option<usize>,
    /// After one side's EOF, how long the other direction may go on [default: until it ends
    /// too, or -T]
    #[arg(short = 't', value_name = "SECONDS", value_parser = duration_arg)]
    pub half_close_timeout: Option<Duration>,
    /// Close a connection after this long without a byte moved (at least 1 ms); a UDP session
    /// after this long without a datagram [default: none; 60 s when an address is UDP]
    #[arg(short = 'T', value_name = "SECONDS", value_parser = idle_timeout_arg)]
    pub idle_timeout: Option<Duration>,
    /// On SIGTERM/SIGINT, stop accepting and let open connections finish for this long, then
    /// cut them with resets (a second signal cuts at once; 0: cut at once)
    #[arg(long, value_name = "SECONDS", value_parser = duration_arg, default_value = "30")]
    pub drain_timeout: Duration,
    /// One way: only first address -> second address (the other direction is read and dropped)
    #[arg(short = 'u', conflicts_with = "reverse_only")]
    pub forward_only: bool,
    /// One way: only second address -> first address (the other direction is read and dropped)
    #[arg(short = 'U')]
    pub reverse_only: bool,
    /// More diagnostics on stderr (repeat: -d warnings, -dd notices, -ddd info, -dddd debug)
    #[arg(short = 'd', action = ArgAction::Count, global = true)]
    pub debug: u8,
    /// Shape of diagnostic lines: text (socat's) or json (one object a line, with fields)
    #[arg(
        long,
        value_enum,
        value_name = "FORMAT",
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
    /// Print byte counts per connection and in total at exit, on stderr
    #[arg(short = 'S')]
    pub stats: bool,
    /// Worker threads, 1-1024 [default: one per core]
    #[arg(long, value_name = "N", value_parser = threads_arg)]
    pub threads: Option<usize>,
    /// Data path [default: auto: copy from or into vsock, splice between TCP/UNIX]
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
    /// The two addresses to relay between: the first listens (or is STDIO), the second
    /// connects
    #[arg(value_name = "ADDRESS", num_args = 2, required = true)]
    pub addresses: Vec<String>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Measure throughput (iperf style) over vsock, TCP or UNIX, with or without a relay
    #[command(after_long_help = super::help::blocks_help(super::help::BENCH))]
    Bench(BenchArgs),
    /// Run the relays a TOML file declares (service mode); --check only validates it
    #[command(after_long_help = super::help::blocks_help(super::help::SERVICE_MODE))]
    Serve(crate::service::ServeArgs),
    /// Write the manual page, shell completions or docs/manual.md's tables to standard output
    Generate(GenerateArgs),
}

/// `vsplice generate`: the documents derived from these definitions.
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    #[command(subcommand)]
    pub what: Generate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum Generate {
    /// The manual page vsplice(1), in roff (`man -l -` reads it)
    Man,
    /// A completion script for the shell
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
    /// docs/manual.md's generated parts, in Markdown: the address syntax and types, the address
    /// and global options, the exit status and signals (each between markers the file keeps)
    ReadmeTables,
}

/// `--log-format`: how diagnostic lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The shells `vsplice generate completions` writes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}
