//! What a bench test measured and how it prints: both ends' counts per stream and direction,
//! interval rows, CPU, the checks that compare the ends (byte counts, errors), and the
//! iperf3-style text lines.

use serde::Serialize;

use super::message::{self, MessageRates};
use super::proto::{Cpu, Limit, Params, PeerSeen, StreamCounts, TestDirection};
use super::rr::LatencyReport;
use crate::addr::Address;

/// Bytes moved in one direction of one stream (or the sum), with both ends' view.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct DirReport {
    pub sender_bytes: u64,
    pub sender_seconds: f64,
    pub sender_bits_per_second: f64,
    pub receiver_bytes: u64,
    pub receiver_seconds: f64,
    pub receiver_bits_per_second: f64,
    /// Whole messages each end counted (`--seqpacket`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<MessageRates>,
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
            messages: None,
        }
    }

    fn sum<'a>(parts: impl Iterator<Item = &'a DirReport> + Clone) -> DirReport {
        let (mut sent, mut send_s, mut received, mut recv_s) = (0, 0f64, 0, 0f64);
        for p in parts.clone() {
            sent += p.sender_bytes;
            send_s = send_s.max(p.sender_seconds);
            received += p.receiver_bytes;
            recv_s = recv_s.max(p.receiver_seconds);
        }
        let messages = parts.filter_map(|p| p.messages.as_ref());
        DirReport {
            messages: MessageRates::sum(messages, send_s, recv_s),
            ..DirReport::new(sent, send_s, received, recv_s)
        }
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
    /// Transactions and latency percentiles (`--rr`, `--crr`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyReport>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CpuReport {
    pub client: CpuSide,
    pub server: CpuSide,
    /// Received Gbit/s (both directions summed) per CPU core busy at the two ends together
    /// (client plus server CPU, 100% = one core): the efficiency figure published vsock work
    /// compares. None when no CPU time was measured.
    pub gbit_per_s_per_core: Option<f64>,
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
    /// Transactions and latency percentiles over the whole test (`--rr`, `--crr`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyReport>,
    /// `--vsock-buffer`: asked for, and what each end's vsock sockets read back (None at an
    /// end whose sockets are not vsock, such as the host side of hybrid vsock).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vsock_buffer: Option<VsockBufferReport>,
    /// Who the server saw as this client, as the PROXY header a relay in front wrote declared
    /// it (a server with `--accept-proxy`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_saw_client: Option<PeerSeen>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct VsockBufferReport {
    pub requested: u64,
    pub client: Option<u64>,
    pub server: Option<u64>,
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

pub(super) fn gbytes(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.2} GBytes", b / (1u64 << 30) as f64)
    } else if b >= (1u64 << 20) as f64 {
        format!("{:.1} MBytes", b / (1u64 << 20) as f64)
    } else {
        format!("{:.1} KBytes", b / 1024.0)
    }
}

pub(super) fn rate(bits_per_second: f64) -> String {
    if bits_per_second >= 1e9 {
        format!("{:.2} Gbits/sec", bits_per_second / 1e9)
    } else {
        format!("{:.1} Mbits/sec", bits_per_second / 1e6)
    }
}

pub(super) fn build_report(
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
        if !params.workload.is_stream() && c.transactions != s.transactions {
            errors.push(format!(
                "stream {}: the client counted {} transactions but the server {}",
                id + 1,
                c.transactions,
                s.transactions
            ));
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
            DirReport {
                messages: message::counted(params, (c, &s), "client", &mut errors),
                ..DirReport::new(c.sent, c.send_seconds, s.received, s.recv_seconds)
            }
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
            DirReport {
                messages: message::counted(params, (&s, c), "server", &mut errors),
                ..DirReport::new(s.sent, s.send_seconds, c.received, c.recv_seconds)
            }
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
    let mut report = TestReport {
        address: address.text.clone(),
        params: params.clone(),
        intervals,
        streams,
        sum_client_to_server: sum_up,
        sum_server_to_client: sum_down,
        cpu: CpuReport {
            client: client_cpu.into(),
            server: server_cpu.into(),
            gbit_per_s_per_core: None,
        },
        errors,
        latency: None,
        vsock_buffer: None,
        server_saw_client: None,
    };
    let cores = (client_cpu.total_pct() + server_cpu.total_pct()) / 100.0;
    report.cpu.gbit_per_s_per_core =
        (cores > 0.0).then(|| report.receiver_bits_per_second() / 1e9 / cores);
    report
}

pub(super) fn print_header(address: &Address, params: &Params) {
    let what = match params.limit {
        Limit::Time { ms } => format!("{:.1} s", ms as f64 / 1000.0),
        Limit::Bytes { total } => gbytes(total),
    };
    let dir = match (params.workload, params.direction) {
        (super::proto::Workload::Rr, _) => "request/response",
        (super::proto::Workload::Crr, _) => "request/response, a connection each",
        (_, TestDirection::Forward) => "client sends",
        (_, TestDirection::Reverse) => "server sends",
        (_, TestDirection::Bidir) => "both send",
    };
    let writes = if params.messages {
        "byte SEQPACKET messages"
    } else {
        "byte writes"
    };
    println!(
        "Connected to {} ({} stream{}, {} {writes}, {what}, {dir}{}{})",
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

pub(super) fn print_interval(r: &IntervalReport, direction: TestDirection) {
    if let Some(l) = &r.latency {
        println!("[SUM] {:6.2}-{:<6.2} sec  {}", r.start, r.end, l.text());
        return;
    }
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
            TestDirection::Forward => line(&label, s.tx_bytes, ""),
            TestDirection::Reverse => line(&label, s.rx_bytes, ""),
            TestDirection::Bidir => {
                line(&label, s.tx_bytes, "  TX");
                line(&label, s.rx_bytes, "  RX");
            }
        }
    }
    if many {
        let tx: u64 = r.streams.iter().map(|s| s.tx_bytes).sum();
        let rx: u64 = r.streams.iter().map(|s| s.rx_bytes).sum();
        match direction {
            TestDirection::Forward => line("SUM", tx, ""),
            TestDirection::Reverse => line("SUM", rx, ""),
            TestDirection::Bidir => {
                line("SUM", tx, "  TX");
                line("SUM", rx, "  RX");
            }
        }
    }
}

fn print_dir(label: &str, d: &DirReport, tag: &str) {
    let (sent, received) = message::columns(d.messages.as_ref());
    println!(
        "[{label}] {:6.2}-{:<6.2} sec  {:>12}  {:>16}{sent}  sender{tag}",
        0.0,
        d.sender_seconds,
        gbytes(d.sender_bytes),
        rate(d.sender_bits_per_second)
    );
    println!(
        "[{label}] {:6.2}-{:<6.2} sec  {:>12}  {:>16}{received}  receiver{tag}",
        0.0,
        d.receiver_seconds,
        gbytes(d.receiver_bytes),
        rate(d.receiver_bits_per_second)
    );
}

pub(super) fn print_summary(r: &TestReport) {
    println!("- - - - - - - - - - - - - - - - - - - - - - - - -");
    if let Some(l) = &r.latency {
        let end = r
            .sum_client_to_server
            .as_ref()
            .map_or(0.0, |d| d.sender_seconds);
        println!("[SUM] {:6.2}-{:<6.2} sec  {}  total", 0.0, end, l.text());
    }
    println!("[ ID] Interval           Transfer     Bitrate");
    let bidir = r.params.direction == TestDirection::Bidir;
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
    if let Some(v) = &r.vsock_buffer {
        let end = |b: Option<u64>| b.map_or("not vsock".to_string(), |b| b.to_string());
        println!(
            "vsock buffer: asked {}, client {}, server {}",
            v.requested,
            end(v.client),
            end(v.server)
        );
    }
    if let Some(seen) = &r.server_saw_client {
        println!("The server saw this client as {seen}");
    }
    if let Some(e) = r.cpu.gbit_per_s_per_core {
        println!("Efficiency: {e:.2} Gbit/s per CPU core used (client + server)");
    }
    for e in &r.errors {
        println!("error: {e}");
    }
}

/// Prints a sweep as one table, one row per write size.
pub(crate) fn print_sweep(reports: &[TestReport]) {
    // `--seqpacket`: the receivers' messages per second too.
    let messages = reports.iter().any(|r| r.params.messages);
    println!(
        "{:>9}  {:>13}  {:>13}  {:>10}  {:>10}  {:>11}{}",
        "len",
        "sender Gb/s",
        "receiver Gb/s",
        "client CPU",
        "server CPU",
        "Gb/s / core",
        if messages { "  receiver msgs/s" } else { "" }
    );
    for r in reports {
        let dirs: Vec<&DirReport> = r
            .sum_client_to_server
            .iter()
            .chain(r.sum_server_to_client.iter())
            .collect();
        let send: f64 = dirs.iter().map(|d| d.sender_bits_per_second).sum();
        let recv: f64 = dirs.iter().map(|d| d.receiver_bits_per_second).sum();
        let per_second: f64 = dirs
            .iter()
            .filter_map(|d| d.messages.as_ref())
            .map(|m| m.receiver_messages_per_second)
            .sum();
        let rate_column = match messages {
            true => format!("  {:>16.0}", per_second),
            false => String::new(),
        };
        println!(
            "{:>9}  {:>13.2}  {:>13.2}  {:>9.1}%  {:>9.1}%  {:>11}{rate_column}{}",
            human_size(r.params.len),
            send / 1e9,
            recv / 1e9,
            r.cpu.client.total_pct,
            r.cpu.server.total_pct,
            r.cpu
                .gbit_per_s_per_core
                .map_or("-".to_string(), |e| format!("{e:.2}")),
            if r.errors.is_empty() { "" } else { "  ERRORS" }
        );
    }
    if let Some(seen) = reports.iter().find_map(|r| r.server_saw_client.as_ref()) {
        println!("The server saw this client as {seen}");
    }
}

pub(crate) fn human_size(n: usize) -> String {
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
            transactions: 0,
            vsock_buffer: None,
            sent_messages: 0,
            received_messages: 0,
            error: None,
        }
    }

    fn params(direction: TestDirection) -> Params {
        Params {
            streams: 2,
            len: 1024,
            direction,
            limit: Limit::Time { ms: 1000 },
            verify: false,
            zerocopy: false,
            workload: crate::bench::proto::Workload::Stream,
            vsock_buffer: None,
            messages: false,
        }
    }

    #[test]
    fn matching_counts_make_a_clean_report_with_sums() {
        let addr = Address::parse("TCP:127.0.0.1:1").unwrap();
        let client = [counts(0, 100, 0), counts(1, 300, 0)];
        let server = [counts(0, 0, 100), counts(1, 0, 300)];
        let r = build_report(
            &addr,
            &params(TestDirection::Forward),
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
        assert_eq!(r.cpu.gbit_per_s_per_core, None, "no CPU measured");
        let busy = Cpu {
            user_pct: 10.0,
            system_pct: 40.0,
        };
        let r = build_report(
            &addr,
            &params(TestDirection::Forward),
            vec![],
            &client,
            &server,
            busy,
            busy,
        );
        // 1600 bit/s over one core in all.
        assert_eq!(r.cpu.gbit_per_s_per_core, Some(1600.0 / 1e9));
    }

    #[test]
    fn a_count_mismatch_is_an_error_naming_the_stream() {
        let addr = Address::parse("TCP:127.0.0.1:1").unwrap();
        let client = [counts(0, 0, 90), counts(1, 0, 300)];
        let server = [counts(0, 100, 0), counts(1, 300, 0)];
        let r = build_report(
            &addr,
            &params(TestDirection::Reverse),
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
            &params(TestDirection::Bidir),
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
