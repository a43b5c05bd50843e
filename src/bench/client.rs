//! `vsplice bench client`: runs one test (or a sweep of write sizes) against a bench server,
//! prints interval lines while it runs and both ends' totals at the end, iperf3 style, or one
//! JSON document.

use std::io::BufReader;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::cpu::CpuTimes;
use super::proto::{
    self, ClientMsg, Cpu, Direction, Hello, Limit, Params, ServerMsg, StreamCounts, VERSION,
};
use super::stream::{self, Stream};
use crate::addr::Address;
use crate::dial::dial_blocking;
use crate::error::{Error, Result};

/// Bytes moved in one direction of one stream (or the sum), with both ends' view.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct DirReport {
    pub sender_bytes: u64,
    pub sender_seconds: f64,
    pub sender_bits_per_second: f64,
    pub receiver_bytes: u64,
    pub receiver_seconds: f64,
    pub receiver_bits_per_second: f64,
}

impl DirReport {
    fn new(sent: u64, send_s: f64, received: u64, recv_s: f64) -> DirReport {
        let rate = |bytes: u64, s: f64| if s > 0.0 { bytes as f64 * 8.0 / s } else { 0.0 };
        DirReport {
            sender_bytes: sent,
            sender_seconds: send_s,
            sender_bits_per_second: rate(sent, send_s),
            receiver_bytes: received,
            receiver_seconds: recv_s,
            receiver_bits_per_second: rate(received, recv_s),
        }
    }

    fn sum<'a>(parts: impl Iterator<Item = &'a DirReport>) -> DirReport {
        let (mut sent, mut send_s, mut received, mut recv_s) = (0, 0f64, 0, 0f64);
        for p in parts {
            sent += p.sender_bytes;
            send_s = send_s.max(p.sender_seconds);
            received += p.receiver_bytes;
            recv_s = recv_s.max(p.receiver_seconds);
        }
        DirReport::new(sent, send_s, received, recv_s)
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StreamReport {
    /// 1-based, as printed.
    pub stream: u32,
    pub client_to_server: Option<DirReport>,
    pub server_to_client: Option<DirReport>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct IntervalStream {
    pub stream: u32,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct IntervalReport {
    pub start: f64,
    pub end: f64,
    pub streams: Vec<IntervalStream>,
    pub tx_bits_per_second: f64,
    pub rx_bits_per_second: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CpuReport {
    pub client: CpuSide,
    pub server: CpuSide,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct CpuSide {
    pub user_pct: f64,
    pub system_pct: f64,
    pub total_pct: f64,
}

impl From<Cpu> for CpuSide {
    fn from(c: Cpu) -> CpuSide {
        CpuSide {
            user_pct: c.user_pct,
            system_pct: c.system_pct,
            total_pct: c.total_pct(),
        }
    }
}

/// Everything one test measured.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TestReport {
    pub address: String,
    pub params: Params,
    pub intervals: Vec<IntervalReport>,
    pub streams: Vec<StreamReport>,
    pub sum_client_to_server: Option<DirReport>,
    pub sum_server_to_client: Option<DirReport>,
    pub cpu: CpuReport,
    /// Byte-count mismatches, verification failures and stream errors. Empty when all is well.
    pub errors: Vec<String>,
}

impl TestReport {
    /// The receiver-side throughput of the test's main direction (both for bidir), bits/s.
    pub fn receiver_bits_per_second(&self) -> f64 {
        self.sum_client_to_server
            .iter()
            .chain(self.sum_server_to_client.iter())
            .map(|d| d.receiver_bits_per_second)
            .sum()
    }
}

/// How a client run prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
    Quiet,
}

fn gbytes(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.2} GBytes", b / (1u64 << 30) as f64)
    } else if b >= (1u64 << 20) as f64 {
        format!("{:.1} MBytes", b / (1u64 << 20) as f64)
    } else {
        format!("{:.1} KBytes", b / 1024.0)
    }
}

fn rate(bits_per_second: f64) -> String {
    if bits_per_second >= 1e9 {
        format!("{:.2} Gbits/sec", bits_per_second / 1e9)
    } else {
        format!("{:.1} Mbits/sec", bits_per_second / 1e6)
    }
}

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

/// Checks that the server answered `want`.
fn expect(msg: std::io::Result<ServerMsg>, want: ServerMsg) -> Result<()> {
    match msg {
        Ok(m) if m == want => Ok(()),
        Ok(ServerMsg::Error { message }) => Err(Error::Bench(format!(
            "the server refused the test: {message}"
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
pub fn run_test(
    address: &Arc<Address>,
    params: &Params,
    interval: Option<Duration>,
    output: Output,
) -> Result<TestReport> {
    let control = connect(address)?;
    control
        .set_timeouts(Duration::from_secs(30))
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
    let mut replies = BufReader::new(control.reader());
    expect(
        proto::recv_line(&mut replies, proto::MAX_LINE),
        ServerMsg::Ready,
    )?;

    let n = params.streams as usize;
    let test_time = match params.limit {
        Limit::Time { ms } => Duration::from_millis(ms),
        Limit::Bytes { .. } => Duration::from_secs(3600),
    };
    let mut streams = Vec::with_capacity(n);
    for id in 0..params.streams {
        let s = connect(address)?;
        s.set_timeouts(test_time + Duration::from_secs(30))
            .map_err(|e| bench_err("data connection", e))?;
        proto::send_line(
            &mut s.writer(),
            &Hello::Data {
                cookie: cookie.clone(),
                stream: id,
            },
        )
        .map_err(|e| bench_err(&format!("opening stream {}", id + 1), e))?;
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
    // thousand threads on a loaded machine takes longer than a short test.
    let ready = Barrier::new(n + 1);
    let clock: OnceLock<Instant> = OnceLock::new();
    let mut started_at = None;
    let mut cpu_start = CpuTimes::default();
    let outcome: Result<()> = std::thread::scope(|scope| {
        let mut handles = Vec::with_capacity(n);
        for (i, s) in streams.iter().enumerate() {
            let id = i as u32;
            let (tx, rx) = (&tx[i], &rx[i]);
            let (ready, clock) = (&ready, &clock);
            let params = params.clone();
            let handle = std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn_scoped(scope, move || {
                    ready.wait();
                    // Unset when the test was called off before it started.
                    let Some(&started) = clock.get() else {
                        return StreamCounts {
                            stream: id,
                            ..StreamCounts::default()
                        };
                    };
                    stream::run_end(
                        s,
                        id,
                        &params,
                        params.direction.client_sends().then_some(started),
                        params.direction.server_sends(),
                        tx,
                        rx,
                    )
                })
                .expect("spawn a stream thread");
            handles.push(handle);
        }
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
        ready.wait();
        let Some(started) = started_at else {
            for h in handles {
                let _ = h.join();
            }
            return go;
        };
        // The interval reporter runs on this thread until every stream ended.
        let (tx, rx, finished) = (&tx, &rx, &finished);
        let reporter = scope.spawn(move || {
            report_intervals(
                started,
                interval,
                tx,
                rx,
                finished,
                params.direction,
                output,
            )
        });
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
        intervals = reporter.join().unwrap_or_default();
        Ok(())
    });
    outcome?;
    let started = started_at.expect("the test started");
    let wall = started.elapsed();
    let client_cpu = CpuTimes::of_self().since(cpu_start, wall);

    proto::send_line(&mut control.writer(), &ClientMsg::Done)
        .map_err(|e| bench_err("sending done", e))?;
    let results = proto::recv_line::<ServerMsg>(&mut replies, params.max_line());
    let (server_counts, server_cpu) = match results {
        Ok(ServerMsg::Results { streams, cpu, .. }) => (streams, cpu),
        Ok(ServerMsg::Error { message }) => return Err(Error::Bench(format!("server: {message}"))),
        Ok(other) => return Err(Error::Bench(format!("unexpected server message {other:?}"))),
        Err(e) => return Err(bench_err("waiting for the server's results", e)),
    };
    let report = build_report(
        address,
        params,
        intervals,
        &counts,
        &server_counts,
        client_cpu,
        server_cpu,
    );
    if output == Output::Text {
        print_summary(&report);
    }
    Ok(report)
}

fn build_report(
    address: &Address,
    params: &Params,
    intervals: Vec<IntervalReport>,
    client: &[StreamCounts],
    server: &[StreamCounts],
    client_cpu: Cpu,
    server_cpu: Cpu,
) -> TestReport {
    let mut errors = Vec::new();
    let mut streams = Vec::new();
    for c in client {
        let id = c.stream;
        let s = server
            .iter()
            .find(|s| s.stream == id)
            .cloned()
            .unwrap_or_default();
        for (end, e) in [("client", &c.error), ("server", &s.error)] {
            if let Some(e) = e {
                errors.push(format!("stream {}: {end}: {e}", id + 1));
            }
        }
        let up = params.direction.client_sends().then(|| {
            if c.sent != s.received {
                errors.push(format!(
                    "stream {}: the client sent {} bytes but the server received {}",
                    id + 1,
                    c.sent,
                    s.received
                ));
            }
            DirReport::new(c.sent, c.send_seconds, s.received, s.recv_seconds)
        });
        let down = params.direction.server_sends().then(|| {
            if s.sent != c.received {
                errors.push(format!(
                    "stream {}: the server sent {} bytes but the client received {}",
                    id + 1,
                    s.sent,
                    c.received
                ));
            }
            DirReport::new(s.sent, s.send_seconds, c.received, c.recv_seconds)
        });
        streams.push(StreamReport {
            stream: id + 1,
            client_to_server: up,
            server_to_client: down,
        });
    }
    let sum_up = params
        .direction
        .client_sends()
        .then(|| DirReport::sum(streams.iter().filter_map(|s| s.client_to_server.as_ref())));
    let sum_down = params
        .direction
        .server_sends()
        .then(|| DirReport::sum(streams.iter().filter_map(|s| s.server_to_client.as_ref())));
    TestReport {
        address: address.text.clone(),
        params: params.clone(),
        intervals,
        streams,
        sum_client_to_server: sum_up,
        sum_server_to_client: sum_down,
        cpu: CpuReport {
            client: client_cpu.into(),
            server: server_cpu.into(),
        },
        errors,
    }
}

fn report_intervals(
    started: Instant,
    interval: Option<Duration>,
    tx: &[AtomicU64],
    rx: &[AtomicU64],
    finished: &AtomicBool,
    direction: Direction,
    output: Output,
) -> Vec<IntervalReport> {
    let Some(interval) = interval.filter(|i| !i.is_zero()) else {
        return Vec::new();
    };
    let mut rows = Vec::new();
    let mut last_tx: Vec<u64> = vec![0; tx.len()];
    let mut last_rx: Vec<u64> = vec![0; rx.len()];
    let mut from = 0.0;
    let mut tick = 1u32;
    loop {
        let due = started + interval * tick;
        while Instant::now() < due {
            if finished.load(Ordering::SeqCst) {
                return rows;
            }
            std::thread::sleep(
                Duration::from_millis(10).min(due.saturating_duration_since(Instant::now())),
            );
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
        let report = IntervalReport {
            start: from,
            end: to,
            tx_bits_per_second: sum_tx as f64 * 8.0 / span,
            rx_bits_per_second: sum_rx as f64 * 8.0 / span,
            streams,
        };
        if output == Output::Text {
            print_interval(&report, direction);
        }
        rows.push(report);
        from = to;
    }
}

fn print_header(address: &Address, params: &Params) {
    let what = match params.limit {
        Limit::Time { ms } => format!("{:.1} s", ms as f64 / 1000.0),
        Limit::Bytes { total } => gbytes(total),
    };
    let dir = match params.direction {
        Direction::Forward => "client sends",
        Direction::Reverse => "server sends",
        Direction::Bidir => "both send",
    };
    println!(
        "Connected to {} ({} stream{}, {} byte writes, {what}, {dir}{}{})",
        address.text,
        params.streams,
        if params.streams == 1 { "" } else { "s" },
        params.len,
        if params.verify { ", verified" } else { "" },
        if params.zerocopy {
            ", MSG_ZEROCOPY"
        } else {
            ""
        },
    );
    println!("[ ID] Interval           Transfer     Bitrate");
}

fn print_interval(r: &IntervalReport, direction: Direction) {
    let span = (r.end - r.start).max(1e-9);
    let many = r.streams.len() > 1;
    let line = |label: &str, bytes: u64, tag: &str| {
        println!(
            "[{label}] {:6.2}-{:<6.2} sec  {:>12}  {:>16}{tag}",
            r.start,
            r.end,
            gbytes(bytes),
            rate(bytes as f64 * 8.0 / span)
        );
    };
    for s in &r.streams {
        let label = format!("{:3}", s.stream);
        match direction {
            Direction::Forward => line(&label, s.tx_bytes, ""),
            Direction::Reverse => line(&label, s.rx_bytes, ""),
            Direction::Bidir => {
                line(&label, s.tx_bytes, "  TX");
                line(&label, s.rx_bytes, "  RX");
            }
        }
    }
    if many {
        let tx: u64 = r.streams.iter().map(|s| s.tx_bytes).sum();
        let rx: u64 = r.streams.iter().map(|s| s.rx_bytes).sum();
        match direction {
            Direction::Forward => line("SUM", tx, ""),
            Direction::Reverse => line("SUM", rx, ""),
            Direction::Bidir => {
                line("SUM", tx, "  TX");
                line("SUM", rx, "  RX");
            }
        }
    }
}

fn print_dir(label: &str, d: &DirReport, tag: &str) {
    println!(
        "[{label}] {:6.2}-{:<6.2} sec  {:>12}  {:>16}  sender{tag}",
        0.0,
        d.sender_seconds,
        gbytes(d.sender_bytes),
        rate(d.sender_bits_per_second)
    );
    println!(
        "[{label}] {:6.2}-{:<6.2} sec  {:>12}  {:>16}  receiver{tag}",
        0.0,
        d.receiver_seconds,
        gbytes(d.receiver_bytes),
        rate(d.receiver_bits_per_second)
    );
}

fn print_summary(r: &TestReport) {
    println!("- - - - - - - - - - - - - - - - - - - - - - - - -");
    println!("[ ID] Interval           Transfer     Bitrate");
    let bidir = r.params.direction == Direction::Bidir;
    let tags = if bidir {
        ("  (client->server)", "  (server->client)")
    } else {
        ("", "")
    };
    for s in &r.streams {
        let label = format!("{:3}", s.stream);
        if let Some(d) = &s.client_to_server {
            print_dir(&label, d, tags.0);
        }
        if let Some(d) = &s.server_to_client {
            print_dir(&label, d, tags.1);
        }
    }
    if r.streams.len() > 1 {
        if let Some(d) = &r.sum_client_to_server {
            print_dir("SUM", d, tags.0);
        }
        if let Some(d) = &r.sum_server_to_client {
            print_dir("SUM", d, tags.1);
        }
    }
    let (c, s) = (r.cpu.client, r.cpu.server);
    println!(
        "CPU Utilization: client {:.1}% ({:.1}%u/{:.1}%s), server {:.1}% ({:.1}%u/{:.1}%s)",
        c.total_pct, c.user_pct, c.system_pct, s.total_pct, s.user_pct, s.system_pct
    );
    for e in &r.errors {
        println!("error: {e}");
    }
}

/// Prints a sweep as one table, one row per write size.
pub fn print_sweep(reports: &[TestReport]) {
    println!(
        "{:>9}  {:>13}  {:>13}  {:>10}  {:>10}",
        "len", "sender Gb/s", "receiver Gb/s", "client CPU", "server CPU"
    );
    for r in reports {
        let dirs: Vec<&DirReport> = r
            .sum_client_to_server
            .iter()
            .chain(r.sum_server_to_client.iter())
            .collect();
        let send: f64 = dirs.iter().map(|d| d.sender_bits_per_second).sum();
        let recv: f64 = dirs.iter().map(|d| d.receiver_bits_per_second).sum();
        println!(
            "{:>9}  {:>13.2}  {:>13.2}  {:>9.1}%  {:>9.1}%{}",
            human_size(r.params.len),
            send / 1e9,
            recv / 1e9,
            r.cpu.client.total_pct,
            r.cpu.server.total_pct,
            if r.errors.is_empty() { "" } else { "  ERRORS" }
        );
    }
}

pub fn human_size(n: usize) -> String {
    if n >= 1 << 20 && n % (1 << 20) == 0 {
        format!("{}M", n >> 20)
    } else if n >= 1024 && n % 1024 == 0 {
        format!("{}K", n >> 10)
    } else {
        n.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(stream: u32, sent: u64, received: u64) -> StreamCounts {
        StreamCounts {
            stream,
            sent,
            send_seconds: 1.0,
            received,
            recv_seconds: 2.0,
            error: None,
        }
    }

    fn params(direction: Direction) -> Params {
        Params {
            streams: 2,
            len: 1024,
            direction,
            limit: Limit::Time { ms: 1000 },
            verify: false,
            zerocopy: false,
        }
    }

    #[test]
    fn matching_counts_make_a_clean_report_with_sums() {
        let addr = Address::parse("TCP:127.0.0.1:1").unwrap();
        let client = [counts(0, 100, 0), counts(1, 300, 0)];
        let server = [counts(0, 0, 100), counts(1, 0, 300)];
        let r = build_report(
            &addr,
            &params(Direction::Forward),
            vec![],
            &client,
            &server,
            Cpu::default(),
            Cpu::default(),
        );
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        let sum = r.sum_client_to_server.as_ref().unwrap();
        assert_eq!(sum.sender_bytes, 400);
        assert_eq!(sum.receiver_bytes, 400);
        assert_eq!(sum.receiver_bits_per_second, 400.0 * 8.0 / 2.0);
        assert!(r.sum_server_to_client.is_none());
    }

    #[test]
    fn a_count_mismatch_is_an_error_naming_the_stream() {
        let addr = Address::parse("TCP:127.0.0.1:1").unwrap();
        let client = [counts(0, 0, 90), counts(1, 0, 300)];
        let server = [counts(0, 100, 0), counts(1, 300, 0)];
        let r = build_report(
            &addr,
            &params(Direction::Reverse),
            vec![],
            &client,
            &server,
            Cpu::default(),
            Cpu::default(),
        );
        assert_eq!(
            r.errors,
            vec!["stream 1: the server sent 100 bytes but the client received 90".to_string()]
        );
    }

    #[test]
    fn stream_errors_are_reported_with_their_end() {
        let addr = Address::parse("TCP:127.0.0.1:1").unwrap();
        let mut c = counts(0, 10, 10);
        c.error = Some("data mismatch at byte 5 of stream 1".into());
        let server = [counts(0, 10, 10)];
        let r = build_report(
            &addr,
            &params(Direction::Bidir),
            vec![],
            &[c],
            &server,
            Cpu::default(),
            Cpu::default(),
        );
        assert_eq!(
            r.errors,
            vec!["stream 1: client: data mismatch at byte 5 of stream 1".to_string()]
        );
    }

    #[test]
    fn sizes_print_short() {
        assert_eq!(human_size(4096), "4K");
        assert_eq!(human_size(1 << 20), "1M");
        assert_eq!(human_size(1000), "1000");
        assert_eq!(gbytes(3 << 30), "3.00 GBytes");
        assert_eq!(rate(12.5e9), "12.50 Gbits/sec");
    }
}
