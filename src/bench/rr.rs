//! Request/response workloads (`--rr`, `--crr`): each stream sends `len` bytes and waits for
//! `len` bytes back, back to back, timing every transaction into an HDR histogram (µs).
//! `--rr` keeps one connection per stream; `--crr` opens a new one per transaction, so its
//! latency includes connection setup (what a relay's `fork` path adds).
//!
//! The client's loops are here, with the server's answering loop. Like the throughput streams,
//! an `--rr` stream ends by the count the client reports over control, not by half-close.

use std::io::{self, Read, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::plot::axis;
use super::proto::StreamCounts;
use super::receive::{Expect, MISSING_GRACE};
use super::send::SendLimit;
use super::stream::Stream;

/// The slowest transaction a histogram holds: one hour, in µs.
const MAX_US: u64 = 3_600_000_000;

/// An empty latency histogram: 1 µs to an hour, three significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds")
}

/// One stream's latencies since the reporter last took them.
pub(crate) type Latencies = Mutex<Histogram<u64>>;

/// The counters one stream's transactions go to: latencies, and bytes each way (for the
/// interval rows).
pub(crate) struct Meters<'a> {
    pub latencies: &'a Latencies,
    pub sent: &'a AtomicU64,
    pub received: &'a AtomicU64,
}

impl Meters<'_> {
    fn record(&self, took: Duration, len: usize) {
        let us = (took.as_micros() as u64).clamp(1, MAX_US);
        self.latencies
            .lock()
            .unwrap()
            .record(us)
            .expect("value within bounds");
        self.sent.fetch_add(len as u64, Ordering::Relaxed);
        self.received.fetch_add(len as u64, Ordering::Relaxed);
    }
}

/// Moves what every stream recorded into one histogram (and out of the streams').
pub(crate) fn take_all(streams: &[Latencies]) -> Histogram<u64> {
    let mut all = histogram();
    for s in streams {
        let mut h = s.lock().unwrap();
        all.add(&*h).expect("same bounds");
        h.reset();
    }
    all
}

/// Transactions and latency percentiles of an interval or a whole test.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LatencyReport {
    pub transactions: u64,
    pub transactions_per_second: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p99_9_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
    /// The whole test's latency spectrum for `--plot`: (percentile as a fraction, µs) at
    /// [`axis::sample_quantiles`]; empty for intervals, and not part of the JSON.
    #[serde(skip)]
    pub spectrum: Vec<(f64, u64)>,
}

impl LatencyReport {
    pub fn new(h: &Histogram<u64>, seconds: f64) -> LatencyReport {
        let n = h.len();
        let q = |q: f64| if n == 0 { 0 } else { h.value_at_quantile(q) };
        LatencyReport {
            transactions: n,
            transactions_per_second: if seconds > 0.0 {
                n as f64 / seconds
            } else {
                0.0
            },
            p50_us: q(0.50),
            p90_us: q(0.90),
            p99_us: q(0.99),
            p99_9_us: q(0.999),
            max_us: if n == 0 { 0 } else { h.max() },
            mean_us: if n == 0 { 0.0 } else { h.mean() },
            spectrum: Vec::new(),
        }
    }

    /// The report with `h`'s latency spectrum from p50 to p99.999 (for `--plot`): the value
    /// at each of [`axis::sample_quantiles`], none for an empty histogram.
    pub fn with_spectrum(mut self, h: &Histogram<u64>) -> LatencyReport {
        self.spectrum = if h.is_empty() {
            Vec::new()
        } else {
            axis::sample_quantiles()
                .into_iter()
                .map(|q| (q, h.value_at_quantile(q)))
                .collect()
        };
        self
    }

    /// `12345 trans  12345.0 trans/s  p50 12  p90 15  p99 40  p99.9 90  max 400 us`
    pub fn text(&self) -> String {
        format!(
            "{:>9} trans {:>10.1} trans/s  p50 {} p90 {} p99 {} p99.9 {} max {} us",
            self.transactions,
            self.transactions_per_second,
            self.p50_us,
            self.p90_us,
            self.p99_us,
            self.p99_9_us,
            self.max_us
        )
    }
}

fn more(limit: SendLimit, done: u64, len: usize) -> bool {
    match limit {
        SendLimit::Until(t) => Instant::now() < t,
        SendLimit::Bytes(total) => done * (len as u64) < total,
    }
}

fn counts(id: u32, n: u64, len: usize, started: Instant, error: Option<String>) -> StreamCounts {
    let bytes = n * len as u64;
    let s = started.elapsed().as_secs_f64();
    StreamCounts {
        stream: id,
        sent: bytes,
        send_seconds: s,
        received: bytes,
        recv_seconds: s,
        transactions: n,
        vsock_buffer: None,
        sent_messages: 0,
        received_messages: 0,
        error,
    }
}

fn failed(e: &io::Error, what: &str) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            format!("{what} timed out (peer gone or stalled)")
        }
        _ => format!("{what} failed: {e}"),
    }
}

/// The client's `--rr` loop on one connection.
pub(crate) fn client_rr(
    stream: &Stream,
    id: u32,
    len: usize,
    limit: SendLimit,
    meters: Meters<'_>,
) -> StreamCounts {
    transactions(
        id,
        len,
        limit,
        meters,
        "transaction",
        |request, response| {
            stream.writer().write_all(request)?;
            stream.reader().read_exact(response)
        },
    )
}

/// The client's `--crr` loop: `connect` opens a fresh connection to the stream (with its
/// hello sent) for every transaction.
pub(crate) fn client_crr(
    connect: &dyn Fn() -> io::Result<Stream>,
    id: u32,
    len: usize,
    limit: SendLimit,
    meters: Meters<'_>,
) -> StreamCounts {
    transactions(
        id,
        len,
        limit,
        meters,
        "connection and transaction",
        |request, response| {
            let s = connect()?;
            s.writer().write_all(request)?;
            s.reader().read_exact(response)
        },
    )
}

/// Runs `transact` (one request out, one response of `len` bytes back) until `limit`, timing
/// each; the first failure ends the stream, named as `what`.
fn transactions(
    id: u32,
    len: usize,
    limit: SendLimit,
    meters: Meters<'_>,
    what: &str,
    mut transact: impl FnMut(&[u8], &mut [u8]) -> io::Result<()>,
) -> StreamCounts {
    let started = Instant::now();
    let request = vec![b'q'; len];
    let mut response = vec![0u8; len];
    let mut n = 0;
    let mut error = None;
    while more(limit, n, len) {
        let t0 = Instant::now();
        if let Err(e) = transact(&request, &mut response) {
            error = Some(failed(&e, what));
            break;
        }
        meters.record(t0.elapsed(), len);
        n += 1;
    }
    counts(id, n, len, started, error)
}

/// The server's side of one `--crr` transaction: one request in, `answered` called (before
/// the response leaves, so the client can never see a response the server has not counted),
/// one response out, then the client's close awaited (as netperf's TCP_CRR): a server that
/// closed first could have its close overtake the response on a relay or VMM that widens a
/// close into a reset.
pub(crate) fn serve_one(stream: &Stream, len: usize, answered: impl FnOnce()) -> io::Result<()> {
    let mut buf = vec![0u8; len];
    stream.reader().read_exact(&mut buf)?;
    answered();
    stream.writer().write_all(&buf)?;
    while stream.reader().read(&mut buf[..1])? > 0 {}
    Ok(())
}

/// The server's `--rr` loop: answers each `len`-byte request until it has the bytes the
/// client says it sent (`expect`), or the client's end of file.
pub(crate) fn serve_rr(
    stream: &Stream,
    id: u32,
    len: usize,
    expect: &Expect,
    idle: Duration,
    tick: Duration,
) -> StreamCounts {
    let started = Instant::now();
    let mut buf = vec![0u8; len];
    let (mut filled, mut n) = (0usize, 0u64);
    let mut error = stream
        .set_recv_timeout(tick)
        .err()
        .map(|e| failed(&e, "receive"));
    let mut last_byte = Instant::now();
    let mut count_known: Option<Instant> = None;
    while error.is_none() {
        let want = expect.get();
        if want != Expect::UNKNOWN && count_known.is_none() {
            count_known = Some(Instant::now());
        }
        if n * len as u64 >= want {
            break;
        }
        match stream.reader().read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(k) => {
                last_byte = Instant::now();
                filled += k;
                if filled == len {
                    n += 1;
                    if let Err(e) = stream.writer().write_all(&buf) {
                        error = Some(failed(&e, "response"));
                    }
                    filled = 0;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                let late = match count_known {
                    Some(at) => at.elapsed() >= MISSING_GRACE,
                    None => last_byte.elapsed() >= idle,
                };
                if late {
                    error = Some(failed(&e, "waiting for requests"));
                }
            }
            Err(e) => error = Some(failed(&e, "receive")),
        }
    }
    counts(id, n, len, started, error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_ordered_and_count_every_transaction() {
        let streams: Vec<Latencies> = (0..3).map(|_| Mutex::new(histogram())).collect();
        let n = AtomicU64::new(0);
        for (i, s) in streams.iter().enumerate() {
            let meters = Meters {
                latencies: s,
                sent: &n,
                received: &AtomicU64::new(0),
            };
            for us in 1..=1000u64 {
                meters.record(Duration::from_micros(us * (i as u64 + 1)), 1);
            }
        }
        let all = take_all(&streams);
        let r = LatencyReport::new(&all, 2.0);
        assert_eq!(r.transactions, 3000);
        assert_eq!(n.load(Ordering::Relaxed), 3000);
        assert_eq!(r.transactions_per_second, 1500.0);
        assert!(r.p50_us <= r.p90_us && r.p90_us <= r.p99_us);
        assert!(r.p99_us <= r.p99_9_us && r.p99_9_us <= r.max_us);
        assert!((2990..=3010).contains(&r.max_us), "{r:?}");
        assert!(r.spectrum.is_empty(), "only asked for");
        let s = r.with_spectrum(&all).spectrum;
        assert_eq!(s.len(), axis::SAMPLES);
        assert!(
            s.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{s:?}"
        );
        assert_eq!(s[0].1, all.value_at_quantile(0.5));
        assert_eq!(take_all(&streams).len(), 0, "taking empties the streams");
    }
}
