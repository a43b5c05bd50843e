//! `vsplice bench client`: runs one test (or a sweep of write sizes) against a bench server,
//! prints interval lines while it runs and both ends' totals at the end, iperf3 style, or one
//! JSON document.

use std::io::BufReader;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::cpu::CpuTimes;
use super::end::{self, OtherEnd};
use super::proto::{
    self, ClientMsg, Hello, Params, ServerMsg, StreamCounts, TestDirection, VERSION, Workload,
};
use super::receive::Expect;
pub use super::report::Output;
use super::report::{
    IntervalReport, IntervalStream, TestReport, VsockBufferReport, build_report, print_header,
    print_interval, print_summary,
};
use super::rr::{self, Latencies, LatencyReport, Meters};
use super::send;
use super::stream::{self, Stream};
use crate::addr::Address;
use crate::error::{Error, Result};
use crate::net::blocking::dial_blocking;
use crate::net::hybrid::escape_peer_text;

/// How long a bench client's streams may stand still before the test fails (`--stall-timeout`).
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(10);

fn connect(address: &Arc<Address>) -> Result<Stream> {
    let endpoint = dial_blocking(address.clone())?;
    Stream::from_endpoint(endpoint).map_err(|e| Error::io(address.text.clone(), e))
}

fn bench_err(what: &str, e: std::io::Error) -> Error {
    let hint = match e.kind() {
        std::io::ErrorKind::UnexpectedEof
        | std::io::ErrorKind::ConnectionReset
        | std::io::ErrorKind::BrokenPipe => " (did the bench server stop or die?)",
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            " (the bench server stopped answering)"
        }
        _ => "",
    };
    Error::Bench(format!("{what}: {e}{hint}"))
}

/// A server's error text as the client reports it: escaped, since the server is a peer.
fn server_error(message: &str) -> Error {
    Error::Bench(format!("server: {}", escape_peer_text(message)))
}

/// Checks that the server answered `want`.
fn expect(msg: std::io::Result<ServerMsg>, want: ServerMsg) -> Result<()> {
    match msg {
        Ok(m) if m == want => Ok(()),
        Ok(ServerMsg::Error { message }) => Err(Error::Bench(format!(
            "the server refused the test: {}",
            escape_peer_text(&message)
        ))),
        Ok(m) => Err(Error::Bench(format!("unexpected server message {m:?}"))),
        Err(e) => Err(bench_err(&format!("waiting for {want:?}"), e)),
    }
}

fn cookie() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}-{:x}", std::process::id(), nanos)
}

/// Runs one test. Errors that stop the test are `Err`; problems found in the results (count
/// mismatches, verification failures) are listed in the report's `errors`.
/// A test ends with an error once no byte moved for `stall` (`--stall-timeout`): every data
/// socket's blocking call is bounded by it, and so is the wait for the server's counts while
/// no stream moves.
pub fn run_test(
    address: &Arc<Address>,
    params: &Params,
    interval: Option<Duration>,
    output: Output,
    stall: Duration,
) -> Result<TestReport> {
    let control = connect(address)?;
    // Longer than the server's 30 s wait for data connections, so a data connection lost on
    // the way gives the server's message ("not all data connections arrived"), not a timeout.
    control
        .set_timeouts(Duration::from_secs(40))
        .map_err(|e| bench_err("control connection", e))?;
    let cookie = cookie();
    proto::send_line(
        &mut control.writer(),
        &Hello::Control {
            version: VERSION,
            cookie: cookie.clone(),
            params: params.clone(),
        },
    )
    .map_err(|e| bench_err("sending the test parameters", e))?;
    let mut replies = BufReader::with_capacity(proto::CONTROL_CHUNK, control.reader());
    expect(
        proto::recv_line(&mut replies, proto::MAX_LINE),
        ServerMsg::Ready,
    )?;

    let n = params.streams as usize;
    // The vsock buffer the client's sockets read back (0: not set, or not vsock).
    let vsock_buffer = AtomicU64::new(0);
    let open_stream = |id: u32| -> Result<Stream> {
        let s = connect(address)?;
        if let (Some(size), true) = (params.vsock_buffer, s.is_vsock()) {
            let got = s
                .set_vsock_buffer(size)
                .map_err(|e| bench_err("--vsock-buffer", e))?;
            vsock_buffer.store(got, Ordering::Relaxed);
        }
        s.set_timeouts(stall)
            .map_err(|e| bench_err("data connection", e))?;
        proto::send_line(
            &mut s.writer(),
            &Hello::Data {
                cookie: cookie.clone(),
                stream: id,
            },
        )
        .map_err(|e| bench_err(&format!("opening stream {}", id + 1), e))?;
        Ok(s)
    };
    // `--crr` opens its connections as it goes, one per transaction.
    let lasting = if params.workload == Workload::Crr {
        0
    } else {
        params.streams
    };
    let mut streams = Vec::with_capacity(n);
    for id in 0..lasting {
        let s = open_stream(id)?;
        if params.zerocopy && params.direction.client_sends() {
            s.enable_zerocopy()
                .map_err(|e| Error::Bench(e.to_string()))?;
        }
        streams.push(s);
    }
    let tx: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
    let rx: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
    let finished = AtomicBool::new(false);
    let mut intervals = Vec::new();
    let mut counts: Vec<StreamCounts> = Vec::with_capacity(n);
    // Every stream thread exists before the clock starts and all start together: spawning a
    // thousand threads on a loaded machine takes longer than a short test. Each parks until
    // `released` and is woken by an unpark of its own. A std Barrier woke them all onto one
    // mutex, which they then took one by one while the first ones already sent: with 256
    // streams on 2 cores, 57 woke after a 3 s test had ended and sent nothing (now none).
    // A futex that wakes all with one call measured no better: what is left is the
    // scheduler's (with --time 2, 5-18 of 256 streams still get no CPU in time).
    let released = AtomicBool::new(false);
    let clock: OnceLock<Instant> = OnceLock::new();
    let expects: Vec<Expect> = (0..n).map(|_| Expect::new()).collect();
    let (sent_tx, sent_rx) = mpsc::channel::<(u32, u64)>();
    // A receiver whose sender's count is still unknown waits this long for a byte.
    let idle = stall;
    let latencies: Vec<Latencies> = (0..n).map(|_| Latencies::new(rr::histogram())).collect();
    let total_latency = Latencies::new(rr::histogram());
    let mut started_at = None;
    let mut cpu_start = CpuTimes::default();
    let outcome: Result<()> = std::thread::scope(|scope| {
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            let id = i as u32;
            let s = streams.get(i);
            let (latencies, open_stream) = (&latencies[i], &open_stream);
            let (tx, rx) = (&tx[i], &rx[i]);
            let (released, clock) = (&released, &clock);
            let params = params.clone();
            let expect = &expects[i];
            let sent_tx = sent_tx.clone();
            let handle = std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn_scoped(scope, move || {
                    while !released.load(Ordering::Acquire) {
                        std::thread::park();
                    }
                    // Unset when the test was called off before it started.
                    let Some(&started) = clock.get() else {
                        return StreamCounts {
                            stream: id,
                            ..StreamCounts::default()
                        };
                    };
                    let on_sent = move |n| {
                        let _ = sent_tx.send((id, n));
                    };
                    let limit = send::limit_for(&params, id, started);
                    let meters = Meters {
                        latencies,
                        sent: tx,
                        received: rx,
                    };
                    let counts = match (params.workload, s) {
                        (Workload::Stream, Some(s)) => {
                            return end::run_end(
                                s,
                                id,
                                &params,
                                params.direction.client_sends().then_some(started),
                                params.direction.server_sends(),
                                &|| Some(started),
                                tx,
                                rx,
                                OtherEnd {
                                    expect,
                                    idle,
                                    on_sent: Box::new(on_sent),
                                },
                            );
                        }
                        (Workload::Rr, Some(s)) => rr::client_rr(s, id, params.len, limit, meters),
                        _ => {
                            let connect = || {
                                open_stream(id).map_err(|e| std::io::Error::other(e.to_string()))
                            };
                            rr::client_crr(&connect, id, params.len, limit, meters)
                        }
                    };
                    on_sent(counts.sent);
                    counts
                });
            match handle {
                Ok(handle) => handles.push(handle),
                Err(e) => {
                    // Release the threads already waiting (the clock is unset, so they end at
                    // once) rather than leave the scope joining them forever.
                    released.store(true, Ordering::Release);
                    handles.iter().for_each(|h| h.thread().unpark());
                    return Err(Error::Bench(format!(
                        "cannot start stream thread {}: {e}",
                        i + 1
                    )));
                }
            }
        }
        drop(sent_tx);
        let go = expect(
            proto::recv_line(&mut replies, proto::MAX_LINE),
            ServerMsg::Start,
        );
        if go.is_ok() {
            let now = Instant::now();
            let _ = clock.set(now);
            started_at = Some(now);
            cpu_start = CpuTimes::of_self();
            if output == Output::Text {
                print_header(address, params);
            }
        }
        released.store(true, Ordering::Release);
        for h in &handles {
            h.thread().unpark();
        }
        let Some(started) = started_at else {
            for h in handles {
                let _ = h.join();
            }
            return go;
        };
        // The interval reporter runs on this thread until every stream ended.
        let (tx, rx, finished) = (&tx, &rx, &finished);
        let rr_meters = (!params.workload.is_stream()).then_some((&latencies[..], &total_latency));
        let reporter = scope.spawn(move || {
            report_intervals(
                started,
                interval,
                Meter {
                    tx,
                    rx,
                    rr: rr_meters,
                },
                finished,
                params.direction,
                output,
            )
        });
        let exchanged = exchange_counts(
            &control,
            &mut replies,
            &sent_rx,
            params,
            &expects,
            Progress { tx, rx, stall },
        );
        if exchanged.is_err() {
            expects.iter().for_each(Expect::call_off);
        }
        counts = handles
            .into_iter()
            .enumerate()
            .map(|(i, h)| {
                h.join().unwrap_or_else(|_| StreamCounts {
                    stream: i as u32,
                    error: Some("stream thread panicked".into()),
                    ..StreamCounts::default()
                })
            })
            .collect();
        finished.store(true, Ordering::SeqCst);
        reporter.thread().unpark();
        intervals = reporter.join().unwrap_or_default();
        exchanged
    });
    outcome?;
    let started = started_at.expect("the test started");
    let wall = started.elapsed();
    let client_cpu = CpuTimes::of_self().since(cpu_start, wall);
    let latency = (!params.workload.is_stream()).then(|| {
        let mut total = total_latency.into_inner().unwrap();
        total.add(rr::take_all(&latencies)).expect("same bounds");
        LatencyReport::new(&total, wall.as_secs_f64()).with_spectrum(&total)
    });

    proto::send_line(&mut control.writer(), &ClientMsg::Done)
        .map_err(|e| bench_err("sending done", e))?;
    // The server sends its results once its receivers are through: at most its 30 s grace
    // for missing bytes.
    control
        .set_timeouts(RESULTS_WAIT + stall)
        .map_err(|e| bench_err("control connection", e))?;
    let results = proto::recv_line::<ServerMsg>(&mut replies, params.max_line());
    let (server_counts, server_cpu, seen) = match results {
        Ok(ServerMsg::Results {
            streams,
            cpu,
            client,
            ..
        }) => (streams, cpu, client),
        Ok(ServerMsg::Error { message }) => return Err(server_error(&message)),
        Ok(other) => return Err(Error::Bench(format!("unexpected server message {other:?}"))),
        Err(e) => return Err(bench_err("waiting for the server's results", e)),
    };
    let mut report = build_report(
        address,
        params,
        intervals,
        &counts,
        &server_counts,
        client_cpu,
        server_cpu,
    );
    report.latency = latency;
    report.server_saw_client = seen;
    if let Some(requested) = params.vsock_buffer {
        report.vsock_buffer = Some(VsockBufferReport {
            requested,
            client: Some(vsock_buffer.load(Ordering::Relaxed)).filter(|&b| b > 0),
            server: server_counts.iter().find_map(|c| c.vsock_buffer),
        });
    }
    if output == Output::Text {
        print_summary(&report);
    }
    Ok(report)
}

/// How long the client waits for the server's results after `Done`.
const RESULTS_WAIT: Duration = Duration::from_secs(40);

/// The streams' byte counters, and how long they may stand still.
struct Progress<'a> {
    tx: &'a [AtomicU64],
    rx: &'a [AtomicU64],
    stall: Duration,
}

impl Progress<'_> {
    fn moved(&self) -> u64 {
        self.tx
            .iter()
            .chain(self.rx)
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

/// Waits until a control line is there to read, for as long as the streams move: `Err` once
/// no byte moved on any stream for the stall timeout and no line came.
fn wait_for_line(
    control: &Stream,
    replies: &BufReader<&std::fs::File>,
    progress: &Progress<'_>,
) -> Result<()> {
    use std::os::fd::AsFd;
    let mut last = progress.moved();
    loop {
        if !replies.buffer().is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + progress.stall;
        let readable = crate::sys::socket::wait_readable(control.reader().as_fd(), Some(deadline))
            .map_err(|e| bench_err("control connection", e))?;
        if readable {
            return Ok(());
        }
        let now = progress.moved();
        if now == last {
            return Err(Error::Bench(format!(
                "the test stalled: no byte moved for {} s (--stall-timeout) and the server sent \
                 no counts (is it stopped, or not reading?)",
                progress.stall.as_secs_f64()
            )));
        }
        last = now;
    }
}

/// Tells the server what the client's senders sent once they all stopped, and hands the
/// server's counts to the client's receivers: the streams' end, without half-close.
fn exchange_counts(
    control: &Stream,
    replies: &mut BufReader<&std::fs::File>,
    sent: &mpsc::Receiver<(u32, u64)>,
    params: &Params,
    expects: &[Expect],
    progress: Progress<'_>,
) -> Result<()> {
    let mut bytes = vec![0u64; expects.len()];
    for _ in 0..expects.len() {
        match sent.recv() {
            Ok((id, n)) => bytes[id as usize] = n,
            Err(_) => break,
        }
    }
    control
        .set_timeouts(progress.stall.max(RESULTS_WAIT))
        .map_err(|e| bench_err("control connection", e))?;
    proto::send_line(&mut control.writer(), &ClientMsg::Sent { bytes })
        .map_err(|e| bench_err("sending the byte counts", e))?;
    // The server's senders may run long (a --reverse --bytes test): wait while bytes move.
    wait_for_line(control, replies, &progress)?;
    match proto::recv_line::<ServerMsg>(replies, params.max_line()) {
        Ok(ServerMsg::Sent { bytes }) if bytes.len() == expects.len() => {
            for (expect, n) in expects.iter().zip(bytes) {
                expect.set(n);
            }
            Ok(())
        }
        Ok(ServerMsg::Error { message }) => Err(server_error(&message)),
        Ok(other) => Err(Error::Bench(format!(
            "unexpected server message {other:?} (expected its byte counts)"
        ))),
        Err(e) => Err(bench_err("waiting for the server's byte counts", e)),
    }
}

/// What the interval reporter reads: bytes each way per stream, and for transactions the
/// streams' latencies with the histogram the taken ones go to.
struct Meter<'a> {
    tx: &'a [AtomicU64],
    rx: &'a [AtomicU64],
    rr: Option<(&'a [Latencies], &'a Latencies)>,
}

fn report_intervals(
    started: Instant,
    interval: Option<Duration>,
    meter: Meter<'_>,
    finished: &AtomicBool,
    direction: TestDirection,
    output: Output,
) -> Vec<IntervalReport> {
    let Some(interval) = interval.filter(|i| !i.is_zero()) else {
        return Vec::new();
    };
    let Meter {
        tx,
        rx,
        rr: latency_meters,
    } = meter;
    let mut rows = Vec::new();
    let mut last_tx: Vec<u64> = vec![0; tx.len()];
    let mut last_rx: Vec<u64> = vec![0; rx.len()];
    let mut from = 0.0;
    let mut tick = 1u32;
    loop {
        let due = started + interval * tick;
        // Parked until the interval is due: the streams' end unparks it. (It used to wake
        // every 10 ms to look: 100 wakeups a second, each dear in a guest.)
        if stream::park_until(due, finished) {
            return rows;
        }
        tick += 1;
        let to = started.elapsed().as_secs_f64();
        let span = (to - from).max(1e-9);
        let mut streams = Vec::with_capacity(tx.len());
        let (mut sum_tx, mut sum_rx) = (0u64, 0u64);
        for i in 0..tx.len() {
            let t = tx[i].load(Ordering::Relaxed);
            let r = rx[i].load(Ordering::Relaxed);
            let row = IntervalStream {
                stream: i as u32 + 1,
                tx_bytes: t - last_tx[i],
                rx_bytes: r - last_rx[i],
            };
            sum_tx += row.tx_bytes;
            sum_rx += row.rx_bytes;
            last_tx[i] = t;
            last_rx[i] = r;
            streams.push(row);
        }
        let latency = latency_meters.map(|(streams, total)| {
            let taken = rr::take_all(streams);
            total.lock().unwrap().add(&taken).expect("same bounds");
            LatencyReport::new(&taken, span)
        });
        let report = IntervalReport {
            start: from,
            end: to,
            tx_bits_per_second: sum_tx as f64 * 8.0 / span,
            rx_bits_per_second: sum_rx as f64 * 8.0 / span,
            streams,
            latency,
        };
        if output == Output::Text {
            print_interval(&report, direction);
        }
        rows.push(report);
        from = to;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_servers_error_text_cannot_forge_a_line_or_reach_the_terminal() {
        let e = server_error("no\n2026/12/04 vsplice[1] E forged\u{1b}[2J\u{7}").to_string();
        assert!(!e.chars().any(char::is_control), "escaped: {e:?}");
        let refused = expect(
            Ok(ServerMsg::Error {
                message: "a\nb\u{1b}".into(),
            }),
            ServerMsg::Ready,
        );
        let e = refused.unwrap_err().to_string();
        assert!(!e.chars().any(char::is_control), "escaped: {e:?}");
    }
}
