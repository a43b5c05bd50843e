//! A worker's timers: per-connection deadlines (a dial's wait, a prelude's, `-T` inactivity, `-t`
//! linger, a direction's retry after running out of descriptors) in one heap, and the one place that decides how long the worker may sleep.
//!
//! Timers are never cancelled: each names its connection's slab key and serial, and a timer
//! of a connection that is gone (or of an earlier dial wait) is recognised and skipped.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum TimerKind {
    /// The deadline of dial wait number `epoch`.
    Dial(u32),
    /// A prelude's deadline (its stage's, checked when it fires).
    Prelude,
    Idle,
    Linger,
    /// Run direction number `index` again: it could not take a pipe for want of descriptors.
    Retry(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Timer {
    pub at: Instant,
    pub key: usize,
    pub serial: u64,
    pub kind: TimerKind,
}

#[derive(Debug, Default)]
pub(super) struct Timers {
    heap: BinaryHeap<Reverse<Timer>>,
}

impl Timers {
    pub(super) fn push(&mut self, timer: Timer) {
        self.heap.push(Reverse(timer));
    }

    /// The earliest timer due at `now`, taken off the heap.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        let Reverse(timer) = *self.heap.peek()?;
        if timer.at > now {
            return None;
        }
        self.heap.pop();
        Some(timer)
    }

    /// When the worker must wake up next: the earliest timer, or the earliest of the
    /// policies' sweeps (`None` for a policy with nothing to do); `None`: only on I/O.
    pub(super) fn next_deadline(
        &self,
        sweeps: impl IntoIterator<Item = Option<Instant>>,
    ) -> Option<Instant> {
        self.heap
            .peek()
            .map(|Reverse(t)| t.at)
            .into_iter()
            .chain(sweeps.into_iter().flatten())
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timers_fire_in_order_and_the_deadline_is_the_earliest_of_timers_and_sweeps() {
        let now = Instant::now();
        let mut timers = Timers::default();
        assert_eq!(timers.next_deadline([None, None]), None);
        let later = Timer {
            at: now + Duration::from_secs(2),
            key: 1,
            serial: 1,
            kind: TimerKind::Idle,
        };
        let sooner = Timer {
            at: now + Duration::from_secs(1),
            key: 2,
            serial: 2,
            kind: TimerKind::Linger,
        };
        timers.push(later);
        timers.push(sooner);
        assert_eq!(timers.next_deadline([None]), Some(sooner.at));
        let sweep = now + Duration::from_millis(100);
        assert_eq!(timers.next_deadline([Some(sweep), None]), Some(sweep));
        assert_eq!(timers.pop_due(now), None, "nothing is due yet");
        let at = now + Duration::from_secs(3);
        assert_eq!(timers.pop_due(at), Some(sooner));
        assert_eq!(timers.pop_due(at), Some(later));
        assert_eq!(timers.pop_due(at), None);
    }
}
