//! Accepting on every worker: an [`AcceptGroup`] is one listening address the workers accept
//! on themselves, each on its own ring, and then dial from there (no acceptor thread, no
//! hand-over). The group owns its listening descriptors (duplicates of the caller's, closed
//! when the group drops), what turns an accepted socket into a job ([`Admit`]: socket
//! options, allow list, observer, the relay's options), and the `max-children` slots.
//!
//! Without `max-children` every worker keeps one ACCEPT armed. With it, a worker
//! arms a single-shot ACCEPT only after reserving a slot (`used < max`, one compare-and-swap),
//! so accepted connections plus armed accepts never exceed the limit, across all workers; the
//! slot passes to the connection and comes back when it closes. A worker that found no free
//! slot sets its bit in `waiting` *before* it tries, and whoever frees a slot reads `waiting`
//! after it freed it, so one of the two always sees the other.
//!
//! A worker on a shared listener re-arms a single-shot ACCEPT after each connection rather
//! than keeping a multishot one: a listener wakes one exclusive waiter, and a multishot
//! request stays first in the listener's wait queue, so one worker took every connection
//! (64 concurrent clients, 2 workers: 64 and 0 or 0 and 64, every run); re-armed, a worker
//! queues up behind the others and the connections spread (`tests/accept.rs`). Per-worker
//! SO_REUSEPORT listeners, each with its own queue, keep a multishot ACCEPT armed.
//!
//! Which strategy is the default, measured on the 2-core development machine, release build,
//! `perf/run.py --rounds 3 --time 3`, medians, each pair interleaved in one run:
//!
//! | case | shared (default) | reuseport | shared multishot | main's acceptor thread |
//! |---|---:|---:|---:|---:|
//! | `crr` (8 clients), vs main | 13,844 = 1.02x (0.97x direct) | 13,964 = 1.04x | - | 13,611 / 13,432 |
//! | `crr`, vs shared | - | 14,205 = 1.04x | 14,079 = 1.01x | - |
//! | `scale-crr` (2 clients), vs main | 12,457 = 1.09x (0.88x direct) | - | - | 11,466 (0.81x) |
//! | `scale-crr`, vs shared | - | 12,565 = 0.97x | - | - |
//!
//! With 8 clients every path is bound by the clients and the echo server (direct: about
//! 14,200 conn/s), so the differences there are within the rounds' spread; with 2 clients
//! the shared listener is ahead of the acceptor thread in every round. Per-worker
//! SO_REUSEPORT listeners (`VSPLICE_ACCEPT=reuseport`, TCP only) were no faster, and cost
//! more: a connection hashed to a busy worker waits behind it while another idles, under
//! `max-children` an armed ACCEPT on one listener holds a slot that a client queued on
//! another cannot use, and any process of the same user may join the port's group and take
//! connections. So the default is one shared listener, for every kind (TCP, UNIX, vsock,
//! inherited sockets).
//!
//! Re-arming alone does not spread a burst: a worker that re-arms while connections wait in
//! the listener's queue takes the next one at once (io_uring tries the accept inline before
//! it waits). On the lent 16-core machine 4 bench streams went 0.72x the acceptor thread's
//! throughput (127.8 against 176.8 Gbit/s; the thread dealt connections round-robin) because
//! several landed on one worker. So a worker on the shared listener arms only while it has
//! at most [`BALANCE_SLACK`] more of the group's connections open than the least loaded
//! worker; one held back sets its bit in `held_back` before it compares (as with `waiting`),
//! and a worker that opens a connection wakes those held back that are no longer ahead. The
//! least loaded worker always arms, so some worker always accepts.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use super::config::RelayOptions;
use super::job::Job;
use crate::sys::eventfd::EventFd;
use crate::sys::socket::Socket;

/// How a forking listener's connections are accepted (the module's table compares them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AcceptStrategy {
    /// Every worker accepts on the one listening socket, one single-shot ACCEPT at a time
    /// (the default).
    Shared,
    /// As `Shared`, with a multishot ACCEPT per worker.
    SharedMultishot,
    /// Every worker accepts on its own SO_REUSEPORT listener (TCP only; others share).
    ReusePort,
    /// The main thread accepts and hands connections to the workers (the old path).
    Thread,
}

impl AcceptStrategy {
    /// Whether workers keep a multishot ACCEPT armed (where no `max-children` applies).
    pub(crate) fn multishot(self) -> bool {
        matches!(
            self,
            AcceptStrategy::SharedMultishot | AcceptStrategy::ReusePort
        )
    }

    /// From `VSPLICE_ACCEPT` (`shared`, `shared-multishot`, `reuseport`, `thread`), a switch
    /// for measuring;
    /// unset or unknown: [`AcceptStrategy::Shared`].
    pub(crate) fn from_env() -> AcceptStrategy {
        match std::env::var("VSPLICE_ACCEPT").as_deref() {
            Ok("reuseport") => AcceptStrategy::ReusePort,
            Ok("shared-multishot") => AcceptStrategy::SharedMultishot,
            Ok("thread") => AcceptStrategy::Thread,
            _ => AcceptStrategy::Shared,
        }
    }
}

/// What a listener's owner does with each accepted socket, on the worker that accepted it.
pub(crate) trait Admit: Send + Sync {
    /// The most connections of this listener open at once; read at every reservation, so a
    /// reload may change it (but not whether there is one: that needs a new group).
    fn max_children(&self) -> Option<usize>;
    /// Turns an accepted socket into a job with its relay's options (socket options, allow
    /// list, observer, logging); `None`: refused, the socket is closed.
    fn admit(&self, socket: Socket) -> Option<(Job, Arc<RelayOptions>)>;
}

/// How many more open connections than the least loaded worker a worker may have and still
/// accept on a shared listener.
pub(crate) const BALANCE_SLACK: usize = 0;

/// One listening address the workers accept on.
pub(crate) struct AcceptGroup {
    pub name: String,
    /// One shared listener, or one per worker (SO_REUSEPORT): worker `i` uses `i % len`.
    listeners: Vec<OwnedFd>,
    pub admit: Box<dyn Admit>,
    /// Whether accepts reserve `max-children` slots (fixed for the group's life).
    pub limited: bool,
    /// Whether a worker keeps a multishot ACCEPT armed (unlimited groups only).
    pub multishot: bool,
    /// Slots taken: connections open plus single-shot accepts armed.
    used: AtomicUsize,
    /// Workers (bit = index % 64) that found no free slot and wait to be woken.
    waiting: WorkerSet,
    /// Connections accepted per worker (sized when the engine starts the group).
    accepted: OnceLock<Vec<AtomicU64>>,
    /// This group's connections open on each worker (the balance of a shared listener).
    open: OnceLock<Vec<AtomicUsize>>,
    /// Workers holding back their ACCEPT until the others catch up (a bit each).
    held_back: WorkerSet,
    /// Workers still holding the group (an accept may be in flight there).
    attached: Mutex<usize>,
    detached: Condvar,
    /// The workers' wake-up eventfds, set when the engine starts the group.
    wakes: OnceLock<Vec<Arc<EventFd>>>,
}

impl std::fmt::Debug for AcceptGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcceptGroup")
            .field("name", &self.name)
            .field("listeners", &self.listeners.len())
            .field("limited", &self.limited)
            .finish()
    }
}

impl AcceptGroup {
    /// A group over `listeners` (the group closes them when it drops). `max_children` is
    /// read from `admit` once here to decide whether accepts reserve slots.
    pub(crate) fn new(name: String, listeners: Vec<OwnedFd>, admit: Box<dyn Admit>) -> AcceptGroup {
        assert!(!listeners.is_empty(), "a group needs a listener");
        AcceptGroup {
            name,
            listeners,
            limited: admit.max_children().is_some(),
            multishot: false,
            admit,
            used: AtomicUsize::new(0),
            waiting: WorkerSet::default(),
            accepted: OnceLock::new(),
            open: OnceLock::new(),
            held_back: WorkerSet::default(),
            attached: Mutex::new(0),
            detached: Condvar::new(),
            wakes: OnceLock::new(),
        }
    }

    /// Sizes the group for `wakes.len()` workers, all attached (done by the engine, once:
    /// false if the group was started before).
    pub(super) fn attach(&self, wakes: Vec<Arc<EventFd>>) -> bool {
        let workers = wakes.len();
        if self.wakes.set(wakes).is_err() {
            return false;
        }
        let _ = self
            .accepted
            .set((0..workers).map(|_| AtomicU64::new(0)).collect());
        let _ = self
            .open
            .set((0..workers).map(|_| AtomicUsize::new(0)).collect());
        self.waiting.size(workers);
        self.held_back.size(workers);
        *lock(&self.attached) = workers;
        true
    }

    /// Makes unlimited accepts multishot (see [`AcceptStrategy`] for when).
    pub(crate) fn with_multishot(mut self, on: bool) -> AcceptGroup {
        self.multishot = on && !self.limited;
        self
    }

    /// The listening descriptor worker `index` accepts on.
    pub(crate) fn listener_for(&self, index: usize) -> RawFd {
        self.listeners[index % self.listeners.len()].as_raw_fd()
    }

    /// Takes a slot if one is free. Worker `index` is marked waiting first, and unmarked
    /// when it got one, so a slot freed meanwhile wakes it.
    pub(crate) fn reserve(&self, index: usize) -> bool {
        let Some(max) = self.admit.max_children() else {
            return true;
        };
        self.waiting.insert(index);
        let got = self
            .used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                (used < max).then_some(used + 1)
            })
            .is_ok();
        if got {
            self.waiting.remove(index);
        }
        got
    }

    /// Gives a slot back: the connection holding it closed, or the accept that held it
    /// returned without one. Unless `rearm_self` (the caller will take it itself), wakes the
    /// workers waiting for a slot.
    pub(crate) fn release(&self, index: usize, rearm_self: bool) {
        if !self.limited {
            return;
        }
        self.used.fetch_sub(1, Ordering::SeqCst);
        if rearm_self {
            return;
        }
        self.wake_waiting(index);
    }

    /// Wakes the workers (other than `index`) that wait for a slot.
    pub(crate) fn wake_waiting(&self, index: usize) {
        for i in self.waiting.members() {
            if i != index && self.waiting.remove(i) {
                self.wake(i);
            }
        }
    }

    fn wake(&self, index: usize) {
        if let Some(wake) = self.wakes.get().and_then(|w| w.get(index)) {
            wake.notify();
        }
    }

    /// Slots taken now (connections open plus accepts armed).
    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::SeqCst)
    }

    /// Whether worker `index` may arm its ACCEPT now as far as balance goes: always on
    /// per-worker listeners (multishot, the kernel spreads), else only while it is at most
    /// [`BALANCE_SLACK`] connections ahead of the least loaded worker. One held back is woken
    /// by [`AcceptGroup::opened`] once it is no longer ahead.
    pub(crate) fn may_arm(&self, index: usize) -> bool {
        let Some(open) = self.open.get() else {
            return true;
        };
        if self.multishot || open.len() < 2 {
            return true;
        }
        // Set before comparing: a worker that opens a connection after this reads the mark.
        self.held_back.insert(index);
        let min = least(open);
        if open[index].load(Ordering::SeqCst) <= min + BALANCE_SLACK {
            self.held_back.remove(index);
            return true;
        }
        false
    }

    /// Worker `index` opened one of the group's connections: wakes the workers held back
    /// that are no longer ahead of the least loaded one.
    pub(crate) fn opened(&self, index: usize) {
        let Some(open) = self.open.get() else {
            return;
        };
        open[index].fetch_add(1, Ordering::SeqCst);
        let held = self.held_back.members();
        if held.is_empty() {
            return;
        }
        let min = least(open);
        for i in held {
            if open[i].load(Ordering::SeqCst) <= min + BALANCE_SLACK && self.held_back.remove(i) {
                self.wake(i);
            }
        }
    }

    /// One of the group's connections on worker `index` closed (that worker re-arms itself
    /// if it was held back).
    pub(crate) fn closed(&self, index: usize) {
        if let Some(c) = self.open.get().and_then(|o| o.get(index)) {
            c.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// This group's connections open on each worker now.
    #[cfg(test)]
    pub(crate) fn open_per_worker(&self) -> Vec<usize> {
        self.open
            .get()
            .map(|o| o.iter().map(|c| c.load(Ordering::SeqCst)).collect())
            .unwrap_or_default()
    }

    pub(crate) fn count_accepted(&self, index: usize) {
        if let Some(c) = self.accepted.get().and_then(|a| a.get(index)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Connections accepted by each worker so far.
    pub(crate) fn accepted_per_worker(&self) -> Vec<u64> {
        self.accepted
            .get()
            .map(|a| a.iter().map(|c| c.load(Ordering::Relaxed)).collect())
            .unwrap_or_default()
    }

    /// A worker let go of the group: nothing of it is in flight there any more.
    pub(super) fn detach(&self) {
        let mut attached = lock(&self.attached);
        *attached = attached.saturating_sub(1);
        if *attached == 0 {
            self.detached.notify_all();
        }
    }

    /// Blocks until every worker let go of the group.
    pub(super) fn wait_detached(&self) {
        let mut attached = lock(&self.attached);
        while *attached > 0 {
            attached = self
                .detached
                .wait(attached)
                .unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// The fewest connections any worker has open.
fn least(open: &[AtomicUsize]) -> usize {
    open.iter()
        .map(|c| c.load(Ordering::SeqCst))
        .min()
        .unwrap_or(0)
}

/// A set of worker indices that the workers update concurrently: a bit per worker, for any
/// number of workers (sized once, when the group is attached; empty and inert before).
#[derive(Debug, Default)]
struct WorkerSet {
    words: OnceLock<Vec<AtomicU64>>,
}

impl WorkerSet {
    fn size(&self, workers: usize) {
        let _ = self.words.set(
            (0..workers.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
        );
    }

    fn word(&self, index: usize) -> Option<&AtomicU64> {
        self.words.get()?.get(index / 64)
    }

    fn insert(&self, index: usize) {
        if let Some(w) = self.word(index) {
            w.fetch_or(1 << (index % 64), Ordering::SeqCst);
        }
    }

    /// Takes `index` out; whether it was in (so of two removers, one alone wakes it).
    fn remove(&self, index: usize) -> bool {
        let bit = 1u64 << (index % 64);
        self.word(index)
            .is_some_and(|w| w.fetch_and(!bit, Ordering::SeqCst) & bit != 0)
    }

    fn members(&self) -> Vec<usize> {
        let Some(words) = self.words.get() else {
            return Vec::new();
        };
        let mut members = Vec::new();
        for (n, w) in words.iter().enumerate() {
            let mut bits = w.load(Ordering::SeqCst);
            while bits != 0 {
                members.push(n * 64 + bits.trailing_zeros() as usize);
                bits &= bits - 1;
            }
        }
        members
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Limit(Option<usize>);
    impl Admit for Limit {
        fn max_children(&self) -> Option<usize> {
            self.0
        }
        fn admit(&self, _: Socket) -> Option<(Job, Arc<RelayOptions>)> {
            None
        }
    }

    fn group(limit: Option<usize>) -> AcceptGroup {
        let fd: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        AcceptGroup::new("t".into(), vec![fd], Box::new(Limit(limit)))
    }

    #[test]
    fn slots_never_exceed_the_limit_and_a_release_wakes_a_waiting_worker() {
        let g = group(Some(2));
        assert!(g.attach(wakes(2)));
        assert!(g.limited);
        assert!(g.reserve(0));
        assert!(g.reserve(1));
        assert!(!g.reserve(1), "third slot refused");
        assert_eq!(g.used(), 2);
        assert_eq!(g.waiting.members(), vec![1], "worker 1 waits");
        g.release(0, false);
        assert_eq!(
            g.waiting.members(),
            Vec::<usize>::new(),
            "worker 1 was woken"
        );
        assert!(g.reserve(1));
        assert!(!g.reserve(0));
    }

    #[test]
    fn a_worker_ahead_holds_back_until_the_others_catch_up_and_is_woken_then() {
        let g = group(None);
        let wakes: Vec<Arc<EventFd>> = (0..2).map(|_| Arc::new(EventFd::new().unwrap())).collect();
        assert!(g.attach(wakes.clone()));
        assert!(g.may_arm(0) && g.may_arm(1), "level: both accept");
        g.opened(0);
        assert!(!g.may_arm(0), "worker 0 is ahead: it holds back");
        assert!(g.may_arm(1));
        assert_eq!(g.held_back.members(), vec![0]);
        g.opened(1);
        assert!(g.held_back.members().is_empty(), "worker 0 was woken");
        assert!(wakes[0].drain() > 0, "through its eventfd");
        assert!(g.may_arm(0));
        g.closed(0);
        g.closed(1);
        assert_eq!(g.open_per_worker(), vec![0, 0]);
    }

    fn wakes(n: usize) -> Vec<Arc<EventFd>> {
        (0..n).map(|_| Arc::new(EventFd::new().unwrap())).collect()
    }

    #[test]
    fn workers_64_apart_wait_and_are_woken_each_for_itself() {
        let g = group(Some(1));
        let w = wakes(100);
        assert!(g.attach(w.clone()));
        assert!(g.reserve(99), "the one slot");
        assert!(!g.reserve(0));
        assert!(!g.reserve(64));
        assert_eq!(g.waiting.members(), vec![0, 64]);
        g.release(99, false);
        assert!(w[0].drain() > 0 && w[64].drain() > 0, "both woken");
        assert!(g.reserve(64));
        assert!(
            !g.reserve(0),
            "worker 0 waits on, not cleared by worker 64's reserve"
        );
        assert_eq!(g.waiting.members(), vec![0]);
    }

    #[test]
    fn an_unlimited_group_always_has_room() {
        let g = group(None);
        assert!(!g.limited);
        for _ in 0..10 {
            assert!(g.reserve(0));
        }
        assert_eq!(g.used(), 0);
    }
}
