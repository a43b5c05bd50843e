//! One worker thread: an io_uring, the connections it owns, and the loop that drives them.
//!
//! The loop reaps completions and hands each to its connection's lane, runs directions that
//! yielded their turn, fires timers and the two sweeps (parking, receive budget), and then
//! waits in one `io_uring_enter` that also submits everything queued meanwhile. Every request
//! a connection has in flight is tracked in its in-flight set; a closing connection cancels
//! them and keeps its descriptors, pipes and buffers until the kernel has returned every one,
//! so nothing the kernel may still touch is freed or reused early. A worker also accepts
//! for itself on the listeners the engine gave it (`accept.rs`), runs a connection's
//! prelude (`prelude.rs`: `accept-proxy` and other handshakes before the dial), and dials
//! (`dial.rs`).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crossbeam_channel::Receiver;
use io_uring::cqueue;
use slab::Slab;

use super::clock::Clock;
use super::close::CloseReason;
use super::config::{EngineConfig, RelayOptions};
use super::conn::{Conn, Phase, Relaying, Verdict, verdict};
use super::direction::{Direction, PerDir};
use super::inbox::Message;
use super::job::Job;
use super::lane::{Cx, Lane, PipePool, Pumped};
use super::park::{self, Parking};
use super::rcvsweep::ReceiveSweep;
use super::registry::Registry;
use super::ring::{Completion, ConnOps, Ring};
use super::shared::Shared;
use super::stats;
use super::timers::{Timer, TimerKind, Timers};
use super::token::{self, Op, Token};
use crate::sys::eventfd::EventFd;
use crate::{debug, info};

use std::time::Duration;

mod accept;
mod dial;
mod listening;
mod prelude;

/// How long a direction that found no descriptor for a pipe waits before it tries again.
const DESCRIPTOR_RETRY: std::time::Duration = std::time::Duration::from_millis(10);

pub(super) struct Worker {
    index: usize,
    ring: Ring,
    registry: Registry,
    pipes: PipePool,
    /// Where discarding directions write.
    devnull: OwnedFd,
    conns: Slab<Conn>,
    inbox: Receiver<Message>,
    wake: Arc<EventFd>,
    shared: Arc<Shared>,
    config: Arc<EngineConfig>,
    timers: Timers,
    /// Directions that used up their turn: (key, serial, direction).
    runq: VecDeque<(usize, u64, Direction)>,
    parking: Parking,
    receive_sweep: ReceiveSweep,
    next_serial: u64,
    stopping: bool,
    completions: Vec<Completion>,
    accepting: listening::Accepting,
    /// When the last wait returned: the loop reads the clock once a turn, and everything in
    /// the turn (activity stamps, timers, sweeps, the next wait's timeout) uses this. In a
    /// guest without a vDSO clock (user-mode Linux) each read is a system call, and reading
    /// it per completion cost five of them per `io_uring_enter` (strace in the guest lab,
    /// `relay_syscalls_on_vsock`: 1,569 clock reads against 260 enters for 32 MiB).
    now: Instant,
    /// Where `now` comes from: the CPU's counter, checked against the real clock (a read
    /// a turn was still a system call a turn in that guest).
    clock: Clock,
}

impl Worker {
    pub(super) fn new(
        index: usize,
        inbox: Receiver<Message>,
        wake: Arc<EventFd>,
        shared: Arc<Shared>,
        config: Arc<EngineConfig>,
    ) -> io::Result<Worker> {
        let ring = Ring::new(config.ring_entries, config.sqpoll_idle_ms)?;
        let nofile = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map(|(soft, _)| soft)
            .unwrap_or(1024);
        let (parking, file_slots) = Parking::new(nofile);
        let registry = Registry::new(&ring, index, file_slots);
        Ok(Worker {
            index,
            ring,
            registry,
            pipes: PipePool::new(config.max_idle_pipes),
            devnull: std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/null")?
                .into(),
            conns: Slab::new(),
            inbox,
            wake,
            shared,
            receive_sweep: ReceiveSweep::new(config.receive_budget),
            config,
            timers: Timers::default(),
            runq: VecDeque::new(),
            parking,
            next_serial: 1,
            stopping: false,
            completions: Vec::with_capacity(256),
            accepting: listening::Accepting::default(),
            now: Instant::now(),
            clock: Clock::new(),
        })
    }

    pub(super) fn run(mut self) {
        self.ring.arm_wake(&self.wake);
        loop {
            self.reap();
            self.run_queue();
            self.fire_timers();
            self.parking.sweep(
                &mut self.conns,
                &mut self.registry,
                &self.ring,
                &self.shared,
                self.index,
                self.now,
            );
            self.receive_sweep
                .sweep(&mut self.conns, &self.shared, self.index, self.now);
            if self.stopping && self.conns.is_empty() && self.accepting.is_empty() {
                break;
            }
            let accept_due = self.accepting.due();
            if accept_due.is_some_and(|at| at <= self.now) {
                self.rearm_accepts();
            }
            let deadline = self.timers.next_deadline([
                self.parking.due(&self.registry, &self.shared),
                self.receive_sweep.due(&self.shared),
                self.accepting.due(),
            ]);
            self.ring
                .wait(!self.runq.is_empty(), deadline, self.now, self.index);
            self.now = self.clock.now();
        }
        self.registry.free_idle_groups(&self.ring);
        // A listener given after the stop was read is let go of unaccepted.
        while let Ok(message) = self.inbox.try_recv() {
            if let Message::Listen(group) = message {
                group.detach();
            }
        }
        debug!(
            "worker {} done: {} pipes created, {} connections accepted",
            self.index, self.pipes.created, self.accepting.accepted
        );
    }

    fn reap(&mut self) {
        let mut batch = std::mem::take(&mut self.completions);
        while self.ring.reap(&mut batch) {
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
                    self.ring.arm_wake(&self.wake);
                }
                self.take_jobs();
                self.rearm_accepts();
            }
            Token::Accept { slot } => self.on_accept(slot, result, flags),
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
                if conn.is_closing() {
                    if conn.inflight == 0 {
                        self.finalize(key);
                    }
                    return;
                }
                match op {
                    Op::Dial => self.on_dial_ready(key),
                    Op::Prelude => self.advance_prelude(key),
                    // Only pushed for a closing connection (handled above).
                    Op::ArmReset(_) => {}
                    Op::Readable(dir) | Op::Writable(dir) | Op::Fill(dir) | Op::Drain(dir) => {
                        self.with_lane(key, dir, |lane, cx| lane.complete(op, result, flags, cx));
                        self.pump(key, dir);
                    }
                }
            }
        }
    }

    /// Runs `f` on direction `dir` of connection `key` while it relays.
    fn with_lane<R>(
        &mut self,
        key: usize,
        dir: Direction,
        f: impl FnOnce(&mut Lane, &mut Cx<'_>) -> R,
    ) -> Option<R> {
        let Worker {
            ring,
            registry,
            pipes,
            devnull,
            conns,
            config,
            now,
            ..
        } = self;
        let now = *now;
        let parts = conns.get_mut(key)?.lane_parts(dir, devnull.as_fd())?;
        let mut cx = Cx {
            ops: ConnOps::new(ring, key, parts.inflight),
            ends: parts.ends,
            registry,
            pipes,
            last_active: parts.last_active,
            now,
            options: parts.options,
            id: parts.id,
            dir,
            turn: config.turn_budget,
        };
        // Bytes delivered are reported to the relay's observer as they move (a scrape sees
        // a long transfer progress), from the lane's own count: one compare per call.
        let observer = parts
            .options
            .observer
            .as_ref()
            .filter(|_| !parts.lane.discard());
        let before = observer.map(|_| (parts.lane.delivered(), parts.lane.messages()));
        let result = f(parts.lane, &mut cx);
        if let (Some(observer), Some((bytes, messages))) = (observer, before) {
            let moved = parts.lane.delivered().saturating_sub(bytes);
            if moved > 0 {
                observer.delivered(dir, moved);
            }
            if let (Some(after), Some(before)) = (parts.lane.messages(), messages) {
                if after > before {
                    observer.messages(dir, after - before);
                }
            }
        }
        Some(result)
    }

    /// Runs direction `dir` until it must wait, ends, or uses up its turn.
    fn pump(&mut self, key: usize, dir: Direction) {
        match self.with_lane(key, dir, |lane, cx| lane.pump(cx)) {
            None | Some(Pumped::Waiting) => {}
            Some(Pumped::Yield) => {
                let serial = self.conns[key].serial;
                self.runq.push_back((key, serial, dir));
            }
            Some(Pumped::Ended) => self.evaluate(key),
            Some(Pumped::NoDescriptors) => {
                let conn = &self.conns[key];
                debug!(
                    "conn {}: {dir}: no descriptor or buffer room; waiting",
                    conn.id
                );
                self.timers.push(Timer {
                    at: self.now + DESCRIPTOR_RETRY,
                    key,
                    serial: conn.serial,
                    kind: TimerKind::Retry(dir.index() as u8),
                });
            }
            Some(Pumped::RecheckAfter(after)) => {
                let conn = &self.conns[key];
                self.timers.push(Timer {
                    at: self.now + after,
                    key,
                    serial: conn.serial,
                    kind: TimerKind::Retry(dir.index() as u8),
                });
            }
        }
    }

    fn take_jobs(&mut self) {
        while let Ok(message) = self.inbox.try_recv() {
            match message {
                Message::Stop => self.begin_stop(),
                Message::Relay(job, options) => {
                    self.admit(*job, options);
                }
                Message::Listen(group) => self.listen(group),
                Message::Unlisten(group) => self.unlisten(Some(&group)),
                Message::Cut(options) => self.cut(&options),
            }
        }
    }

    fn begin_stop(&mut self) {
        self.stopping = true;
        self.unlisten(None);
        self.cut_where(|_| true);
    }

    /// Closes, with resets, the connections relaying with `options`.
    fn cut(&mut self, options: &Arc<RelayOptions>) {
        self.cut_where(|c| Arc::ptr_eq(&c.options, options));
    }

    /// Closes (as stopped: with resets) every connection `which` picks; one already closing
    /// is left to finish its close.
    fn cut_where(&mut self, which: impl Fn(&Conn) -> bool) {
        let keys: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| which(c))
            .map(|(k, _)| k)
            .collect();
        for key in keys {
            self.close(key, CloseReason::Stopped);
        }
    }

    /// Takes a connection (counted in `shared.live` already); its slab key, `None` when the
    /// worker is stopping and closed it at once.
    fn admit(&mut self, job: Job, options: Arc<RelayOptions>) -> Option<usize> {
        if self.stopping {
            drop(job);
            if let Some(observer) = &options.observer {
                observer.closed(&CloseReason::Stopped, std::time::Duration::ZERO);
            }
            self.shared.live.fetch_sub(1, Ordering::SeqCst);
            self.shared.notify_closed();
            return None;
        }
        let serial = self.next_serial;
        self.next_serial += 1;
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let Job {
            first,
            second,
            prelude,
        } = job;
        let phase = Phase::Relaying(Relaying::default());
        // A listener that knows its client better than the socket does (hybrid vsock's
        // `guest-cid`) declared it; an `accept-proxy` header replaces it.
        let origin = first.origin().cloned();
        let key = self
            .conns
            .insert(Conn::new(serial, id, options, first, None, phase));
        self.conns[key].origin = origin;
        match prelude {
            Some(prelude) => self.start_prelude(key, prelude, second),
            None => self.open_second(key, second, None, Duration::ZERO),
        }
        Some(key)
    }

    // ---- relaying ----

    /// Both ends are open: sets up the directions' lanes and starts them.
    fn start_relay(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        let lanes = PerDir::from_fn(|dir| {
            let (source, sink) = conn.source_and_sink(dir);
            Some(Lane::setup(
                dir,
                source,
                sink,
                &conn.options,
                &mut self.registry,
                &self.ring,
            ))
        });
        conn.phase = Phase::Relaying(Relaying {
            lanes,
            lingering: false,
            parked: None,
        });
        conn.last_active = self.now;
        self.receive_sweep
            .on_start(&mut self.conns, key, &self.shared, self.index);
        let conn = &self.conns[key];
        if crate::log::enabled(crate::log::Level::Info) {
            let path = |dir| {
                conn.relaying()
                    .and_then(|r| r.lanes[dir].as_ref())
                    .map_or("none", Lane::path_name)
            };
            info!(
                "conn {}: relaying {} (first->second: {}, second->first: {})",
                conn.id,
                conn.label(),
                path(Direction::Forward),
                path(Direction::Backward)
            );
        }
        if let Some(t) = conn.options.idle_timeout {
            self.timers.push(Timer {
                at: conn.last_active + t,
                key,
                serial: conn.serial,
                kind: TimerKind::Idle,
            });
        }
        for dir in Direction::BOTH {
            self.pump(key, dir);
        }
        self.evaluate(key);
    }

    /// Decides, after a direction ended, whether the connection goes on.
    fn evaluate(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let linger = conn.options.linger;
        let serial = conn.serial;
        let Phase::Relaying(relaying) = &mut conn.phase else {
            return;
        };
        let states = [Direction::Forward, Direction::Backward]
            .map(|dir| relaying.lanes[dir].as_ref().map(Lane::state));
        match verdict(states, linger.is_some(), relaying.lingering) {
            Verdict::KeepGoing => {}
            Verdict::StartLinger => {
                relaying.lingering = true;
                self.timers.push(Timer {
                    at: self.now + linger.unwrap_or_default(),
                    key,
                    serial,
                    kind: TimerKind::Linger,
                });
            }
            Verdict::Close(reason) => self.close(key, reason),
        }
    }

    /// Ends a connection: cancels what it has in flight; `finalize` frees it once all returned.
    fn close(&mut self, key: usize, reason: CloseReason) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if !conn.begin_close(reason) {
            return;
        }
        let inflight = conn.inflight;
        park::arm_reset(conn, &mut self.ring, key);
        if conn.inflight == 0 {
            self.finalize(key);
            return;
        }
        for tag in 0..16u8 {
            if inflight & (1 << tag) != 0 {
                if let Some(op) = Op::from_tag(tag) {
                    self.ring.cancel(key, op);
                }
            }
        }
    }

    /// Frees a closed connection whose requests have all returned, and accounts for it.
    fn finalize(&mut self, key: usize) {
        let conn = self.conns.remove(key);
        let Phase::Closing {
            reason, relaying, ..
        } = &conn.phase
        else {
            unreachable!("only closing connections are finalized")
        };
        let delivered = relaying.lanes.map(|lane| match lane {
            Some(lane) if !lane.discard() => lane.delivered(),
            _ => 0,
        });
        stats::record_close(&conn, reason, delivered, &self.shared);
        if reason.truncates() {
            for end in [Some(&conn.first), conn.second.as_ref()]
                .into_iter()
                .flatten()
            {
                if let Err(e) = end.reset_on_close() {
                    debug!("conn {}: cannot arm a reset on close: {e}", conn.id);
                }
            }
        }
        // The endpoints close when this function returns, after the lanes let go of the
        // kernel's references.
        let Conn {
            phase,
            first: _first,
            second: _second,
            ..
        } = conn;
        let Phase::Closing { relaying, .. } = phase else {
            unreachable!("checked above")
        };
        if let Some(pair) = relaying.parked {
            self.registry.release_pair(&self.ring, pair);
            self.parking.unparked(&self.shared);
        }
        for lane in relaying.lanes.into_values().flatten() {
            lane.release(&mut self.registry, &self.ring, &mut self.pipes);
        }
        self.shared.live.fetch_sub(1, Ordering::SeqCst);
        self.shared.notify_closed();
        self.release_slot(key);
    }

    fn run_queue(&mut self) {
        for _ in 0..self.runq.len() {
            let Some((key, serial, dir)) = self.runq.pop_front() else {
                break;
            };
            if self.conns.get(key).is_some_and(|c| c.serial == serial) {
                self.pump(key, dir);
            }
        }
    }

    fn fire_timers(&mut self) {
        let now = self.now;
        while let Some(timer) = self.timers.pop_due(now) {
            let Some(conn) = self.conns.get(timer.key) else {
                continue;
            };
            if conn.serial != timer.serial {
                continue;
            }
            match timer.kind {
                TimerKind::Dial(epoch) => self.on_dial_timer(timer.key, epoch),
                TimerKind::Prelude => self.on_prelude_timer(timer.key),
                TimerKind::Retry(index) => {
                    if conn.is_relaying() {
                        self.pump(timer.key, Direction::from_index(index as usize));
                    }
                }
                TimerKind::Linger => {
                    if conn.is_relaying() {
                        self.close(timer.key, CloseReason::LingerExpired);
                    }
                }
                TimerKind::Idle => {
                    let Some(limit) = conn.options.idle_timeout else {
                        continue;
                    };
                    if !conn.is_relaying() {
                        continue;
                    }
                    let due = conn.last_active + limit;
                    if due <= now {
                        self.close(timer.key, CloseReason::IdleTimeout);
                    } else {
                        self.timers.push(Timer { at: due, ..timer });
                    }
                }
            }
        }
    }
}
