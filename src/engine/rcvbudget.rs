//! The receive-buffer budget: how much memory the relay's TCP receive queues may hold
//! together, and the fixed receive buffer each connection's sockets get once TCP's own
//! autotuning would overrun it.
//!
//! Why: a relay that falls behind its senders keeps their bytes in its sockets' receive
//! queues, and autotuning lets each queue grow to `tcp_rmem`'s maximum (32 MiB here). With a
//! few connections that is what makes one stream fast; with a thousand busy ones the queues
//! together pass `tcp_mem`'s pressure threshold, the kernel prunes and drops on every socket
//! of the machine, and loopback senders wait out retransmission timeouts. Measured on the
//! development VM (docs/architecture.md, Receive budget): 1,000 streams through vsplice moved 11-12 Gbit/s
//! with autotuned queues and 24-27 Gbit/s with each queue capped at 256 KiB to 1 MiB (this
//! budget gives 383 KiB), while one stream lost ~7% under such a cap. So the cap applies only
//! when the budget split over the connections that are moving data is below what autotuning
//! usually needs; a stream among thousands of idle connections keeps autotuning. The policy
//! is pure; the worker counts busy connections and applies it to sockets.

/// Above this per-socket share, autotuning is left alone (`tcp_wmem`'s default maximum, and
/// about what one loopback stream's receive queue reaches).
pub(crate) const AUTOTUNE_ENOUGH: usize = 4 << 20;

/// No socket is capped below this (a few full-sized segments).
pub(crate) const FLOOR: usize = 64 << 10;

/// Memory the relay's TCP receive queues may hold together, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiveBudget(pub usize);

impl ReceiveBudget {
    /// The budget a setting asks for (`--receive-budget`, the config's `receive-budget`):
    /// 0 turns it off, a number is bytes, and no setting means [`ReceiveBudget::from_system`].
    pub fn resolve(setting: Option<usize>) -> Option<ReceiveBudget> {
        match setting {
            Some(0) => None,
            Some(n) => Some(ReceiveBudget(n)),
            None => ReceiveBudget::from_system(),
        }
    }

    /// Half of the kernel's TCP memory-pressure threshold (`net.ipv4.tcp_mem`, second field,
    /// in pages): the other half stays for the relay's peers' queues and everything else on
    /// the machine. `None` where the file cannot be read.
    pub fn from_system() -> Option<ReceiveBudget> {
        let text = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_mem").ok()?;
        let page = crate::sys::limits::page_size();
        Self::from_tcp_mem(&text, page)
    }

    /// Parses the contents of `/proc/sys/net/ipv4/tcp_mem` (`min pressure max`, in pages).
    pub fn from_tcp_mem(text: &str, page_size: usize) -> Option<ReceiveBudget> {
        let pressure: usize = text.split_whitespace().nth(1)?.parse().ok()?;
        Some(ReceiveBudget(pressure.saturating_mul(page_size) / 2))
    }

    /// The receive buffer (the kernel's `sk_rcvbuf`, bytes) for each TCP socket of a relay
    /// with `busy` connections moving data, two sockets each; `None` while autotuning fits
    /// the budget. Idle connections do not count: their queues are empty and autotuning
    /// grows only the buffers of sockets that receive.
    pub fn cap(self, busy: usize) -> Option<usize> {
        if busy == 0 {
            return None;
        }
        let share = self.0 / busy.saturating_mul(2);
        (share < AUTOTUNE_ENOUGH).then_some(share.max(FLOOR))
    }

    /// Whether a cap could apply at all with `live` connections (all of them busy): until
    /// then, nobody needs to count busy connections.
    pub fn could_cap(self, live: usize) -> bool {
        self.cap(live).is_some()
    }
}

/// Whether a worker whose connections were last capped at `applied` should cap them all
/// again for `new`: when a cap starts or ends, or has at least halved or doubled, so a burst
/// of connections costs a few sweeps, not one per connection.
pub(crate) fn worth_a_sweep(applied: Option<usize>, new: Option<usize>) -> bool {
    match (applied, new) {
        (None, None) => false,
        (None, Some(_)) | (Some(_), None) => true,
        (Some(old), Some(new)) => new <= old / 2 || new >= old.saturating_mul(2),
    }
}

/// The receive buffer a connection whose sockets are capped at `current` should get under
/// the worker's cap `cap`: the cap, or, once no cap applies, [`AUTOTUNE_ENOUGH`] for sockets
/// that were capped (a fixed buffer cannot go back to autotuning). `None`: leave it.
pub(crate) fn target(current: Option<usize>, cap: Option<usize>) -> Option<usize> {
    let want = cap.or(current.map(|_| AUTOTUNE_ENOUGH));
    (want != current).then_some(want).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine's tcp_mem: pressure at 383,870 pages of 4 KiB = 1.46 GiB.
    const TCP_MEM: &str = "287901\t383870\t575802\n";

    #[test]
    fn the_budget_is_half_the_pressure_threshold() {
        let b = ReceiveBudget::from_tcp_mem(TCP_MEM, 4096).unwrap();
        assert_eq!(b.0, 383_870 * 4096 / 2);
        assert_eq!(ReceiveBudget::from_tcp_mem("", 4096), None);
        assert_eq!(ReceiveBudget::from_tcp_mem("1 x 3", 4096), None);
    }

    #[test]
    fn few_connections_keep_autotuning() {
        let b = ReceiveBudget::from_tcp_mem(TCP_MEM, 4096).unwrap();
        assert_eq!(b.cap(0), None);
        assert_eq!(b.cap(1), None);
        assert_eq!(b.cap(93), None);
        // 94 connections: 1.46 GiB / 2 / 188 sockets is just under 4 MiB.
        assert!(b.cap(94).is_some_and(|c| c < AUTOTUNE_ENOUGH));
    }

    #[test]
    fn many_connections_share_the_budget() {
        let b = ReceiveBudget::from_tcp_mem(TCP_MEM, 4096).unwrap();
        // 1,000 connections: 383 KiB per socket.
        assert_eq!(b.cap(1000), Some(383_870 * 4096 / 2 / 2000));
        assert_eq!(b.cap(1000).unwrap() >> 10, 383);
        // Ever more connections never go below the floor.
        assert_eq!(b.cap(1_000_000), Some(FLOOR));
        // No busy connection, nothing to cap, however small the budget.
        assert_eq!(ReceiveBudget(0).cap(0), None);
        assert_eq!(ReceiveBudget(0).cap(1), Some(FLOOR));
    }

    #[test]
    fn a_cap_needs_enough_live_connections() {
        let b = ReceiveBudget::from_tcp_mem(TCP_MEM, 4096).unwrap();
        assert!(!b.could_cap(93));
        assert!(b.could_cap(94));
    }

    #[test]
    fn sweeps_happen_when_the_cap_starts_ends_halves_or_doubles() {
        assert!(!worth_a_sweep(None, None));
        assert!(worth_a_sweep(None, Some(1 << 20)));
        assert!(worth_a_sweep(Some(1 << 20), None));
        assert!(!worth_a_sweep(Some(1 << 20), Some(600 << 10)));
        assert!(worth_a_sweep(Some(1 << 20), Some(512 << 10)));
        assert!(!worth_a_sweep(Some(512 << 10), Some(1000 << 10)));
        assert!(worth_a_sweep(Some(512 << 10), Some(1 << 20)));
    }

    #[test]
    fn capped_sockets_follow_the_cap_and_get_room_when_it_ends() {
        // Never capped, no cap: left alone (autotuning).
        assert_eq!(target(None, None), None);
        assert_eq!(target(None, Some(FLOOR)), Some(FLOOR));
        assert_eq!(target(Some(FLOOR), Some(FLOOR)), None);
        assert_eq!(target(Some(FLOOR), Some(1 << 20)), Some(1 << 20));
        assert_eq!(target(Some(FLOOR), None), Some(AUTOTUNE_ENOUGH));
        assert_eq!(target(Some(AUTOTUNE_ENOUGH), None), None);
    }
}
