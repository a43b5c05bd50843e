//! The receiver loop of one bench stream: reads until it has the count its sender reported
//! ([`Expect`]), reading the clock only where the last byte may be.

use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::message::{Boundaries, receive_message};
use super::pattern;
use super::proto::{Limit, Params, StreamCounts};
use super::stream::{Stream, describe};

/// How many bytes a receiver is to get: [`Expect::UNKNOWN`] until the sender's count arrives
/// over control; 0 calls the stream off.
#[derive(Debug)]
pub(crate) struct Expect(AtomicU64);

impl Expect {
    pub(crate) const UNKNOWN: u64 = u64::MAX;

    pub(crate) fn new() -> Expect {
        Expect(AtomicU64::new(Expect::UNKNOWN))
    }

    pub(crate) fn set(&self, bytes: u64) {
        self.0.store(bytes, Ordering::SeqCst);
    }

    /// Ends the receiver at once (the test failed elsewhere).
    pub(crate) fn call_off(&self) {
        self.set(0);
    }

    pub(super) fn get(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl Default for Expect {
    fn default() -> Expect {
        Expect::new()
    }
}

/// How often a waiting receiver looks at its [`Expect`].
pub(crate) const TICK: Duration = Duration::from_millis(100);
/// How long a receiver waits for the bytes still missing once it knows the sender's count.
pub(crate) const MISSING_GRACE: Duration = Duration::from_secs(30);

/// How a receiver's stream is to end, as far as it knows before the sender's count comes:
/// after this many bytes (`--bytes`), or at this long after the test's start (`--time`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ending {
    Bytes(u64),
    After(Duration),
}

impl Ending {
    /// The stream's bytes in all, when the test has a byte budget.
    pub(crate) fn total(self) -> Option<u64> {
        match self {
            Ending::Bytes(total) => Some(total),
            Ending::After(_) => None,
        }
    }

    pub(crate) fn of(params: &Params, id: u32) -> Ending {
        match params.limit {
            Limit::Time { ms } => Ending::After(Duration::from_millis(ms)),
            Limit::Bytes { .. } => Ending::Bytes(params.stream_bytes(id).unwrap_or(0)),
        }
    }
}

/// When the test started, as a receiver learns it: the instant its end sent (server) or got
/// (client) the start. A receiver's time runs from there, not from its thread's start: a
/// server's receiver starts with its data connection, before the other streams arrived and
/// the start went out, and that wait is no part of the transfer (in the guest lab it made a
/// 256 MiB test's receiver time up to a tenth longer than its sender's). `None` if the test
/// has not started.
pub(crate) type TestStart<'a> = &'a (dyn Fn() -> Option<Instant> + Sync);

/// A `--time` receiver reads the clock every read once the test's end is this near, so it
/// has the time of its last byte; before that, only every [`Stamps::step`] bytes.
const LATE: Duration = Duration::from_millis(50);

/// When a receiver reads the clock. A clock read is a system call where there is no vDSO
/// clock (user-mode Linux): one per short read was one system call in three on UNIX
/// sockets, whose reads are mostly short (`bench_against_a_plain_reader_and_writer`). The
/// receiver only needs the time of its last byte: with `--bytes` that is the read that
/// completes the count (no clock read before it); with `--time` the clock is read at
/// growing byte steps, each about half of [`LATE`] at the rate so far, until the end is
/// within [`LATE`], and then after every read.
struct Stamps {
    ending: Ending,
    /// The clock is read after the read that brings the count to this.
    next: u64,
}

impl Stamps {
    const FIRST: u64 = 64 << 10;
    const MAX_STEP: u64 = 16 << 20;

    fn new(ending: Ending) -> Stamps {
        let next = match ending {
            Ending::Bytes(total) => total,
            Ending::After(_) => Stamps::FIRST,
        };
        Stamps { ending, next }
    }

    fn due(&self, received: u64) -> bool {
        received >= self.next
    }

    /// Sets the next clock read after one at `now`, `received` bytes into a test that
    /// started at `start`.
    fn stamped(&mut self, now: Instant, start: Instant, received: u64) {
        self.next = match self.ending {
            Ending::After(length) if now + LATE < start + length => {
                received + Stamps::step(received, now.saturating_duration_since(start))
            }
            // Past the expected end, or near it: every read.
            _ => received + 1,
        };
    }

    /// Bytes that take about half of [`LATE`] at `received` bytes in `elapsed`.
    fn step(received: u64, elapsed: Duration) -> u64 {
        let nanos = elapsed.as_nanos().max(1);
        let step = u128::from(received) * (LATE.as_nanos() / 2) / nanos;
        (step.min(u128::from(Stamps::MAX_STEP)) as u64).max(Stamps::FIRST)
    }
}

/// Receives until it has the sender's count (or end of file, or `idle` without a byte
/// while the count is unknown). Returns this stream's counts (receiver side), timed from
/// the test's start to its last byte.
#[allow(clippy::too_many_arguments)]
pub(crate) fn receive(
    stream: &Stream,
    id: u32,
    len: usize,
    verify: bool,
    counter: &AtomicU64,
    expect: &Expect,
    idle: Duration,
    ending: Ending,
    test_start: TestStart<'_>,
) -> StreamCounts {
    let begun = Instant::now();
    // A SEQPACKET stream: every receive is one message, judged against the one sent (the
    // buffer is a byte longer than any message sent, so a longer one shows).
    let mut boundaries = stream
        .is_message()
        .then(|| Boundaries::new(len, ending.total(), id));
    let mut buf = vec![0u8; len.max(4096) + 1];
    let mut received: u64 = 0;
    let mut r = stream.reader();
    let mut error = None;
    if let Err(e) = stream.set_recv_timeout(TICK) {
        return StreamCounts {
            stream: id,
            error: Some(describe(&e, "receive")),
            ..StreamCounts::default()
        };
    }
    // The test's start, asked for once the first clock read is due (the first bytes came,
    // so the test has started); this thread's start if it has not (a peer that sends early).
    let mut known: Option<Instant> = None;
    let mut start = move || *known.get_or_insert_with(|| test_start().unwrap_or(begun));
    let mut stamps = Stamps::new(ending);
    let mut last_byte = begun;
    let mut count_known: Option<Instant> = None;
    let mut ended: Option<Instant> = None;
    // Bytes came since the clock was last read.
    let mut unstamped = false;
    loop {
        let want = expect.get();
        if want != Expect::UNKNOWN && count_known.is_none() {
            count_known = Some(Instant::now());
        }
        if received >= want {
            break;
        }
        let got = match boundaries.as_mut() {
            Some(b) => receive_message(stream, &mut buf, b, received),
            None => r.read(&mut buf),
        };
        match got {
            Ok(0) => break,
            Ok(n) => {
                if verify && error.is_none() {
                    if let Err(at) = pattern::check(id, received, &buf[..n]) {
                        error = Some(format!("data mismatch at byte {at} of stream {}", id + 1));
                    }
                }
                received += n as u64;
                counter.fetch_add(n as u64, Ordering::Relaxed);
                if stamps.due(received) {
                    let now = Instant::now();
                    stamps.stamped(now, start(), received);
                    last_byte = now;
                    ended = Some(now);
                    unstamped = false;
                } else {
                    unstamped = true;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if unstamped {
                    // The read that timed out began right after the last byte: it waited
                    // TICK from then (to the timer's tick: only where the bytes stopped
                    // short of the count, or a `--time` sender stopped early).
                    last_byte = Instant::now()
                        .checked_sub(TICK)
                        .unwrap_or(last_byte)
                        .max(last_byte);
                    ended = Some(last_byte);
                    unstamped = false;
                }
                match count_known {
                    Some(at) if at.elapsed() >= MISSING_GRACE => {
                        error.get_or_insert_with(|| {
                            format!(
                                "received {received} of the {want} bytes sent; the other {} did not arrive within {} s",
                                want - received,
                                MISSING_GRACE.as_secs()
                            )
                        });
                        break;
                    }
                    None if last_byte.elapsed() >= idle => {
                        error.get_or_insert_with(|| describe(&e, "receive"));
                        break;
                    }
                    _ => {}
                }
            }
            Err(e) => {
                error.get_or_insert_with(|| describe(&e, "receive"));
                break;
            }
        }
    }
    if unstamped {
        // The loop left right after a read that did not read the clock.
        ended = Some(Instant::now());
    }
    let recv_seconds = match ended {
        Some(at) => at.saturating_duration_since(start()).as_secs_f64(),
        None => 0.0,
    };
    StreamCounts {
        stream: id,
        received,
        recv_seconds,
        received_messages: boundaries.map_or(0, |b| b.messages),
        error,
        ..StreamCounts::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bytes_receiver_reads_the_clock_only_at_the_count_and_after() {
        let start = Instant::now();
        let mut stamps = Stamps::new(Ending::Bytes(1 << 30));
        assert!(!stamps.due(64 << 10));
        assert!(!stamps.due((1 << 30) - 1));
        assert!(stamps.due(1 << 30));
        // Bytes past the count (a sender that sent more) move the end with them.
        stamps.stamped(start, start, 1 << 30);
        assert!(stamps.due((1 << 30) + 1));
    }

    #[test]
    fn a_time_receiver_reads_the_clock_in_steps_then_every_read_near_the_end() {
        let start = Instant::now();
        let mut stamps = Stamps::new(Ending::After(Duration::from_secs(3)));
        assert!(!stamps.due(Stamps::FIRST - 1));
        assert!(stamps.due(Stamps::FIRST));
        // 200 MB/s so far: a step of 5 MB (25 ms, half of LATE).
        let mb = 1_000_000;
        stamps.stamped(start + Duration::from_millis(500), start, 100 * mb);
        assert_eq!(stamps.next, 100 * mb + 5 * mb);
        // Faster: capped.
        stamps.stamped(start + Duration::from_millis(100), start, 10_000 * mb);
        assert_eq!(stamps.next, 10_000 * mb + Stamps::MAX_STEP);
        // Slow: at least the first step.
        stamps.stamped(start + Duration::from_secs(1), start, 1000);
        assert_eq!(stamps.next, 1000 + Stamps::FIRST);
        // Within LATE of the end, and past it: every read.
        stamps.stamped(start + Duration::from_millis(2960), start, 5000 * mb);
        assert_eq!(stamps.next, 5000 * mb + 1);
        stamps.stamped(start + Duration::from_secs(4), start, 6000 * mb);
        assert_eq!(stamps.next, 6000 * mb + 1);
    }
}
