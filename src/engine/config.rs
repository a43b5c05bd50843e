//! How the engine relays: the data path ([`Mode`]), what is global to the engine
//! ([`EngineConfig`]: threads' rings, turn budget, receive budget, pinning) and what each relay
//! carries with its connections ([`RelayOptions`]).

use std::sync::Arc;
use std::time::Duration;

use super::lane::flow;
use super::observer::ConnObserver;
use super::rcvbudget;

/// How bytes move between the two sockets of a direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Per direction, from what its source can do (the default): splice where the source has
    /// a real `splice_read` (TCP, UNIX, pipes), the copy path where it has none or the
    /// destination is vsock (vsock: splice from it copies one page per call on new kernels;
    /// see docs/architecture.md, Engine).
    Auto,
    /// Non-blocking splice(2) through a pipe, called inline once io_uring reports readiness.
    Splice,
    /// IORING_OP_SPLICE through a pipe, submitted once io_uring reports readiness.
    UringSplice,
    /// io_uring read/write through a registered buffer (one copy in, one copy out).
    Copy,
    /// Multishot receive into a ring of provided buffers, then io_uring writes: receiving and
    /// sending overlap, no io-wq thread is involved (one copy in, one copy out).
    Recv,
    /// As `recv`, but filled buffers go out with SEND_ZC from the ring's memory registered as
    /// a fixed buffer; where the socket cannot (UNIX, vsock before 6.7), plain writes.
    RecvZc,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Splice => "splice",
            Mode::UringSplice => "uring-splice",
            Mode::Copy => "copy",
            Mode::Recv => "recv",
            Mode::RecvZc => "recv-zc",
        }
    }
}

/// Everything a worker needs to know about how to relay: what is global to the engine, and
/// the relay options of jobs submitted without their own.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The options of jobs submitted without their own (a relay command's one relay).
    pub relay: RelayOptions,
    /// Transfers one direction may make before yielding to other connections.
    pub turn_budget: u32,
    /// Empty pipes a worker keeps for reuse.
    pub max_idle_pipes: usize,
    /// Submission queue entries per ring.
    pub ring_entries: u32,
    /// Let a kernel thread poll each ring's submission queue, idling after this many ms
    /// (IORING_SETUP_SQPOLL); `None`: submit with io_uring_enter.
    pub sqpoll_idle_ms: Option<u32>,
    /// Pin worker threads to cores.
    pub pin_workers: bool,
    /// Memory the relay's TCP receive queues may hold together; past it, connections get
    /// fixed receive buffers (see `rcvbudget`). `None`: autotuning always.
    pub receive_budget: Option<rcvbudget::ReceiveBudget>,
}

/// How one relay's connections are served. Every connection carries an `Arc` of its
/// relay's options, so one engine can serve relays with different options; what is global
/// to the engine (threads, ring size, turn budget, receive budget, pinning) stays in
/// [`EngineConfig`]. A relay's `pipe_size` sizes its own splice pipes (a worker's pool keeps
/// idle pipes by the size they were asked for), copy buffers and buffer rings.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    pub mode: Mode,
    /// Requested pipe capacity (`-b`).
    pub pipe_size: usize,
    /// Copy-path buffer size (`-b`).
    pub copy_size: usize,
    /// Which directions run: [first->second, second->first] (`-u` / `-U`).
    pub directions: [bool; 2],
    /// Close a connection after this long without a byte moved (`-T`).
    pub idle_timeout: Option<Duration>,
    /// After one direction ends, how long the other may go on (`-t`).
    pub linger: Option<Duration>,
    /// Print per-connection byte counts (`-S`).
    pub stats: bool,
    /// What a direction does after a short fill.
    pub fill_policy: flow::FillPolicy,
    /// Whether the user set `rcvbuf` on [first, second] address: such sockets keep it.
    pub user_rcvbuf: [bool; 2],
    /// The relay serves one connection: its failure is an error the user must see.
    pub single_connection: bool,
    /// Told of each connection's bytes, dial and close as they happen (service metrics).
    pub observer: Option<Arc<dyn ConnObserver>>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            relay: RelayOptions::default(),
            turn_budget: 16,
            max_idle_pipes: 16,
            ring_entries: 1024,
            sqpoll_idle_ms: None,
            pin_workers: true,
            receive_budget: None,
        }
    }
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions {
            mode: Mode::Splice,
            pipe_size: DEFAULT_PIPE_SIZE,
            copy_size: DEFAULT_PIPE_SIZE,
            directions: [true, true],
            idle_timeout: None,
            linger: None,
            stats: false,
            fill_policy: flow::FillPolicy::Adaptive,
            user_rcvbuf: [false, false],
            single_connection: false,
            observer: None,
        }
    }
}

/// Default pipe and buffer size when `-b` is not given: the largest an unprivileged user may
/// ask for by default (fs.pipe-max-size). Fewer, larger splices per byte measured better than
/// 256 KiB and 64 KiB (docs/performance.md). A pipe holds page references, not copies: its own
/// cost is a 256-slot ring (about 10 KiB).
pub(crate) const DEFAULT_PIPE_SIZE: usize = 1024 * 1024;

/// Whether workers are pinned: `pin` when the user said (`--pin`/`--no-pin`, the config's
/// `pin`), else only when the workers leave cores free. Pinning pays on cores the relay has
/// to itself; when the workers occupy every core, the relay shares each of them with
/// whatever else runs, and a pinned worker cannot be moved off a contested core (measured:
/// docs/architecture.md, Pinning).
pub(crate) fn pin_policy(pin: Option<bool>, threads: usize, cores: usize) -> bool {
    pin.unwrap_or(threads < cores)
}
