//! A worker's clock: the time once a loop turn, mostly without a system call.
//!
//! In a guest without a vDSO clock (user-mode Linux, where the vsock lab runs) every
//! `Instant::now()` is a system call, and with one read a turn the worker made more clock reads
//! than `io_uring_enter` calls (`relay_syscalls_on_vsock`: 336 against 289 for 32 MiB vsock ->
//! TCP), where a copying relay makes none. So where the CPU has an invariant time-stamp
//! counter (`sys::tsc`), the clock answers from the counter: it reads the real clock for its
//! first [`CALIBRATION`] (every read then also measures the counter's rate), and afterwards
//! only when the counter says [`REANCHOR`] has passed since its last real read (a wait that
//! slept longer than that is always followed by a real read), refining the rate over the whole
//! span each time. A real read that disagrees with the counter by more than [`TOLERANCE`] (a
//! rate measured across a preemption, a counter that jumped or stopped: a migrated VM, CPUs
//! out of step) starts the calibration again; the [`MISSES`]th such read, or a counter that
//! ran backward, ends the counter's use for good. Answers never go backward. Without such a counter every call is a
//! real read, as before.

use std::time::{Duration, Instant};

use crate::sys::tsc;

/// How long the clock reads the real clock before it trusts the counter's rate.
pub(super) const CALIBRATION: Duration = Duration::from_millis(20);

/// Counter time after which the clock reads the real clock again.
pub(super) const REANCHOR: Duration = Duration::from_millis(50);

/// The largest disagreement between counter and real clock taken for measuring error.
pub(super) const TOLERANCE: Duration = Duration::from_millis(5);

/// Disagreements with the real clock after which the counter is not used any more.
pub(super) const MISSES: u8 = 3;

/// A worker's clock (see the module doc).
#[derive(Debug)]
pub(super) struct Clock {
    counter: Option<Counter>,
    /// The last answer: answers never go backward.
    last: Instant,
}

/// The counter's state: where it was calibrated, the last real read, and the rate.
#[derive(Debug, Clone, Copy)]
struct Counter {
    /// The first real read and the counter then: the rate is measured over the whole span.
    origin: (Instant, u64),
    /// The latest real read and the counter then.
    anchor: (Instant, u64),
    /// Nanoseconds per count, once calibrated.
    ns_per_count: Option<f64>,
    /// Real reads so far that disagreed with the counter.
    misses: u8,
}

impl Clock {
    /// A clock on this CPU's counter where it is invariant, else on the real clock alone.
    pub(super) fn new() -> Clock {
        Clock::with_counter(tsc::invariant(), Instant::now(), tsc::read())
    }

    /// A clock whose first real read was `real` at count `count` (`counter`: whether to use
    /// the counter at all).
    fn with_counter(counter: bool, real: Instant, count: u64) -> Clock {
        Clock {
            counter: counter.then_some(Counter {
                origin: (real, count),
                anchor: (real, count),
                ns_per_count: None,
                misses: 0,
            }),
            last: real,
        }
    }

    /// Whether answers come from the counter now.
    #[cfg(test)]
    pub(super) fn counting(&self) -> bool {
        self.counter.is_some_and(|c| c.ns_per_count.is_some())
    }

    /// The time now.
    pub(super) fn now(&mut self) -> Instant {
        let count = if self.counter.is_some() {
            tsc::read()
        } else {
            0
        };
        self.now_at(count, Instant::now)
    }

    /// The time at counter value `count`, reading the real clock through `real` only when it
    /// must.
    fn now_at(&mut self, count: u64, real: impl FnOnce() -> Instant) -> Instant {
        let answer = match self.counter.as_mut() {
            None => real(),
            Some(c) => match c.estimate(count) {
                Some(at) => at,
                None => {
                    let now = real();
                    if !c.take_real(now, count) {
                        self.counter = None;
                    }
                    now
                }
            },
        };
        self.last = self.last.max(answer);
        self.last
    }
}

impl Counter {
    /// The time at `count` from the rate, when calibrated and within [`REANCHOR`] of the
    /// last real read; `None` when the real clock must be read.
    fn estimate(&self, count: u64) -> Option<Instant> {
        let rate = self.ns_per_count?;
        let counts = count.checked_sub(self.anchor.1)?;
        let since = Duration::from_nanos((counts as f64 * rate) as u64);
        (since < REANCHOR).then(|| self.anchor.0 + since)
    }

    /// Takes a real read `now` at `count`: calibrates, checks and refines the rate. False
    /// when the counter must not be used any more.
    fn take_real(&mut self, now: Instant, count: u64) -> bool {
        let (Some(counts), Some(since_anchor)) = (
            count.checked_sub(self.origin.1),
            count.checked_sub(self.anchor.1),
        ) else {
            return false;
        };
        if let Some(rate) = self.ns_per_count {
            // What the counter says passed since the last real read, against the real clock.
            let counted = Duration::from_nanos((since_anchor as f64 * rate) as u64);
            let real = now.saturating_duration_since(self.anchor.0);
            if counted.abs_diff(real) > TOLERANCE + real / 50 {
                self.misses += 1;
                self.origin = (now, count);
                self.anchor = (now, count);
                self.ns_per_count = None;
                return self.misses < MISSES;
            }
        }
        let span = now.saturating_duration_since(self.origin.0);
        if span >= CALIBRATION && counts > 0 {
            self.ns_per_count = Some(span.as_nanos() as f64 / counts as f64);
        }
        self.anchor = (now, count);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A clock at a 1 GHz counter that started at count 1,000 at `t0`.
    fn ghz_clock(t0: Instant) -> Clock {
        Clock::with_counter(true, t0, 1_000)
    }

    fn count_at(ms: u64) -> u64 {
        1_000 + ms * 1_000_000
    }

    #[test]
    fn the_clock_reads_the_real_clock_until_the_counter_is_calibrated_then_answers_from_it() {
        let t0 = Instant::now();
        let mut clock = ghz_clock(t0);
        let mut reads = 0;
        for ms in [1, 5, 10, 19] {
            let at = clock.now_at(count_at(ms), || {
                reads += 1;
                t0 + ms as u32 * MS
            });
            assert_eq!(at, t0 + ms as u32 * MS);
        }
        assert_eq!(reads, 4, "every read before calibration is real");
        assert!(!clock.counting());
        clock.now_at(count_at(20), || {
            reads += 1;
            t0 + 20 * MS
        });
        assert!(clock.counting(), "20 ms of real reads calibrate it");
        for ms in [21, 30, 45, 69] {
            let at = clock.now_at(count_at(ms), || panic!("no real read within 50 ms"));
            let want = t0 + ms as u32 * MS;
            assert!(
                at.max(want) - at.min(want) < Duration::from_micros(1),
                "{ms} ms"
            );
        }
        assert_eq!(reads, 5);
    }

    #[test]
    fn a_real_read_follows_every_span_of_fifty_ms_on_the_counter_and_refines_the_rate() {
        let t0 = Instant::now();
        let mut clock = ghz_clock(t0);
        clock.now_at(count_at(20), || t0 + 20 * MS);
        let mut real = false;
        // A long sleep: 10 s on the counter. The real clock says 10.001 s (the rate was a
        // little off); the answer is the real read, and the rate is corrected over the span.
        let at = clock.now_at(count_at(10_020), || {
            real = true;
            t0 + 10_021 * MS
        });
        assert!(real, "past 50 ms of counts the real clock is read");
        assert_eq!(at, t0 + 10_021 * MS);
        assert!(
            clock.counting(),
            "an error within the tolerance keeps the counter"
        );
        let at = clock.now_at(count_at(10_030), || panic!("within 50 ms again"));
        assert!(at > t0 + 10_021 * MS && at < t0 + 10_032 * MS);
    }

    #[test]
    fn a_counter_that_disagrees_with_the_real_clock_is_calibrated_again_and_dropped_at_the_third_miss()
     {
        let t0 = Instant::now();
        let mut clock = ghz_clock(t0);
        clock.now_at(count_at(20), || t0 + 20 * MS);
        // The counter says 100 ms passed, the real clock 2 s (a stopped counter, say): the
        // real read is the answer, and the rate is measured again from there.
        let at = clock.now_at(count_at(120), || t0 + 2_020 * MS);
        assert_eq!(at, t0 + 2_020 * MS);
        assert!(!clock.counting(), "calibrating again");
        // Counter and real clock agree from there (the real clock 1.9 s ahead of the counts).
        let shifted = |ms: u64| t0 + (ms as u32 + 1_900) * MS;
        clock.now_at(count_at(145), || shifted(145));
        assert!(clock.counting(), "calibrated again after 20 ms");
        let at = clock.now_at(count_at(150), || panic!("counted"));
        assert!(at.max(shifted(150)) - at.min(shifted(150)) < Duration::from_micros(1));
        // Two more misses end it.
        clock.now_at(count_at(250), || shifted(250) + 500 * MS);
        clock.now_at(count_at(280), || shifted(280) + 500 * MS);
        assert!(clock.counting());
        clock.now_at(count_at(380), || shifted(380) + 1_000 * MS);
        assert!(!clock.counting());
        let mut real = 0;
        clock.now_at(count_at(381), || {
            real += 1;
            shifted(381) + 1_000 * MS
        });
        assert_eq!(real, 1, "every read is real from then on");

        let mut backward = ghz_clock(t0);
        backward.now_at(count_at(20), || t0 + 20 * MS);
        backward.now_at(500, || t0 + 21 * MS);
        assert!(
            !backward.counting(),
            "a counter below its origin is not used"
        );
        let mut real = 0;
        backward.now_at(count_at(30), || {
            real += 1;
            t0 + 30 * MS
        });
        assert_eq!(real, 1);
    }

    #[test]
    fn answers_never_go_backward() {
        let t0 = Instant::now();
        let mut clock = ghz_clock(t0);
        clock.now_at(count_at(20), || t0 + 20 * MS);
        let late = clock.now_at(count_at(40), || panic!("counted"));
        // A real read a little behind the counter's estimate (within the tolerance).
        let at = clock.now_at(count_at(80), || t0 + 39 * MS);
        assert!(at >= late, "the clock went back from {late:?} to {at:?}");
    }

    #[test]
    fn the_process_clock_never_goes_backward() {
        let mut clock = Clock::new();
        let start = Instant::now();
        let mut last = clock.now();
        while start.elapsed() < Duration::from_millis(120) {
            let now = clock.now();
            assert!(now >= last, "{now:?} after {last:?}");
            last = now;
        }
    }
}
