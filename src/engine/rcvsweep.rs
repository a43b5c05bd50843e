//! The receive budget at work in a worker (the policy itself is [`super::rcvbudget`]): every
//! [`BUDGET_SWEEP`] while enough connections are live for a cap to matter, the worker counts
//! its busy connections (data moved within [`BUSY_WINDOW`]) into the process-wide count,
//! recomputes the cap, and applies it to its connections' TCP sockets when it changed enough.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use slab::Slab;

use super::conn::Conn;
use super::rcvbudget::{self, ReceiveBudget};
use super::shared::Shared;
use crate::info;

/// How often a worker counts its busy connections while a receive-buffer cap may apply.
const BUDGET_SWEEP: Duration = Duration::from_millis(100);
/// A connection that moved data this recently counts as busy for the receive budget.
const BUSY_WINDOW: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(super) struct ReceiveSweep {
    budget: Option<ReceiveBudget>,
    /// The receive-buffer cap this worker last applied to all its connections.
    cap: Option<usize>,
    /// Busy connections of this worker at the last sweep (part of `Shared::busy`).
    busy: usize,
    next_sweep: Instant,
}

impl ReceiveSweep {
    pub(super) fn new(budget: Option<ReceiveBudget>) -> ReceiveSweep {
        ReceiveSweep {
            budget,
            cap: None,
            busy: 0,
            next_sweep: Instant::now(),
        }
    }

    /// Whether sweeps should run: a cap could apply, one is in force, or busy connections
    /// are still counted (only ever so with a budget).
    fn wanted(&self, shared: &Shared) -> bool {
        let live = shared.live.load(Ordering::Relaxed);
        self.budget.is_some_and(|b| b.could_cap(live)) || self.cap.is_some() || self.busy > 0
    }

    /// When the next sweep is due, while sweeps are wanted.
    pub(super) fn due(&self, shared: &Shared) -> Option<Instant> {
        self.wanted(shared).then_some(self.next_sweep)
    }

    /// Recounts the busy connections and updates the cap, when a sweep is due.
    pub(super) fn sweep(
        &mut self,
        conns: &mut Slab<Conn>,
        shared: &Shared,
        worker: usize,
        now: Instant,
    ) {
        if now < self.next_sweep || !self.wanted(shared) {
            return;
        }
        self.next_sweep = now + BUDGET_SWEEP;
        let busy = count_busy(conns.iter().map(|(_, c)| c), now);
        if busy >= self.busy {
            shared.busy.fetch_add(busy - self.busy, Ordering::Relaxed);
        } else {
            shared.busy.fetch_sub(self.busy - busy, Ordering::Relaxed);
        }
        self.busy = busy;
        self.update(conns, shared, worker);
    }

    /// Counts a connection that starts relaying as busy at once (the next sweep recounts),
    /// so a burst of connections is capped as it arrives, and gives it the worker's cap.
    pub(super) fn on_start(
        &mut self,
        conns: &mut Slab<Conn>,
        key: usize,
        shared: &Shared,
        worker: usize,
    ) {
        let Some(budget) = self.budget else {
            return;
        };
        // Too few connections for any cap: nothing to count (a sweep recounts from scratch
        // once there are enough).
        if !budget.could_cap(shared.live.load(Ordering::Relaxed)) && self.busy == 0 {
            return;
        }
        self.busy += 1;
        shared.busy.fetch_add(1, Ordering::Relaxed);
        self.update(conns, shared, worker);
        conns[key].apply_receive_cap(self.cap);
    }

    /// Recomputes the cap from the process-wide busy count and, when it changed enough,
    /// applies it to every connection this worker relays.
    fn update(&mut self, conns: &mut Slab<Conn>, shared: &Shared, worker: usize) {
        let Some(budget) = self.budget else {
            return;
        };
        let total = shared.busy.load(Ordering::Relaxed);
        let cap = budget.cap(total);
        if !rcvbudget::worth_a_sweep(self.cap, cap) {
            return;
        }
        self.cap = cap;
        match cap {
            Some(cap) => info!(
                "worker {worker}: TCP receive buffers capped at {} KiB ({total} busy connections, \
                 receive budget {} MiB)",
                cap >> 10,
                budget.0 >> 20
            ),
            None => info!(
                "worker {worker}: TCP receive buffers no longer capped ({total} busy connections)"
            ),
        }
        for (_, conn) in conns.iter_mut() {
            if conn.is_relaying() {
                conn.apply_receive_cap(cap);
            }
        }
    }
}

/// Connections relaying that moved data within BUSY_WINDOW of `now`.
fn count_busy<'a>(conns: impl Iterator<Item = &'a Conn>, now: Instant) -> usize {
    conns
        .filter(|c| c.is_relaying() && now.saturating_duration_since(c.last_active) < BUSY_WINDOW)
        .count()
}

#[cfg(test)]
mod tests {
    use super::super::Mode;
    use super::super::testing::{options, relaying_conn, tcp_endpoint};
    use super::*;

    /// What SO_RCVBUF reads back after a cap of `bytes`: the cap, unless an unprivileged
    /// process is held to net.core.rmem_max (doubled by the kernel).
    fn expected(bytes: usize) -> usize {
        if nix::unistd::geteuid().is_root() {
            return bytes;
        }
        let max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(usize::MAX / 2);
        bytes.min(2 * max)
    }

    fn receive_buffer(conn: &Conn) -> usize {
        let fd = conn.first.read_fd().unwrap();
        nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::RcvBuf).unwrap()
    }

    #[test]
    fn a_busy_start_is_capped_at_once_and_an_idle_sweep_lifts_the_cap() {
        let shared = Shared::new().unwrap();
        let (first, _a) = tcp_endpoint();
        let (second, _b) = tcp_endpoint();
        let mut conns = Slab::new();
        let key = conns.insert(relaying_conn(first, second, options(Mode::Splice)));
        shared.live.store(1, Ordering::Relaxed);
        // 1 MiB for one busy connection (two sockets): 512 KiB each.
        let mut budget = ReceiveSweep::new(Some(ReceiveBudget(1 << 20)));
        budget.on_start(&mut conns, key, &shared, 0);
        assert_eq!(shared.busy.load(Ordering::Relaxed), 1);
        assert_eq!(budget.cap, Some(512 << 10));
        assert_eq!(conns[key].receive_cap, Some(512 << 10));
        // The cap is the kernel's sk_rcvbuf (what SO_RCVBUF reads back).
        assert_eq!(receive_buffer(&conns[key]), expected(512 << 10));
        assert!(
            budget.due(&shared).is_some(),
            "sweeps run while a cap is in force"
        );

        // A second later nothing moved: the sweep counts no busy connection and lifts the cap.
        conns[key].last_active = Instant::now() - BUSY_WINDOW;
        budget.sweep(&mut conns, &shared, 0, Instant::now());
        assert_eq!(shared.busy.load(Ordering::Relaxed), 0);
        assert_eq!(budget.cap, None);
        assert_eq!(conns[key].receive_cap, Some(rcvbudget::AUTOTUNE_ENOUGH));
        assert_eq!(
            receive_buffer(&conns[key]),
            expected(rcvbudget::AUTOTUNE_ENOUGH)
        );
    }

    #[test]
    fn without_a_budget_nothing_is_counted_or_swept() {
        let shared = Shared::new().unwrap();
        let (first, _a) = tcp_endpoint();
        let (second, _b) = tcp_endpoint();
        let mut conns = Slab::new();
        let key = conns.insert(relaying_conn(first, second, options(Mode::Splice)));
        shared.live.store(100_000, Ordering::Relaxed);
        let mut budget = ReceiveSweep::new(None);
        budget.on_start(&mut conns, key, &shared, 0);
        assert_eq!(shared.busy.load(Ordering::Relaxed), 0);
        assert_eq!(conns[key].receive_cap, None);
        assert_eq!(budget.due(&shared), None);
    }
}
