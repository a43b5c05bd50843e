//! One worker thread: an io_uring, the connections it owns, and the loop that drives them.
//!
//! The loop reaps completions, runs directions that yielded their turn, fires timers, and then
//! waits in one `io_uring_enter` that also submits everything queued meanwhile. Every request a
//! connection has in flight is tracked in its in-flight set; a closing connection cancels them
//! and keeps its descriptors, pipes and buffers until the kernel has returned every one, so
//! nothing the kernel may still touch is freed or reused early.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crossbeam_channel::Receiver;
use io_uring::{IoUring, cqueue, opcode, squeue, types};
use slab::Slab;

use super::conn::{CloseReason, ConnState, Direction, Verdict, verdict};
use super::flow::{Flow, FlowOp, FlowState, Step};
use super::rcvbudget;
use super::recv::{RecvFlow, RecvStep};
use super::staging::{BufRing, BufferSlots, CopyBuffer, PipePool, Staging};
use super::token::{self, Op, Token};
use super::{EngineConfig, Job, Message, Mode, Second, Shared};
use crate::dial::{Dial, Event as DialEvent, Interest, Progress};
use crate::endpoint::Endpoint;
use crate::sys::eventfd::EventFd;
use crate::sys::pipe;
use crate::{debug, error, info, notice, warn};

/// Registered-buffer slots per worker (a sparse table; a slot is filled per copy direction).
const BUFFER_SLOTS: u16 = 1024;
/// Buffers per direction on the ring path (`--mode recv`); each is `-b` divided by this.
const RING_BUFFERS: u16 = 8;
/// Provided-buffer group ids a worker hands out (one per ring-path direction).
const RING_GROUPS: u16 = 16384;
/// A connection idle this long may be parked when descriptors run short.
const PARK_IDLE: std::time::Duration = std::time::Duration::from_millis(500);
/// How often a worker looks for connections to park while descriptors run short.
const PARK_SWEEP: std::time::Duration = std::time::Duration::from_millis(200);
/// How often a worker counts its busy connections while a receive-buffer cap may apply.
const BUDGET_SWEEP: std::time::Duration = std::time::Duration::from_millis(100);
/// A connection that moved data this recently counts as busy for the receive budget.
const BUSY_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);

/// One direction of a connection on the pipe or copy path: its state machine, staging area
/// and in-flight transfer.
struct StagedLane {
    flow: Flow,
    staging: Staging,
    /// The io_uring transfer in flight, if any.
    pending: Option<Step>,
    /// A direction turned off by `-u`/`-U`: its bytes are read and dropped (into /dev/null),
    /// so the peer can finish sending and close cleanly instead of being reset.
    discard: bool,
}

/// One direction on the buffer-ring path (`--mode recv`, `--mode recv-zc`).
struct RingLane {
    flow: RecvFlow,
    ring: BufRing,
    discard: bool,
    /// The registered-buffer slot of the ring's memory, when filled buffers go out with
    /// SEND_ZC (`recv-zc`); `None` for plain writes.
    zerocopy: Option<u16>,
    /// A buffer fully sent with SEND_ZC, handed back to the ring when the kernel's
    /// notification says it no longer reads it.
    awaiting_notification: Option<u16>,
}

/// One direction of a connection, on one of the data paths.
enum Lane {
    Staged(StagedLane),
    Ring(RingLane),
}

impl Lane {
    fn discard(&self) -> bool {
        match self {
            Lane::Staged(l) => l.discard,
            Lane::Ring(l) => l.discard,
        }
    }

    fn state(&self) -> FlowState {
        match self {
            Lane::Staged(l) => l.flow.state(),
            Lane::Ring(l) => l.flow.state(),
        }
    }

    fn delivered(&self) -> u64 {
        match self {
            Lane::Staged(l) => l.flow.delivered(),
            Lane::Ring(l) => l.flow.delivered(),
        }
    }

    fn staged(&self) -> Option<&StagedLane> {
        match self {
            Lane::Staged(l) => Some(l),
            Lane::Ring(_) => None,
        }
    }

    fn staged_mut(&mut self) -> Option<&mut StagedLane> {
        match self {
            Lane::Staged(l) => Some(l),
            Lane::Ring(_) => None,
        }
    }
}

/// Dial bookkeeping while the second address connects.
struct Dialing {
    dial: Dial,
    /// Incremented per wait, so a timer of an earlier wait is recognised as stale.
    epoch: u32,
    /// The wait's deadline passed while its poll was in flight; the poll is being cancelled.
    timed_out: bool,
}

struct Conn {
    serial: u64,
    id: u64,
    first: Endpoint,
    second: Option<Endpoint>,
    dialing: Option<Dialing>,
    lanes: [Option<Lane>; 2],
    state: ConnState,
    /// Bits of [`Op::bit`] for every request in flight.
    inflight: u16,
    started: Instant,
    last_active: Instant,
    lingering: bool,
    /// Fixed-file slots of the first and second socket once the connection is parked.
    parked: Option<[u32; 2]>,
    /// The receive buffer its TCP sockets were fixed at, if the receive budget capped them.
    receive_cap: Option<usize>,
}

impl Conn {
    /// (source, destination) of direction `d`: descriptors, or fixed-file slots once parked;
    /// a discarding direction writes to `devnull`.
    fn ends(&self, d: usize, devnull: RawFd) -> (Option<Target>, Option<Target>) {
        let discard = self.lanes[d].as_ref().is_some_and(Lane::discard);
        let (src, dst) = match self.parked {
            Some([first, second]) => {
                let (src, dst) = if d == 0 {
                    (first, second)
                } else {
                    (second, first)
                };
                (Some(Target::Fixed(src)), Some(Target::Fixed(dst)))
            }
            None => {
                let raw = |fd: Option<BorrowedFd<'_>>| fd.map(|f| Target::Fd(f.as_raw_fd()));
                let second = self.second.as_ref();
                if d == 0 {
                    (
                        raw(self.first.read_fd()),
                        raw(second.and_then(Endpoint::write_fd)),
                    )
                } else {
                    (
                        raw(second.and_then(Endpoint::read_fd)),
                        raw(self.first.write_fd()),
                    )
                }
            }
        };
        (
            src,
            if discard {
                Some(Target::Fd(devnull))
            } else {
                dst
            },
        )
    }

    /// Whether the connection can be parked: relaying, idle since `now - PARK_IDLE`, both
    /// ends sockets, both directions on pipes holding nothing and doing nothing but wait for
    /// their source.
    fn parkable(&self, now: Instant) -> bool {
        let waits_only = Op::Readable(0).bit() | Op::Readable(1).bit();
        self.state == ConnState::Relaying
            && self.parked.is_none()
            && self.inflight & !waits_only == 0
            && now.saturating_duration_since(self.last_active) >= PARK_IDLE
            && self.first.is_socket()
            && self.second.as_ref().is_some_and(Endpoint::is_socket)
            && self.lanes.iter().all(|lane| match lane {
                Some(Lane::Staged(l)) => {
                    matches!(l.staging, Staging::Pipe(None)) && l.pending.is_none()
                }
                Some(Lane::Ring(_)) => false,
                None => true,
            })
    }

    /// Brings the receive buffers of the connection's TCP sockets in line with the worker's
    /// cap (see [`rcvbudget::target`]), except where the user set `rcvbuf` on that address
    /// (`user`: [first, second]). A parked connection's sockets have no descriptors: they
    /// keep what they had.
    fn apply_receive_cap(&mut self, cap: Option<usize>, user: [bool; 2]) {
        let Some(bytes) = rcvbudget::target(self.receive_cap, cap) else {
            return;
        };
        let ends = [Some(&self.first), self.second.as_ref()];
        for (end, user_set) in ends.into_iter().zip(user) {
            let Some(end) = end.filter(|_| !user_set) else {
                continue;
            };
            if let Err(e) = end.cap_tcp_receive_buffer(bytes) {
                debug!("conn {}: cannot cap the receive buffer: {e}", self.id);
            }
        }
        self.receive_cap = Some(bytes);
    }

    fn sink_mut(&mut self, d: usize) -> Option<&mut Endpoint> {
        if d == 0 {
            self.second.as_mut()
        } else {
            Some(&mut self.first)
        }
    }

    fn label(&self) -> String {
        match &self.second {
            Some(s) => format!("{} <-> {}", self.first.label(), s.label()),
            None => self.first.label().to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    Dial(u32),
    Idle,
    Linger,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Timer {
    at: Instant,
    key: usize,
    serial: u64,
    kind: TimerKind,
}

/// Where a request reads or writes: a descriptor, or a slot of the ring's fixed-file table
/// (the sockets of a parked connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Fd(RawFd),
    Fixed(u32),
}

fn poll_sqe(target: Target, events: libc::c_short) -> squeue::Entry {
    let events = events as u32;
    match target {
        Target::Fd(fd) => opcode::PollAdd::new(types::Fd(fd), events).build(),
        Target::Fixed(slot) => opcode::PollAdd::new(types::Fixed(slot), events).build(),
    }
}

fn splice_sqe(from: Target, to: Target, len: usize) -> squeue::Entry {
    let len = len.min(u32::MAX as usize) as u32;
    let flags = libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE;
    match (from, to) {
        (Target::Fd(a), Target::Fd(b)) => {
            opcode::Splice::new(types::Fd(a), -1, types::Fd(b), -1, len)
                .flags(flags)
                .build()
        }
        (Target::Fd(a), Target::Fixed(b)) => {
            opcode::Splice::new(types::Fd(a), -1, types::Fixed(b), -1, len)
                .flags(flags)
                .build()
        }
        (Target::Fixed(a), Target::Fd(b)) => {
            opcode::Splice::new(types::Fixed(a), -1, types::Fd(b), -1, len)
                .flags(flags)
                .build()
        }
        (Target::Fixed(a), Target::Fixed(b)) => {
            opcode::Splice::new(types::Fixed(a), -1, types::Fixed(b), -1, len)
                .flags(flags)
                .build()
        }
    }
}

fn shutdown_sqe(target: Target) -> squeue::Entry {
    match target {
        Target::Fd(fd) => opcode::Shutdown::new(types::Fd(fd), libc::SHUT_WR).build(),
        Target::Fixed(slot) => opcode::Shutdown::new(types::Fixed(slot), libc::SHUT_WR).build(),
    }
}

/// The staged lane of direction `d`; callers reach it only on the staged path.
fn staged_lane(conn: &mut Conn, d: usize) -> &mut StagedLane {
    conn.lanes[d]
        .as_mut()
        .and_then(Lane::staged_mut)
        .expect("a staged lane")
}

pub(super) struct Worker {
    index: usize,
    ring: IoUring,
    conns: Slab<Conn>,
    inbox: Receiver<Message>,
    wake: Arc<EventFd>,
    shared: Arc<Shared>,
    config: Arc<EngineConfig>,
    pipes: PipePool,
    slots: Option<BufferSlots>,
    timers: BinaryHeap<Reverse<Timer>>,
    runq: VecDeque<(usize, u64, usize)>,
    next_serial: u64,
    stopping: bool,
    completions: Vec<(u64, i32, u32)>,
    /// Submissions that found the queue full and the kernel busy.
    overflow: VecDeque<squeue::Entry>,
    /// Where discarding directions write.
    devnull: std::os::fd::OwnedFd,
    /// Free provided-buffer group ids for ring-path directions.
    ring_groups: Vec<u16>,
    /// Free pairs of fixed-file slots (pair `p` is slots 2p and 2p+1) for parking
    /// connections; empty when the ring has no fixed-file table.
    park_pairs: Vec<u32>,
    /// Live connections in the process above which idle ones are parked.
    park_above: usize,
    next_sweep: Instant,
    parked: usize,
    /// The receive-buffer cap this worker last applied to all its connections.
    receive_cap: Option<usize>,
    /// Busy connections of this worker at the last budget sweep (part of `Shared::busy`).
    busy: usize,
    next_budget_sweep: Instant,
}

fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn build_ring(entries: u32, sqpoll: Option<u32>) -> io::Result<IoUring> {
    let cq = entries.saturating_mul(16).max(4096);
    if let Some(idle_ms) = sqpoll {
        // A kernel thread polls the submission queue. Tuning only: on two cores it took a
        // core from the relay's peers (README, Performance).
        return IoUring::builder()
            .setup_cqsize(cq)
            .setup_sqpoll(idle_ms)
            .build(entries);
    }
    // Newer kernels take the cheaper task-run modes; older ones refuse the flags (EINVAL).
    IoUring::builder()
        .setup_cqsize(cq)
        .setup_single_issuer()
        .setup_coop_taskrun()
        .build(entries)
        .or_else(|_| IoUring::builder().setup_cqsize(cq).build(entries))
}

impl Worker {
    pub(super) fn new(
        index: usize,
        inbox: Receiver<Message>,
        wake: Arc<EventFd>,
        shared: Arc<Shared>,
        config: Arc<EngineConfig>,
    ) -> io::Result<Worker> {
        let ring = build_ring(config.ring_entries, config.sqpoll_idle_ms)?;
        // Parking: a fixed-file table as large as the descriptor limit allows (direct
        // descriptors do not count against it), used once live connections approach what
        // the limit can hold with two sockets each.
        let nofile = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map(|(soft, _)| soft)
            .unwrap_or(1024);
        let table = nofile.min(1 << 16) as u32 & !1;
        let park_pairs = match ring.submitter().register_files_sparse(table) {
            Ok(()) => (0..table / 2).rev().collect(),
            Err(e) => {
                debug!("worker {index}: no fixed-file table ({e}); connections are never parked");
                Vec::new()
            }
        };
        let reserve = (nofile / 4).min(512);
        let park_above = ((nofile.saturating_sub(reserve) / 2) * 3 / 4) as usize;
        let slots = match ring
            .submitter()
            .register_buffers_sparse(u32::from(BUFFER_SLOTS))
        {
            Ok(()) => Some(BufferSlots::new(BUFFER_SLOTS)),
            Err(e) => {
                debug!("worker {index}: no registered buffers ({e}); copy path uses plain reads");
                None
            }
        };
        Ok(Worker {
            index,
            ring,
            conns: Slab::new(),
            inbox,
            wake,
            shared,
            pipes: PipePool::new(config.pipe_size, config.max_idle_pipes),
            config,
            slots,
            timers: BinaryHeap::new(),
            runq: VecDeque::new(),
            next_serial: 1,
            stopping: false,
            completions: Vec::with_capacity(256),
            overflow: VecDeque::new(),
            devnull: std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/null")?
                .into(),
            ring_groups: (0..RING_GROUPS).rev().collect(),
            park_pairs,
            park_above,
            next_sweep: Instant::now(),
            parked: 0,
            receive_cap: None,
            busy: 0,
            next_budget_sweep: Instant::now(),
        })
    }

    /// Queues a submission. When the queue is full it is flushed to the kernel; if the
    /// kernel cannot take more now, the entry waits in `overflow` until the next `wait`.
    /// Never reaps completions: that would re-enter connection code from inside it.
    ///
    /// # Safety
    /// Every descriptor and buffer `sqe` names must stay valid until its completion is reaped.
    /// The worker guarantees this by keeping a connection (and its endpoints, pipes and
    /// buffers) alive while any bit of its in-flight set is set.
    unsafe fn push(&mut self, sqe: &squeue::Entry) {
        if self.overflow.is_empty() {
            // SAFETY: forwarded from this function's contract.
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                return;
            }
            if self.ring.submit().is_ok() {
                // SAFETY: as above.
                if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                    return;
                }
            }
        }
        self.overflow.push_back(sqe.clone());
    }

    /// Moves entries that did not fit earlier into the submission queue, as room allows.
    fn flush_overflow(&mut self) {
        while let Some(sqe) = self.overflow.front() {
            // SAFETY: the entry was accepted by `push` under the same contract and its
            // connection still holds it in flight.
            if unsafe { self.ring.submission().push(sqe) }.is_err() {
                if self.ring.submit().is_err() {
                    return;
                }
                continue;
            }
            self.overflow.pop_front();
        }
    }

    /// Queues a request for connection `key` and records it in its in-flight set.
    fn push_op(&mut self, key: usize, op: Op, sqe: squeue::Entry) {
        let sqe = sqe.user_data(token::encode(key, op));
        if let Some(conn) = self.conns.get_mut(key) {
            debug_assert_eq!(conn.inflight & op.bit(), 0, "{op:?} already in flight");
            conn.inflight |= op.bit();
        }
        // SAFETY: the connection holds the descriptors and buffers of `sqe` until the
        // completion clears `op` from its in-flight set (see `finalize`).
        unsafe { self.push(&sqe) };
    }

    fn arm_wake(&mut self) {
        let sqe = opcode::PollAdd::new(types::Fd(self.wake.as_raw_fd()), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(token::WAKE);
        // SAFETY: the eventfd is owned by this worker (through its Arc) for the ring's life.
        unsafe { self.push(&sqe) };
    }

    pub(super) fn run(mut self) {
        self.arm_wake();
        loop {
            self.reap();
            self.run_queue();
            self.fire_timers();
            self.sweep_for_parking();
            self.sweep_receive_budget();
            if self.stopping && self.conns.is_empty() {
                break;
            }
            self.wait();
        }
        debug!(
            "worker {} done: {} pipes created",
            self.index, self.pipes.created
        );
    }

    fn wait(&mut self) {
        self.flush_overflow();
        let result = if !self.runq.is_empty() || !self.overflow.is_empty() {
            self.ring.submit()
        } else if let Some(at) = self
            .timers
            .peek()
            .map(|Reverse(t)| t.at)
            .into_iter()
            .chain(self.parking_wanted().then_some(self.next_sweep))
            .chain(self.budget_sweep_wanted().then_some(self.next_budget_sweep))
            .min()
        {
            let left = at.saturating_duration_since(Instant::now());
            let ts = types::Timespec::from(left);
            let args = types::SubmitArgs::new().timespec(&ts);
            self.ring.submitter().submit_with_args(1, &args)
        } else {
            self.ring.submit_and_wait(1)
        };
        if let Err(e) = result {
            match e.raw_os_error() {
                Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN) => {}
                _ => warn!("worker {}: io_uring_enter failed: {e}", self.index),
            }
        }
    }

    fn reap(&mut self) {
        let mut batch = std::mem::take(&mut self.completions);
        loop {
            batch.clear();
            batch.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            if batch.is_empty() {
                break;
            }
            for &(user_data, result, flags) in &batch {
                self.on_completion(user_data, result, flags);
            }
        }
        self.completions = batch;
    }

    fn on_completion(&mut self, user_data: u64, result: i32, flags: u32) {
        match token::decode(user_data) {
            Token::Wake => {
                self.wake.drain();
                if !cqueue::more(flags) {
                    self.arm_wake();
                }
                self.take_jobs();
            }
            Token::Cancel | Token::Unknown(_) => {}
            Token::Conn { key, op } => {
                let Some(conn) = self.conns.get_mut(key) else {
                    debug!("worker {}: completion for a closed slot {key}", self.index);
                    return;
                };
                // A multishot request stays in flight while the kernel says more will come.
                if !cqueue::more(flags) {
                    conn.inflight &= !op.bit();
                }
                if let ConnState::Closing(_) = conn.state {
                    if conn.inflight == 0 {
                        self.finalize(key);
                    }
                    return;
                }
                match op {
                    Op::Dial => self.on_dial_ready(key),
                    Op::Readable(d) => {
                        if let Some(lane) = conn.lanes[d].as_mut().and_then(Lane::staged_mut) {
                            lane.flow.readable();
                        }
                        self.pump(key, d);
                    }
                    Op::Writable(d) => {
                        if let Some(lane) = conn.lanes[d].as_mut().and_then(Lane::staged_mut) {
                            lane.flow.writable();
                        }
                        self.pump(key, d);
                    }
                    Op::Fill(d) | Op::Drain(d) if matches!(conn.lanes[d], Some(Lane::Ring(_))) => {
                        self.on_ring(key, d, op, result, flags);
                        self.pump(key, d);
                    }
                    Op::Fill(d) | Op::Drain(d) => {
                        let outcome = if result < 0 {
                            Err(-result)
                        } else {
                            Ok(result as usize)
                        };
                        self.on_transfer(key, d, outcome);
                        self.pump(key, d);
                    }
                }
            }
        }
    }

    fn take_jobs(&mut self) {
        while let Ok(message) = self.inbox.try_recv() {
            match message {
                Message::Stop => self.begin_stop(),
                Message::Relay(job) => self.admit(job),
            }
        }
    }

    fn begin_stop(&mut self) {
        self.stopping = true;
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.close(key, CloseReason::Stopped);
        }
    }

    fn admit(&mut self, job: Job) {
        if self.stopping {
            drop(job);
            self.shared.live.fetch_sub(1, Ordering::SeqCst);
            self.shared.notify_closed();
            return;
        }
        let now = Instant::now();
        let serial = self.next_serial;
        self.next_serial += 1;
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (second, dialing) = match job.second {
            Second::Ready(endpoint) => (Some(endpoint), None),
            Second::Dial(address) => (
                None,
                Some(Dialing {
                    dial: Dial::new(address),
                    epoch: 0,
                    timed_out: false,
                }),
            ),
        };
        let dials = dialing.is_some();
        let key = self.conns.insert(Conn {
            serial,
            id,
            first: job.first,
            second,
            dialing,
            lanes: [None, None],
            state: ConnState::Dialing,
            inflight: 0,
            started: now,
            last_active: now,
            lingering: false,
            parked: None,
            receive_cap: None,
        });
        if dials {
            let conn = &self.conns[key];
            info!(
                "conn {id}: accepted {}, connecting {}",
                conn.first.label(),
                conn.dialing
                    .as_ref()
                    .map(|d| d.dial.address().text.as_str())
                    .unwrap_or("")
            );
            self.advance_dial(key, DialEvent::Start);
        } else {
            self.start_relay(key);
        }
    }

    // ---- dialing the second address ----

    fn advance_dial(&mut self, key: usize, event: DialEvent) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let Some(dialing) = conn.dialing.as_mut() else {
            return;
        };
        dialing.epoch = dialing.epoch.wrapping_add(1);
        dialing.timed_out = false;
        let epoch = dialing.epoch;
        match dialing.dial.advance(event) {
            Progress::Connected(endpoint) => {
                conn.second = Some(endpoint);
                conn.dialing = None;
                self.start_relay(key);
            }
            Progress::Failed(why) => {
                let text = dialing.dial.address().text.clone();
                self.close(key, CloseReason::DialFailed(format!("{text}: {why}")));
            }
            Progress::Wait {
                fd,
                interest,
                deadline,
            } => {
                let serial = conn.serial;
                if let Some(at) = deadline {
                    self.timers.push(Reverse(Timer {
                        at,
                        key,
                        serial,
                        kind: TimerKind::Dial(epoch),
                    }));
                }
                if let Some(fd) = fd {
                    let events = match interest {
                        Interest::Readable => libc::POLLIN,
                        Interest::Writable => libc::POLLOUT,
                    };
                    let sqe = opcode::PollAdd::new(types::Fd(fd), events as u32).build();
                    self.push_op(key, Op::Dial, sqe);
                }
            }
        }
    }

    fn on_dial_ready(&mut self, key: usize) {
        let timed_out = self
            .conns
            .get(key)
            .and_then(|c| c.dialing.as_ref())
            .is_some_and(|d| d.timed_out);
        let event = if timed_out {
            DialEvent::Timeout
        } else {
            DialEvent::Ready
        };
        self.advance_dial(key, event);
    }

    fn on_dial_timer(&mut self, key: usize, epoch: u32) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let polling = conn.inflight & Op::Dial.bit() != 0;
        let Some(dialing) = conn.dialing.as_mut() else {
            return;
        };
        if dialing.epoch != epoch || dialing.timed_out {
            return;
        }
        if polling {
            // Let the poll come back (cancelled, or ready after all) before moving on, so no
            // completion of this wait can be mistaken for one of the next.
            dialing.timed_out = true;
            self.cancel(key, Op::Dial);
        } else {
            self.advance_dial(key, DialEvent::Timeout);
        }
    }

    // ---- relaying ----

    fn new_copy_buffer(&mut self, at_least: usize) -> CopyBuffer {
        let mut buffer = CopyBuffer::new(self.config.copy_size.max(at_least).max(4096));
        if let Some(slot) = self.slots.as_mut().and_then(BufferSlots::take) {
            let iov = buffer.iovec();
            // SAFETY: the buffer is owned by a lane of a connection until `finalize`, which
            // runs only when no request is in flight and clears the slot before freeing it.
            match unsafe {
                self.ring
                    .submitter()
                    .register_buffers_update(u32::from(slot), &[iov], None)
            } {
                Ok(()) => buffer.slot = Some(slot),
                Err(e) => {
                    debug!("worker {}: cannot register a buffer: {e}", self.index);
                    if let Some(slots) = self.slots.as_mut() {
                        slots.give(slot);
                    }
                }
            }
        }
        buffer
    }

    /// A registered provided-buffer ring for a ring-path direction; `None` when the kernel
    /// (or the group-id supply) says no: the direction then takes the copy path.
    fn new_ring(&mut self) -> Option<BufRing> {
        let bgid = self.ring_groups.pop()?;
        let size = (self.config.pipe_size / usize::from(RING_BUFFERS)).max(4096);
        let ring = BufRing::new(bgid, RING_BUFFERS, size);
        // SAFETY: the ring memory lives in `ring`, which the lane owns until `drop_ring`
        // unregisters the group before freeing it.
        let registered = unsafe {
            self.ring.submitter().register_buf_ring_with_flags(
                ring.ring_addr(),
                ring.count(),
                bgid,
                0,
            )
        };
        match registered {
            Ok(()) => Some(ring),
            Err(e) => {
                debug!(
                    "worker {}: no provided-buffer ring ({e}); copying instead",
                    self.index
                );
                self.ring_groups.push(bgid);
                None
            }
        }
    }

    /// Registers a memory region in a free slot of the fixed-buffer table.
    fn register_region(&mut self, iov: libc::iovec) -> Option<u16> {
        let slot = self.slots.as_mut()?.take()?;
        // SAFETY: the region belongs to a lane of a connection until `finalize`, which clears
        // the slot (`release_region`) only once no request is in flight.
        let registered = unsafe {
            self.ring
                .submitter()
                .register_buffers_update(u32::from(slot), &[iov], None)
        };
        match registered {
            Ok(()) => Some(slot),
            Err(e) => {
                debug!(
                    "worker {}: cannot register a buffer region: {e}",
                    self.index
                );
                if let Some(slots) = self.slots.as_mut() {
                    slots.give(slot);
                }
                None
            }
        }
    }

    /// Clears a fixed-buffer slot and makes it free again.
    fn release_region(&mut self, slot: u16) {
        let empty = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        // SAFETY: clearing a slot hands the kernel no memory.
        let cleared = unsafe {
            self.ring
                .submitter()
                .register_buffers_update(u32::from(slot), &[empty], None)
        };
        if cleared.is_ok() {
            if let Some(slots) = self.slots.as_mut() {
                slots.give(slot);
            }
        }
    }

    /// Unregisters a ring (no request uses it any more) and frees it.
    fn drop_ring(&mut self, ring: BufRing) {
        let bgid = ring.bgid();
        if self.ring.submitter().unregister_buf_ring(bgid).is_ok() {
            self.ring_groups.push(bgid);
            drop(ring);
        } else {
            // The kernel may still know the memory: keep it rather than free it under it.
            std::mem::forget(ring);
        }
    }

    /// Runs a ring-path direction: arm the multishot receive, write filled buffers in order.
    fn pump_ring(&mut self, key: usize, d: usize) {
        loop {
            let devnull = self.devnull.as_raw_fd();
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            if conn.state != ConnState::Relaying {
                return;
            }
            // Ring lanes are never parked: their ends are descriptors.
            let fd = |t: Option<Target>| match t {
                Some(Target::Fd(fd)) => Some(fd),
                _ => None,
            };
            let (src, dst) = conn.ends(d, devnull);
            let (src, dst) = (fd(src), fd(dst));
            let Some(Lane::Ring(lane)) = conn.lanes[d].as_mut() else {
                return;
            };
            let step = lane.flow.next();
            match step {
                RecvStep::ArmReceive => {
                    let Some(src) = src else {
                        lane.flow.fail(FlowOp::Read, libc::EBADF);
                        continue;
                    };
                    let sqe = opcode::RecvMulti::new(types::Fd(src), lane.ring.bgid()).build();
                    lane.flow.started(step);
                    self.push_op(key, Op::Fill(d), sqe);
                }
                RecvStep::Send { bid, offset, len } => {
                    // A SEND_ZC stays in flight until its notification: one at a time.
                    if conn.inflight & Op::Drain(d).bit() != 0 {
                        return;
                    }
                    let Some(dst) = dst.or(lane.discard.then_some(devnull)) else {
                        lane.flow.fail(FlowOp::Write, libc::EBADF);
                        continue;
                    };
                    let data = lane.ring.data(bid, offset);
                    let sqe = match lane.zerocopy {
                        Some(slot) => opcode::SendZc::new(types::Fd(dst), data, len as u32)
                            .buf_index(Some(slot))
                            .flags(libc::MSG_NOSIGNAL)
                            .build(),
                        None => opcode::Write::new(types::Fd(dst), data, len as u32)
                            .offset(u64::MAX)
                            .build(),
                    };
                    lane.flow.started(step);
                    self.push_op(key, Op::Drain(d), sqe);
                }
                RecvStep::ShutdownWrite => {
                    lane.flow.started(step);
                    let discard = lane.discard;
                    let result = match conn.sink_mut(d) {
                        _ if discard => Ok(()),
                        Some(sink) => sink.shutdown_write().map_err(|e| errno_of(&e)),
                        None => Err(libc::EBADF),
                    };
                    if let Some(Lane::Ring(lane)) = conn.lanes[d].as_mut() {
                        lane.flow.shut_down(result);
                    }
                }
                RecvStep::Wait => return,
                RecvStep::Finished | RecvStep::Failed => {
                    self.evaluate(key);
                    return;
                }
            }
        }
    }

    /// A completion of a ring-path direction: a receive (Fill) or a write (Drain).
    fn on_ring(&mut self, key: usize, d: usize, op: Op, result: i32, flags: u32) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let Some(Lane::Ring(lane)) = conn.lanes[d].as_mut() else {
            return;
        };
        match op {
            Op::Fill(_) => {
                let more = cqueue::more(flags);
                let outcome = match (result, cqueue::buffer_select(flags)) {
                    (n, Some(bid)) if n > 0 => Ok((bid, n as usize)),
                    (n, _) if n >= 0 => Ok((0, 0)),
                    (errno, _) => Err(-errno),
                };
                lane.flow.received(outcome, more);
            }
            _ if cqueue::notif(flags) => {
                // The kernel no longer reads the buffer of the last SEND_ZC.
                if let Some(bid) = lane.awaiting_notification.take() {
                    lane.ring.provide(bid);
                }
            }
            _ => {
                let outcome = if result < 0 {
                    Err(-result)
                } else {
                    Ok(result as usize)
                };
                // Sockets that cannot send zero-copy say so on the first try: write instead.
                if lane.zerocopy.is_some()
                    && matches!(outcome, Err(libc::EOPNOTSUPP | libc::EINVAL))
                    && lane.flow.delivered() == 0
                {
                    lane.zerocopy = None;
                    lane.flow.sent(Err(libc::EAGAIN));
                    info!(
                        "conn {}: {}: no SEND_ZC here, writing",
                        conn.id,
                        Direction::from_index(d)
                    );
                    return;
                }
                if let Some(bid) = lane.flow.sent(outcome) {
                    // A notification follows a SEND_ZC that sent bytes (the kernel flags it
                    // with MORE): the buffer goes back to the ring only then.
                    if cqueue::more(flags) {
                        lane.awaiting_notification = Some(bid);
                    } else {
                        lane.ring.provide(bid);
                    }
                }
            }
        }
        if result > 0 {
            conn.last_active = Instant::now();
        }
    }

    fn start_relay(&mut self, key: usize) {
        let config = self.config.clone();
        let mut lanes: [Option<Lane>; 2] = [None, None];
        for (d, lane) in lanes.iter_mut().enumerate() {
            let discard = !config.directions[d];
            let conn = &self.conns[key];
            let (src_ok, dst_ok) = if discard {
                let src = if d == 0 {
                    Some(&conn.first)
                } else {
                    conn.second.as_ref()
                };
                (src.is_some_and(Endpoint::can_splice_read), true)
            } else if d == 0 {
                (
                    conn.first.can_splice_read(),
                    conn.second.as_ref().is_some_and(Endpoint::can_splice_write),
                )
            } else {
                (
                    conn.second.as_ref().is_some_and(Endpoint::can_splice_read),
                    conn.first.can_splice_write(),
                )
            };
            let src_is_socket = if d == 0 {
                conn.first.is_socket()
            } else {
                conn.second.as_ref().is_some_and(Endpoint::is_socket)
            };
            // The ring path receives with multishot recv: sockets only.
            if matches!(config.mode, Mode::Recv | Mode::RecvZc) && src_is_socket {
                if let Some(mut ring) = self.new_ring() {
                    let flow = RecvFlow::new(usize::from(ring.count()));
                    let zerocopy = if config.mode == Mode::RecvZc && !discard {
                        self.register_region(ring.buffers_iovec())
                    } else {
                        None
                    };
                    *lane = Some(Lane::Ring(RingLane {
                        flow,
                        ring,
                        discard,
                        zerocopy,
                        awaiting_notification: None,
                    }));
                    continue;
                }
            }
            let splice = matches!(config.mode, Mode::Splice | Mode::UringSplice);
            let staging = if splice && src_ok && dst_ok {
                Staging::Pipe(None)
            } else {
                Staging::Copy(self.new_copy_buffer(0))
            };
            let capacity = match &staging {
                Staging::Pipe(_) => config.pipe_size,
                Staging::Copy(b) => b.len(),
            };
            let mut flow = Flow::new(capacity, config.fill_policy);
            flow.await_readiness_first();
            *lane = Some(Lane::Staged(StagedLane {
                flow,
                staging,
                pending: None,
                discard,
            }));
        }
        let conn = &mut self.conns[key];
        conn.lanes = lanes;
        conn.state = ConnState::Relaying;
        conn.last_active = Instant::now();
        self.receive_budget_on_start(key);
        let conn = &self.conns[key];
        if crate::log::enabled(crate::log::Level::Info) {
            let path = |lane: &Option<Lane>| match lane {
                None => "none",
                Some(l) if l.discard() => "discard",
                Some(Lane::Ring(_)) => config.mode.name(),
                Some(Lane::Staged(l)) => match l.staging {
                    Staging::Pipe(_) if config.mode == Mode::UringSplice => "uring-splice",
                    Staging::Pipe(_) => "splice",
                    Staging::Copy(_) => "copy",
                },
            };
            info!(
                "conn {}: relaying {} (first->second: {}, second->first: {})",
                conn.id,
                conn.label(),
                path(&conn.lanes[0]),
                path(&conn.lanes[1])
            );
        }
        if let Some(t) = config.idle_timeout {
            self.timers.push(Reverse(Timer {
                at: conn.last_active + t,
                key,
                serial: conn.serial,
                kind: TimerKind::Idle,
            }));
        }
        for d in 0..2 {
            self.pump(key, d);
        }
        self.evaluate(key);
    }

    /// Keeps the relay's TCP receive queues within the receive budget (see [`rcvbudget`]):
    /// every BUDGET_SWEEP while enough connections are live for a cap to matter, counts this
    /// worker's busy connections (data moved within BUSY_WINDOW) into the process-wide count
    /// and updates the cap.
    fn sweep_receive_budget(&mut self) {
        let now = Instant::now();
        if now < self.next_budget_sweep || !self.budget_sweep_wanted() {
            return;
        }
        self.next_budget_sweep = now + BUDGET_SWEEP;
        let busy = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.state == ConnState::Relaying
                    && now.saturating_duration_since(c.last_active) < BUSY_WINDOW
            })
            .count();
        if busy >= self.busy {
            self.shared
                .busy
                .fetch_add(busy - self.busy, Ordering::Relaxed);
        } else {
            self.shared
                .busy
                .fetch_sub(self.busy - busy, Ordering::Relaxed);
        }
        self.busy = busy;
        self.update_receive_cap();
    }

    /// Counts a connection that starts relaying as busy at once (the next sweep recounts),
    /// so a burst of connections is capped as it arrives, and gives it the worker's cap.
    fn receive_budget_on_start(&mut self, key: usize) {
        let Some(budget) = self.config.receive_budget else {
            return;
        };
        // Too few connections for any cap: nothing to count (a sweep recounts from scratch
        // once there are enough).
        if !budget.could_cap(self.shared.live.load(Ordering::Relaxed)) && self.busy == 0 {
            return;
        }
        self.busy += 1;
        self.shared.busy.fetch_add(1, Ordering::Relaxed);
        self.update_receive_cap();
        let user = self.config.user_rcvbuf;
        self.conns[key].apply_receive_cap(self.receive_cap, user);
    }

    /// Recomputes the cap from the process-wide busy count and, when it changed enough,
    /// applies it to every connection this worker relays.
    fn update_receive_cap(&mut self) {
        let Some(budget) = self.config.receive_budget else {
            return;
        };
        let total = self.shared.busy.load(Ordering::Relaxed);
        let cap = budget.cap(total);
        if !rcvbudget::worth_a_sweep(self.receive_cap, cap) {
            return;
        }
        self.receive_cap = cap;
        match cap {
            Some(cap) => info!(
                "worker {}: TCP receive buffers capped at {} KiB ({total} busy connections, \
                 receive budget {} MiB)",
                self.index,
                cap >> 10,
                budget.0 >> 20
            ),
            None => info!(
                "worker {}: TCP receive buffers no longer capped ({total} busy connections)",
                self.index
            ),
        }
        let user = self.config.user_rcvbuf;
        for (_, conn) in self.conns.iter_mut() {
            if conn.state == ConnState::Relaying {
                conn.apply_receive_cap(cap, user);
            }
        }
    }

    /// Whether budget sweeps should run: a cap could apply, one is in force, or busy
    /// connections are still counted (only ever so with a budget).
    fn budget_sweep_wanted(&self) -> bool {
        let live = self.shared.live.load(Ordering::Relaxed);
        self.config
            .receive_budget
            .is_some_and(|b| b.could_cap(live))
            || self.receive_cap.is_some()
            || self.busy > 0
    }

    /// Applies the result of an io_uring transfer to its direction.
    fn on_transfer(&mut self, key: usize, d: usize, outcome: Result<usize, i32>) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let Some(lane) = conn.lanes[d].as_mut().and_then(Lane::staged_mut) else {
            return;
        };
        let Some(step) = lane.pending.take() else {
            return;
        };
        // A parked connection's sockets have no descriptors for the copy path to use.
        if outcome == Err(libc::EINVAL)
            && lane.flow.delivered() == 0
            && matches!(lane.staging, Staging::Pipe(_))
            && conn.parked.is_none()
        {
            self.fall_back_to_copy(key, d);
            return;
        }
        // A peer already gone is no shutdown failure (as in `Socket::shutdown_write`).
        let outcome = match (step, outcome) {
            (Step::ShutdownWrite, Err(libc::ENOTCONN)) => Ok(0),
            (_, o) => o,
        };
        if let (Step::Drain { .. }, Ok(n), Staging::Copy(buffer)) =
            (step, outcome, &mut lane.staging)
        {
            buffer.start += n;
        }
        lane.flow.complete(step, outcome);
        if let Staging::Copy(buffer) = &mut lane.staging {
            if lane.flow.staged() == 0 {
                buffer.start = 0;
            }
        }
        if matches!(outcome, Ok(n) if n > 0) {
            conn.last_active = Instant::now();
        }
    }

    /// splice(2) refused this pair of files: move what the pipe holds into a buffer and copy
    /// from now on. Nothing is lost: staged bytes go out first.
    fn fall_back_to_copy(&mut self, key: usize, d: usize) {
        let staged = self.conns[key].lanes[d]
            .as_ref()
            .and_then(Lane::staged)
            .map_or(0, |l| l.flow.staged());
        let mut buffer = self.new_copy_buffer(staged);
        let conn = &mut self.conns[key];
        let id = conn.id;
        let Some(lane) = conn.lanes[d].as_mut().and_then(Lane::staged_mut) else {
            return;
        };
        if let Staging::Pipe(Some(pipe)) = &lane.staging {
            let mut got = 0;
            while got < staged {
                match pipe::read(pipe.reader(), &mut buffer.as_mut_slice()[got..staged]) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        lane.flow.fail(FlowOp::Read, errno_of(&e));
                        break;
                    }
                }
            }
        }
        if let Staging::Pipe(slot) = &mut lane.staging {
            if let Some(pipe) = slot.take() {
                self.pipes.give(pipe);
            }
        }
        lane.flow.set_capacity(buffer.len());
        lane.staging = Staging::Copy(buffer);
        info!(
            "conn {id}: {}: splice not supported here, copying through a buffer",
            Direction::from_index(d)
        );
    }

    /// Runs direction `d` until it must wait, ends, or uses up its turn. A parked
    /// connection's sockets are fixed-file slots, which only io_uring requests can name, so
    /// parked connections splice with IORING_OP_SPLICE whatever the mode.
    fn pump(&mut self, key: usize, d: usize) {
        let mode = self.config.mode;
        let devnull = self.devnull.as_raw_fd();
        let mut budget = self.config.budget;
        loop {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            if conn.state != ConnState::Relaying {
                return;
            }
            let waiting = conn.inflight & (Op::Readable(d).bit() | Op::Writable(d).bit()) != 0;
            let lane = match conn.lanes[d].as_ref() {
                None => return,
                Some(Lane::Ring(_)) => return self.pump_ring(key, d),
                Some(Lane::Staged(lane)) => lane,
            };
            if waiting || lane.pending.is_some() {
                return;
            }
            let inline = mode == Mode::Splice && conn.parked.is_none();
            let step = lane.flow.next();
            match step {
                Step::Fill { max } => {
                    if let Err(e) = self.ensure_pipe(key, d) {
                        self.lane(key, d).flow.fail(FlowOp::Read, errno_of(&e));
                        continue;
                    }
                    let conn = &mut self.conns[key];
                    let (src, _) = conn.ends(d, devnull);
                    let Some(src) = src else {
                        self.lane(key, d).flow.fail(FlowOp::Read, libc::EBADF);
                        continue;
                    };
                    let lane = staged_lane(conn, d);
                    match (&mut lane.staging, src) {
                        (Staging::Pipe(Some(p)), Target::Fd(fd)) if inline => {
                            let max = max.min(p.capacity());
                            // SAFETY: `fd` is a descriptor of this connection's endpoint,
                            // open for the duration of this call.
                            let src = unsafe { BorrowedFd::borrow_raw(fd) };
                            let r = pipe::splice(src, p.writer(), max);
                            if !self.inline_result(key, d, Step::Fill { max }, r) {
                                continue;
                            }
                        }
                        (Staging::Pipe(Some(p)), src) => {
                            let max = max.min(p.capacity());
                            let sqe = splice_sqe(src, Target::Fd(p.writer().as_raw_fd()), max);
                            lane.pending = Some(Step::Fill { max });
                            self.push_op(key, Op::Fill(d), sqe);
                            return;
                        }
                        (Staging::Pipe(None), _) => unreachable!("ensure_pipe gave a pipe"),
                        (Staging::Copy(buffer), Target::Fd(src)) => {
                            let max = max.min(buffer.len());
                            let ptr = buffer.as_mut_ptr();
                            let sqe = match buffer.slot {
                                Some(slot) => {
                                    opcode::ReadFixed::new(types::Fd(src), ptr, max as u32, slot)
                                        .offset(u64::MAX)
                                        .build()
                                }
                                None => opcode::Read::new(types::Fd(src), ptr, max as u32)
                                    .offset(u64::MAX)
                                    .build(),
                            };
                            lane.pending = Some(Step::Fill { max });
                            self.push_op(key, Op::Fill(d), sqe);
                            return;
                        }
                        (Staging::Copy(_), Target::Fixed(_)) => {
                            unreachable!("only splice directions are parked")
                        }
                    }
                }
                Step::Drain { len } => {
                    let conn = &mut self.conns[key];
                    let (_, dst) = conn.ends(d, devnull);
                    let Some(dst) = dst else {
                        self.lane(key, d).flow.fail(FlowOp::Write, libc::EBADF);
                        continue;
                    };
                    let lane = staged_lane(conn, d);
                    match (&mut lane.staging, dst) {
                        (Staging::Pipe(Some(p)), Target::Fd(fd)) if inline => {
                            // SAFETY: as for the fill: an open endpoint descriptor.
                            let dst = unsafe { BorrowedFd::borrow_raw(fd) };
                            let r = pipe::splice(p.reader(), dst, len);
                            if !self.inline_result(key, d, step, r) {
                                continue;
                            }
                        }
                        (Staging::Pipe(Some(p)), dst) => {
                            let sqe = splice_sqe(Target::Fd(p.reader().as_raw_fd()), dst, len);
                            lane.pending = Some(step);
                            self.push_op(key, Op::Drain(d), sqe);
                            return;
                        }
                        (Staging::Pipe(None), _) => {
                            unreachable!("bytes are staged, so the direction holds a pipe")
                        }
                        (Staging::Copy(buffer), Target::Fd(dst)) => {
                            // SAFETY: start + len stays within the buffer: staged bytes are
                            // data[start..start + staged] and len == staged.
                            let ptr = unsafe { buffer.as_mut_ptr().add(buffer.start) };
                            let sqe = match buffer.slot {
                                Some(slot) => {
                                    opcode::WriteFixed::new(types::Fd(dst), ptr, len as u32, slot)
                                        .offset(u64::MAX)
                                        .build()
                                }
                                None => opcode::Write::new(types::Fd(dst), ptr, len as u32)
                                    .offset(u64::MAX)
                                    .build(),
                            };
                            lane.pending = Some(step);
                            self.push_op(key, Op::Drain(d), sqe);
                            return;
                        }
                        (Staging::Copy(_), Target::Fixed(_)) => {
                            unreachable!("only splice directions are parked")
                        }
                    }
                }
                Step::WaitReadable => {
                    self.release_pipe(key, d);
                    let (src, _) = self.conns[key].ends(d, devnull);
                    let Some(src) = src else {
                        self.lane(key, d).flow.fail(FlowOp::Read, libc::EBADF);
                        continue;
                    };
                    self.push_op(key, Op::Readable(d), poll_sqe(src, libc::POLLIN));
                    return;
                }
                Step::WaitWritable => {
                    let (_, dst) = self.conns[key].ends(d, devnull);
                    let Some(dst) = dst else {
                        self.lane(key, d).flow.fail(FlowOp::Write, libc::EBADF);
                        continue;
                    };
                    self.push_op(key, Op::Writable(d), poll_sqe(dst, libc::POLLOUT));
                    return;
                }
                Step::ShutdownWrite => {
                    let conn = &mut self.conns[key];
                    let discard = conn.lanes[d].as_ref().is_some_and(Lane::discard);
                    debug!(
                        "conn {}: {} reached end of file",
                        conn.id,
                        Direction::from_index(d)
                    );
                    if let (Some(_), false) = (conn.parked, discard) {
                        // A parked socket has no descriptor: shut it down through the ring.
                        let (_, dst) = conn.ends(d, devnull);
                        let lane = staged_lane(conn, d);
                        lane.pending = Some(step);
                        let dst = dst.expect("a parked connection has both ends");
                        self.push_op(key, Op::Drain(d), shutdown_sqe(dst));
                        return;
                    }
                    let result = match conn.sink_mut(d) {
                        _ if discard => Ok(0),
                        Some(sink) => sink.shutdown_write().map(|_| 0).map_err(|e| errno_of(&e)),
                        None => Err(libc::EBADF),
                    };
                    self.lane(key, d).flow.complete(step, result);
                }
                Step::Finished | Step::Failed => {
                    self.release_pipe(key, d);
                    self.evaluate(key);
                    return;
                }
            }
            budget = budget.saturating_sub(1);
            if budget == 0 {
                let serial = self.conns[key].serial;
                self.runq.push_back((key, serial, d));
                return;
            }
        }
    }

    fn lane(&mut self, key: usize, d: usize) -> &mut StagedLane {
        staged_lane(&mut self.conns[key], d)
    }

    /// Records an inline splice result. Returns false when the direction switched to the copy
    /// path instead (the caller then loops to issue the copy).
    fn inline_result(&mut self, key: usize, d: usize, step: Step, r: io::Result<usize>) -> bool {
        let outcome = r.map_err(|e| errno_of(&e));
        let conn = &mut self.conns[key];
        let lane = staged_lane(conn, d);
        if outcome == Err(libc::EINVAL) && lane.flow.delivered() == 0 {
            self.fall_back_to_copy(key, d);
            return false;
        }
        lane.flow.complete(step, outcome);
        if matches!(outcome, Ok(n) if n > 0) {
            conn.last_active = Instant::now();
        }
        true
    }

    /// Makes sure a splice direction holds a pipe before it fills.
    fn ensure_pipe(&mut self, key: usize, d: usize) -> io::Result<()> {
        let needs = matches!(
            self.conns[key].lanes[d]
                .as_ref()
                .and_then(Lane::staged)
                .map(|l| &l.staging),
            Some(Staging::Pipe(None))
        );
        if needs {
            let pipe = self.pipes.take()?;
            let lane = self.lane(key, d);
            lane.flow.set_capacity(pipe.capacity());
            lane.staging = Staging::Pipe(Some(pipe));
        }
        Ok(())
    }

    /// Gives an empty pipe back to the pool (a pipe with bytes in it is never pooled).
    fn release_pipe(&mut self, key: usize, d: usize) {
        let Some(lane) = self.conns[key].lanes[d].as_mut().and_then(Lane::staged_mut) else {
            return;
        };
        if lane.flow.staged() != 0 || lane.pending.is_some() {
            return;
        }
        if let Staging::Pipe(slot) = &mut lane.staging {
            if let Some(pipe) = slot.take() {
                self.pipes.give(pipe);
            }
        }
    }

    /// Decides, after a direction ended, whether the connection goes on.
    fn evaluate(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.state != ConnState::Relaying {
            return;
        }
        let states = [
            conn.lanes[0].as_ref().map(Lane::state),
            conn.lanes[1].as_ref().map(Lane::state),
        ];
        match verdict(states, self.config.linger.is_some(), conn.lingering) {
            Verdict::KeepGoing => {}
            Verdict::StartLinger => {
                conn.lingering = true;
                let at = Instant::now() + self.config.linger.unwrap_or_default();
                let serial = conn.serial;
                self.timers.push(Reverse(Timer {
                    at,
                    key,
                    serial,
                    kind: TimerKind::Linger,
                }));
            }
            Verdict::Close(reason) => self.close(key, reason),
        }
    }

    fn cancel(&mut self, key: usize, op: Op) {
        let sqe = opcode::AsyncCancel::new(token::encode(key, op))
            .build()
            .user_data(token::CANCEL);
        // SAFETY: a cancellation names no descriptor or buffer of ours.
        unsafe { self.push(&sqe) };
    }

    /// Ends a connection: cancels what it has in flight; `finalize` frees it once all returned.
    fn close(&mut self, key: usize, reason: CloseReason) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if let ConnState::Closing(_) = conn.state {
            return;
        }
        conn.state = ConnState::Closing(reason);
        let inflight = conn.inflight;
        if inflight == 0 {
            self.finalize(key);
            return;
        }
        for tag in 0..16u8 {
            if inflight & (1 << tag) != 0 {
                if let Some(op) = Op::from_tag(tag) {
                    self.cancel(key, op);
                }
            }
        }
    }

    fn finalize(&mut self, key: usize) {
        let conn = self.conns.remove(key);
        let ConnState::Closing(reason) = &conn.state else {
            unreachable!("only closing connections are finalized")
        };
        let mut delivered = [0u64; 2];
        let Conn {
            lanes, id, started, ..
        } = &conn;
        for (d, lane) in lanes.iter().enumerate() {
            match lane {
                Some(lane) if !lane.discard() => delivered[d] = lane.delivered(),
                _ => {}
            }
        }
        let secs = started.elapsed().as_secs_f64();
        let wants_label = self.config.stats
            || crate::log::enabled(crate::log::Level::Notice)
            || (reason.is_failure() && crate::log::enabled(crate::log::Level::Warn));
        let label = if wants_label {
            conn.label()
        } else {
            String::new()
        };
        if reason.is_failure() {
            self.shared.failed.fetch_add(1, Ordering::Relaxed);
            if self.config.single_connection {
                error!("{reason}");
            } else {
                warn!("conn {id} ({label}) closed: {reason}");
            }
        } else {
            self.shared.served.fetch_add(1, Ordering::Relaxed);
            notice!(
                "conn {id} ({label}) closed: {reason}; {} + {} bytes in {secs:.3} s",
                delivered[0],
                delivered[1]
            );
        }
        for (d, n) in delivered.iter().enumerate() {
            self.shared.bytes[d].fetch_add(*n, Ordering::Relaxed);
        }
        if self.config.stats {
            eprintln!(
                "vsplice: conn {id} ({label}): {} bytes first->second, {} bytes second->first, {secs:.3} s, {reason}",
                delivered[0], delivered[1]
            );
        }
        if let Some([first, _]) = conn.parked {
            // Clearing the slots (-1) drops the kernel's references: the sockets close.
            let cleared = self
                .ring
                .submitter()
                .register_files_update(first, &[-1, -1]);
            if cleared.is_ok() {
                self.park_pairs.push(first / 2);
            }
            self.parked -= 1;
            self.shared.parked.fetch_sub(1, Ordering::Relaxed);
        }
        let Conn { lanes, .. } = conn;
        for lane in lanes.into_iter().flatten() {
            let lane = match lane {
                Lane::Ring(r) => {
                    if let Some(slot) = r.zerocopy {
                        self.release_region(slot);
                    }
                    self.drop_ring(r.ring);
                    continue;
                }
                Lane::Staged(lane) => lane,
            };
            match lane.staging {
                Staging::Pipe(Some(pipe)) if lane.flow.staged() == 0 => self.pipes.give(pipe),
                Staging::Pipe(_) => {}
                Staging::Copy(buffer) => {
                    if let Some(slot) = buffer.slot {
                        let empty = libc::iovec {
                            iov_base: std::ptr::null_mut(),
                            iov_len: 0,
                        };
                        // SAFETY: clearing a slot hands the kernel no memory.
                        let cleared = unsafe {
                            self.ring.submitter().register_buffers_update(
                                u32::from(slot),
                                &[empty],
                                None,
                            )
                        };
                        if cleared.is_ok() {
                            if let Some(slots) = self.slots.as_mut() {
                                slots.give(slot);
                            }
                        }
                    }
                }
            }
        }
        self.shared.live.fetch_sub(1, Ordering::SeqCst);
        self.shared.notify_closed();
    }

    /// Connections of the whole process that hold descriptors beyond the comfortable number
    /// (`park_above`): how many should be parked now.
    fn parking_wanted_count(&self) -> usize {
        if self.park_pairs.is_empty() {
            return 0;
        }
        let live = self.shared.live.load(Ordering::Relaxed);
        let parked = self.shared.parked.load(Ordering::Relaxed);
        live.saturating_sub(parked).saturating_sub(self.park_above)
    }

    fn parking_wanted(&self) -> bool {
        self.parking_wanted_count() > 0
    }

    /// Parks every connection that has been idle for PARK_IDLE, while parking is wanted.
    fn sweep_for_parking(&mut self) {
        let now = Instant::now();
        if now < self.next_sweep || !self.parking_wanted() {
            return;
        }
        self.next_sweep = now + PARK_SWEEP;
        // Park only what brings the process back under the mark (longest idle first): parked
        // connections move bytes on the slower IORING_OP_SPLICE path.
        let mut candidates: Vec<(Instant, usize)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.parkable(now))
            .map(|(k, c)| (c.last_active, k))
            .collect();
        candidates.sort_unstable();
        let wanted = self.parking_wanted_count();
        let candidates = candidates.into_iter().take(wanted).map(|(_, k)| k);
        let before = self.parked;
        for key in candidates {
            if !self.park(key) {
                break;
            }
        }
        if self.parked != before {
            info!(
                "worker {}: {} connections parked in the fixed-file table ({} live in all)",
                self.index,
                self.parked,
                self.shared.live.load(Ordering::Relaxed)
            );
        }
    }

    /// Moves a connection's two sockets into the fixed-file table and closes their
    /// descriptors. Its readiness polls in flight keep working: they hold the files.
    fn park(&mut self, key: usize) -> bool {
        let Some(pair) = self.park_pairs.pop() else {
            return false;
        };
        let conn = &mut self.conns[key];
        let fds = match (
            conn.first.read_fd(),
            conn.second.as_ref().and_then(Endpoint::read_fd),
        ) {
            (Some(a), Some(b)) => [a.as_raw_fd(), b.as_raw_fd()],
            _ => {
                self.park_pairs.push(pair);
                return true;
            }
        };
        let first = pair * 2;
        if let Err(e) = self.ring.submitter().register_files_update(first, &fds) {
            debug!("worker {}: cannot park conn {}: {e}", self.index, conn.id);
            self.park_pairs.push(pair);
            return false;
        }
        drop(conn.first.take_socket());
        drop(conn.second.as_mut().and_then(Endpoint::take_socket));
        conn.parked = Some([first, first + 1]);
        self.parked += 1;
        self.shared.parked.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn run_queue(&mut self) {
        for _ in 0..self.runq.len() {
            let Some((key, serial, d)) = self.runq.pop_front() else {
                break;
            };
            if self.conns.get(key).is_some_and(|c| c.serial == serial) {
                self.pump(key, d);
            }
        }
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(Reverse(timer)) = self.timers.peek().copied() {
            if timer.at > now {
                break;
            }
            self.timers.pop();
            let Some(conn) = self.conns.get(timer.key) else {
                continue;
            };
            if conn.serial != timer.serial {
                continue;
            }
            match timer.kind {
                TimerKind::Dial(epoch) => self.on_dial_timer(timer.key, epoch),
                TimerKind::Linger => {
                    if conn.state == ConnState::Relaying {
                        self.close(timer.key, CloseReason::LingerExpired);
                    }
                }
                TimerKind::Idle => {
                    let Some(limit) = self.config.idle_timeout else {
                        continue;
                    };
                    if conn.state != ConnState::Relaying {
                        continue;
                    }
                    let due = conn.last_active + limit;
                    if due <= now {
                        self.close(timer.key, CloseReason::IdleTimeout);
                    } else {
                        self.timers.push(Reverse(Timer { at: due, ..timer }));
                    }
                }
            }
        }
    }
}
