//! The relay engine: N worker threads, each pinned to a core and owning one io_uring, that
//! accept connections themselves ([`accept`]: an ACCEPT on every worker's ring, on the
//! listeners given by [`Engine::listen`]) or serve those handed to them ([`Engine::submit`]).
//!
//! A connection stays on the worker that accepted it, or is handed over once, through a
//! crossbeam channel plus an eventfd the worker's ring polls; it never migrates. Inside a
//! worker every connection is a [`conn::Conn`] in a [`conn::Phase`], with two directions,
//! each a pure state machine ([`flow::Flow`], or [`recv::RecvFlow`] on the buffer-ring
//! paths) driven by one of the data paths ([`Mode`], one file each under `lane/`):
//! non-blocking splice(2) after readiness, io_uring SPLICE after readiness, io_uring reads
//! and writes through a registered buffer (the fallback where splice cannot work), or
//! multishot receive into a provided-buffer ring followed by writes or SEND_ZC. Readiness
//! is always waited for with io_uring POLL_ADD, so an idle connection costs no kernel
//! thread. [`rcvbudget`] bounds the memory the relay's TCP receive queues hold when many
//! connections are busy.
//!
//! Map: [`accept`] (listeners the workers accept on, `max-children` slots), [`ring`] (the
//! io_uring, submission, wait, reap), [`registry`] (what is registered with it, as owned
//! tokens), [`conn`] (a connection and its phases), `lane/` (the data paths), `timers`,
//! `park` and `budget` (the worker's two policies), `stats` (close logging and counters),
//! `worker` (the loop that ties them together).

pub mod accept;
mod budget;
pub mod conn;
mod direction;
pub mod lane;
mod park;
pub mod rcvbudget;
mod registry;
mod ring;
mod stats;
pub use stats::ConnObserver;
#[cfg(test)]
mod testing;
mod timers;
pub mod token;
mod worker;

pub use lane::{flow, recv};

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::addr::Address;
use crate::net::endpoint::Endpoint;
use crate::sys::eventfd::EventFd;

/// How bytes move between the two sockets of a direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Per direction, from what its source can do (the default): splice where the source has
    /// a real `splice_read` (TCP, UNIX, pipes), the buffer ring (`recv`) where it has none
    /// (vsock: splice from it copies one page per call on new kernels; see README, Engine).
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

/// Everything a worker needs to know about how to relay.
#[derive(Debug, Clone)]
pub struct EngineConfig {
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
    /// Transfers one direction may make before yielding to other connections.
    pub budget: u32,
    /// What a direction does after a short fill.
    pub fill_policy: flow::FillPolicy,
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
    /// fixed receive buffers (see [`rcvbudget`]). `None`: autotuning always.
    pub receive_budget: Option<rcvbudget::ReceiveBudget>,
    /// Whether the user set `rcvbuf` on [first, second] address: such sockets keep it.
    pub user_rcvbuf: [bool; 2],
    /// The relay serves one connection: its failure is an error the user must see, not a
    /// warning that needs `-d`.
    pub single_connection: bool,
}

impl EngineConfig {
    /// The per-relay part of this configuration.
    pub fn relay_options(&self) -> RelayOptions {
        RelayOptions {
            mode: self.mode,
            pipe_size: self.pipe_size,
            copy_size: self.copy_size,
            directions: self.directions,
            idle_timeout: self.idle_timeout,
            linger: self.linger,
            stats: self.stats,
            fill_policy: self.fill_policy,
            user_rcvbuf: self.user_rcvbuf,
            single_connection: self.single_connection,
            observer: None,
        }
    }
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
            mode: Mode::Splice,
            pipe_size: DEFAULT_PIPE_SIZE,
            copy_size: DEFAULT_PIPE_SIZE,
            directions: [true, true],
            idle_timeout: None,
            linger: None,
            stats: false,
            budget: 16,
            fill_policy: flow::FillPolicy::Adaptive,
            max_idle_pipes: 16,
            ring_entries: 1024,
            sqpoll_idle_ms: None,
            pin_workers: true,
            receive_budget: None,
            user_rcvbuf: [false, false],
            single_connection: false,
        }
    }
}

/// Default pipe and buffer size when `-b` is not given: the largest an unprivileged user may
/// ask for by default (fs.pipe-max-size). Fewer, larger splices per byte measured better than
/// 256 KiB and 64 KiB (README, Performance). A pipe holds page references, not copies: its own
/// cost is a 256-slot ring (about 10 KiB).
pub const DEFAULT_PIPE_SIZE: usize = 1024 * 1024;

/// The second end of a new connection: already open, or to be dialed by the worker.
#[derive(Debug)]
pub enum Second {
    Ready(Endpoint),
    Dial(Arc<Address>),
}

/// A connection handed to a worker.
#[derive(Debug)]
pub struct Job {
    pub first: Endpoint,
    pub second: Second,
}

#[derive(Debug)]
enum Message {
    Relay(Job, Arc<RelayOptions>),
    /// Accept on this group's listener.
    Listen(Arc<accept::AcceptGroup>),
    /// Stop accepting on this group's listener (and detach from it).
    Unlisten(Arc<accept::AcceptGroup>),
    /// Close, with resets, the connections relaying with these options (a service removed
    /// by a reload, once its drain time is over).
    Cut(Arc<RelayOptions>),
    Stop,
}

/// Counters shared by all workers and the acceptor.
#[derive(Debug)]
pub struct Shared {
    /// Connections handed to workers and not yet closed.
    pub live: AtomicUsize,
    /// Connections that ended well / badly.
    pub served: AtomicU64,
    pub failed: AtomicU64,
    /// Bytes delivered [first->second, second->first].
    pub bytes: [AtomicU64; 2],
    /// Numbers connections for logs.
    pub next_id: AtomicU64,
    /// Notified when a connection closes, if `wake_on_close` is set.
    pub closed: EventFd,
    /// Whether the acceptor waits for closes (`max-children`, or a single connection);
    /// otherwise closes do not wake it.
    pub wake_on_close: std::sync::atomic::AtomicBool,
    /// Connections whose sockets are parked in a fixed-file table (no descriptors).
    pub parked: AtomicUsize,
    /// Connections that moved data lately, as the workers last counted them (the receive
    /// budget's divisor).
    pub busy: AtomicUsize,
}

impl Shared {
    fn new() -> io::Result<Shared> {
        Ok(Shared {
            live: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            bytes: [AtomicU64::new(0), AtomicU64::new(0)],
            next_id: AtomicU64::new(1),
            closed: EventFd::new()?,
            wake_on_close: std::sync::atomic::AtomicBool::new(true),
            parked: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
        })
    }
}

impl Shared {
    /// Tells the acceptor a connection closed, when it waits for that.
    pub fn notify_closed(&self) {
        if self.wake_on_close.load(Ordering::Relaxed) {
            self.closed.notify();
        }
    }
}

struct WorkerHandle {
    jobs: Sender<Message>,
    wake: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
    /// Jobs sent since the last wake-up.
    unwoken: bool,
}

/// The running workers.
pub struct Engine {
    workers: Vec<WorkerHandle>,
    next: usize,
    shared: Arc<Shared>,
    /// The options of jobs submitted without their own (from the engine's configuration).
    options: Arc<RelayOptions>,
}

impl Engine {
    /// Starts `threads` workers. Fails if a worker cannot set up its io_uring.
    pub fn start(threads: usize, config: Arc<EngineConfig>) -> io::Result<Engine> {
        let shared = Arc::new(Shared::new()?);
        let cores = if config.pin_workers {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut workers = Vec::with_capacity(threads);
        for index in 0..threads.max(1) {
            let (tx, rx): (Sender<Message>, Receiver<Message>) = crossbeam_channel::unbounded();
            let wake = Arc::new(EventFd::new()?);
            let (ready_tx, ready_rx) = crossbeam_channel::bounded::<io::Result<()>>(1);
            let core = (!cores.is_empty()).then(|| cores[index % cores.len()]);
            let thread = {
                let wake = wake.clone();
                let shared = shared.clone();
                let config = config.clone();
                std::thread::Builder::new()
                    .name(format!("vsplice-w{index}"))
                    .spawn(move || {
                        if let Some(core) = core {
                            core_affinity::set_for_current(core);
                        }
                        match worker::Worker::new(index, rx, wake, shared, config) {
                            Ok(w) => {
                                let _ = ready_tx.send(Ok(()));
                                w.run();
                            }
                            Err(e) => {
                                let _ = ready_tx.send(Err(e));
                            }
                        }
                    })?
            };
            let ready = ready_rx
                .recv()
                .unwrap_or_else(|_| Err(io::Error::other("worker thread died at start")));
            workers.push(WorkerHandle {
                jobs: tx,
                wake,
                thread: Some(thread),
                unwoken: false,
            });
            if let Err(e) = ready {
                let mut engine = Engine {
                    workers,
                    next: 0,
                    shared,
                    options: Arc::new(config.relay_options()),
                };
                engine.stop();
                return Err(e);
            }
        }
        Ok(Engine {
            workers,
            next: 0,
            shared,
            options: Arc::new(config.relay_options()),
        })
    }

    /// Hands a connection to the next worker (round robin) and wakes it.
    pub fn submit(&mut self, job: Job) {
        self.queue(job);
        self.wake_all();
    }

    /// Hands a connection to the next worker without waking it yet: a batch of accepted
    /// connections costs one wake-up per worker, given by [`Engine::wake_all`].
    pub fn queue(&mut self, job: Job) {
        let options = self.options.clone();
        self.queue_with(job, options);
    }

    /// As [`Engine::queue`], for a connection of a relay with its own options.
    pub fn queue_with(&mut self, job: Job, options: Arc<RelayOptions>) {
        self.shared.live.fetch_add(1, Ordering::SeqCst);
        let index = self.next % self.workers.len();
        self.next = self.next.wrapping_add(1);
        let worker = &mut self.workers[index];
        if worker.jobs.send(Message::Relay(job, options)).is_err() {
            // The worker is gone (it only exits when stopped); the job is dropped with it.
            self.shared.live.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        worker.unwoken = true;
    }

    /// Makes every worker accept on `group`'s listener for itself, until
    /// [`Engine::unlisten`]. Fails if the group was started before.
    pub fn listen(&self, group: Arc<accept::AcceptGroup>) -> io::Result<()> {
        let wakes = self.workers.iter().map(|w| w.wake.clone()).collect();
        if !group.attach(wakes) {
            return Err(io::Error::other("an accept group starts once"));
        }
        for w in &self.workers {
            if w.jobs.send(Message::Listen(group.clone())).is_err() {
                group.detach();
            }
            w.wake.notify();
        }
        Ok(())
    }

    /// Stops accepting on `group`: every worker cancels its ACCEPT there, and this returns
    /// once all of them are back, so closing the listener afterwards is safe and nothing
    /// more is accepted. Connections already accepted go on.
    pub fn unlisten(&self, group: &Arc<accept::AcceptGroup>) {
        for w in &self.workers {
            if w.jobs.send(Message::Unlisten(group.clone())).is_err() {
                // The worker is gone and holds nothing any more. (It detached the group
                // when it stopped, or never got it: a Listen it never read.)
                continue;
            }
            w.wake.notify();
        }
        group.wait_detached();
    }

    /// Wakes every worker that was handed work since its last wake-up.
    pub fn wake_all(&mut self) {
        for w in &mut self.workers {
            if std::mem::take(&mut w.unwoken) {
                w.wake.notify();
            }
        }
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn threads(&self) -> usize {
        self.workers.len()
    }

    /// Lets open connections finish: returns once none is left (true), when `timeout` has
    /// passed, or when `interrupt` reports a second request to stop. `interrupt` runs whenever
    /// `interrupt_fd` is readable or a connection closes, and at least once a second (so a
    /// caller can feed a watchdog there). What is still open afterwards is cut by
    /// [`Engine::stop`].
    pub fn drain(
        &self,
        timeout: Duration,
        interrupt_fd: BorrowedFd<'_>,
        mut interrupt: impl FnMut() -> Option<i32>,
    ) -> bool {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let shared = &self.shared;
        shared.wake_on_close.store(true, Ordering::SeqCst);
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let live = shared.live.load(Ordering::SeqCst);
            if live == 0 {
                return true;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                crate::notice!("drain timeout: cutting {live} connections");
                return false;
            }
            let mut fds = [
                PollFd::new(interrupt_fd, PollFlags::POLLIN),
                PollFd::new(shared.closed.as_fd(), PollFlags::POLLIN),
            ];
            let wait = PollTimeout::try_from(left.as_millis().clamp(1, 1_000) as i32)
                .unwrap_or(PollTimeout::MAX);
            let _ = poll(&mut fds, wait);
            if let Some(signo) = interrupt() {
                crate::notice!("signal {signo} while draining: cutting {live} connections");
                return false;
            }
            shared.closed.drain();
        }
    }

    /// Closes, with resets, every connection relaying with `options` (compared by identity:
    /// one service's connections), on every worker; returns at once.
    pub fn cut(&self, options: &Arc<RelayOptions>) {
        for w in &self.workers {
            if w.jobs.send(Message::Cut(options.clone())).is_ok() {
                w.wake.notify();
            }
        }
    }

    /// Closes every connection (those that had not ended get a reset) and joins the workers.
    pub fn stop(&mut self) {
        for w in &self.workers {
            let _ = w.jobs.send(Message::Stop);
            w.wake.notify();
        }
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether workers are pinned: `pin` when the user said (`--pin`/`--no-pin`, the config's
/// `pin`), else only when the workers leave cores free. Pinning pays on cores the relay has
/// to itself; when the workers occupy every core, the relay shares each of them with
/// whatever else runs, and a pinned worker cannot be moved off a contested core (measured:
/// README, Performance).
pub fn pin_policy(pin: Option<bool>, threads: usize, cores: usize) -> bool {
    pin.unwrap_or(threads < cores)
}
