//! `--json=iperf3`: a test report in the shape of `iperf3 -J`, for the fields both tools have
//! (`start.connected[]`, `start.test_start`, `intervals[].streams[]`, `intervals[].sum`,
//! `end.streams[]`, `end.sum_sent`, `end.sum_received`, `end.cpu_utilization_percent`), so
//! scripts and plotting tools written for iperf3 read it unchanged. The client is iperf3's
//! "host", the server its "remote"; a bidirectional test adds iperf3's `*_bidir_reverse` sums.
//! Problems found at the end go in iperf3's top-level `error`.

use serde_json::{Value, json};

use super::proto::{Limit, TestDirection};
use super::report::{DirReport, IntervalReport, TestReport};

/// `Thu, 26 Nov 2026 02:59:42 GMT` for a Unix time (iperf3's `start.timestamp.time`).
fn http_date(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn family(address: &str) -> &'static str {
    let upper = address.to_ascii_uppercase();
    if upper.starts_with("VSOCK") {
        "vsock"
    } else if upper.starts_with("UNIX") {
        "UNIX"
    } else {
        "TCP"
    }
}

/// One end's totals of one direction, as iperf3 writes `end.streams[].sender` and the sums.
fn side(socket: u32, bytes: u64, seconds: f64, sender: bool) -> Value {
    without_socket_for_sums(json!({
        "socket": socket,
        "start": 0,
        "end": seconds,
        "seconds": seconds,
        "bytes": bytes,
        "bits_per_second": if seconds > 0.0 { bytes as f64 * 8.0 / seconds } else { 0.0 },
        "sender": sender,
    }))
}

/// Sums (socket 0 here) carry no `socket` key in iperf3.
fn without_socket_for_sums(mut v: Value) -> Value {
    if v["socket"] == 0 {
        if let Some(map) = v.as_object_mut() {
            map.remove("socket");
        }
    }
    v
}

fn sums(d: Option<&DirReport>, client_sends: bool) -> (Value, Value) {
    let d = d.cloned().unwrap_or_default();
    (
        side(0, d.sender_bytes, d.sender_seconds, client_sends),
        side(0, d.receiver_bytes, d.receiver_seconds, client_sends),
    )
}

fn interval_entry(socket: u32, start: f64, end: f64, bytes: u64, sender: bool) -> Value {
    let seconds = (end - start).max(1e-9);
    without_socket_for_sums(json!({
        "socket": socket,
        "start": start,
        "end": end,
        "seconds": seconds,
        "bytes": bytes,
        "bits_per_second": bytes as f64 * 8.0 / seconds,
        "omitted": false,
        "sender": sender,
    }))
}

fn interval(r: &IntervalReport, direction: TestDirection) -> Value {
    // iperf3 lists the client's sending streams first; --reverse streams are the received.
    let up = direction.client_sends();
    let pick = |tx: u64, rx: u64| if up { tx } else { rx };
    let mut streams: Vec<Value> = r
        .streams
        .iter()
        .map(|s| interval_entry(s.stream, r.start, r.end, pick(s.tx_bytes, s.rx_bytes), up))
        .collect();
    let total = |f: &dyn Fn(&super::report::IntervalStream) -> u64| -> u64 {
        r.streams.iter().map(f).sum()
    };
    let sum = interval_entry(
        0,
        r.start,
        r.end,
        total(&|s| pick(s.tx_bytes, s.rx_bytes)),
        up,
    );
    let mut doc = json!({ "streams": [], "sum": sum });
    if direction == TestDirection::Bidir {
        streams.extend(
            r.streams
                .iter()
                .map(|s| interval_entry(s.stream, r.start, r.end, s.rx_bytes, false)),
        );
        doc["sum_bidir_reverse"] = interval_entry(0, r.start, r.end, total(&|s| s.rx_bytes), false);
    }
    doc["streams"] = Value::Array(streams);
    doc
}

/// The iperf3 `-J` document for one test.
pub(crate) fn document(r: &TestReport, started_unix: u64) -> Value {
    let p = &r.params;
    let client_sends = p.direction.client_sends();
    let connected: Vec<Value> = r
        .streams
        .iter()
        .map(|s| {
            json!({
                "socket": s.stream,
                "local_host": "",
                "local_port": 0,
                "remote_host": r.address,
                "remote_port": 0,
            })
        })
        .collect();
    let (duration, bytes) = match p.limit {
        Limit::Time { ms } => (ms.div_ceil(1000), 0),
        Limit::Bytes { total } => (0, total),
    };
    let test_start = json!({
        "protocol": family(&r.address),
        "num_streams": p.streams,
        "blksize": p.len,
        "omit": 0,
        "duration": duration,
        "bytes": bytes,
        "blocks": 0,
        "reverse": i32::from(p.direction == TestDirection::Reverse),
        "tos": 0,
    });
    let main = if client_sends {
        |s: &super::report::StreamReport| s.client_to_server.clone()
    } else {
        |s: &super::report::StreamReport| s.server_to_client.clone()
    };
    let mut end_streams: Vec<Value> = r
        .streams
        .iter()
        .map(|s| {
            let d = main(s).unwrap_or_default();
            json!({
                "sender": side(s.stream, d.sender_bytes, d.sender_seconds, client_sends),
                "receiver": side(s.stream, d.receiver_bytes, d.receiver_seconds, client_sends),
            })
        })
        .collect();
    let main_sum = if client_sends {
        r.sum_client_to_server.as_ref()
    } else {
        r.sum_server_to_client.as_ref()
    };
    let (sum_sent, sum_received) = sums(main_sum, client_sends);
    let (c, s) = (r.cpu.client, r.cpu.server);
    let mut end = json!({
        "streams": [],
        "sum_sent": sum_sent,
        "sum_received": sum_received,
        "cpu_utilization_percent": {
            "host_total": c.total_pct,
            "host_user": c.user_pct,
            "host_system": c.system_pct,
            "remote_total": s.total_pct,
            "remote_user": s.user_pct,
            "remote_system": s.system_pct,
        },
    });
    if p.direction == TestDirection::Bidir {
        end_streams.extend(r.streams.iter().map(|s| {
            let d = s.server_to_client.clone().unwrap_or_default();
            json!({
                "sender": side(s.stream, d.sender_bytes, d.sender_seconds, false),
                "receiver": side(s.stream, d.receiver_bytes, d.receiver_seconds, false),
            })
        }));
        let (sent, received) = sums(r.sum_server_to_client.as_ref(), false);
        end["sum_sent_bidir_reverse"] = sent;
        end["sum_received_bidir_reverse"] = received;
    }
    end["streams"] = Value::Array(end_streams);
    let mut doc = json!({
        "start": {
            "connected": connected,
            "version": concat!("vsplice ", env!("CARGO_PKG_VERSION")),
            "timestamp": { "time": http_date(started_unix), "timesecs": started_unix },
            "connecting_to": { "host": r.address, "port": 0 },
            "test_start": test_start,
        },
        "intervals": r.intervals.iter().map(|i| interval(i, p.direction)).collect::<Vec<_>>(),
        "end": end,
    });
    if !r.errors.is_empty() {
        doc["error"] = json!(r.errors.join("; "));
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_read_like_iperf3s() {
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(1_795_661_982), "Thu, 26 Nov 2026 02:59:42 GMT");
        assert_eq!(http_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
    }
}
