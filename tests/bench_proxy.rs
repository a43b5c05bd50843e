//! `vsplice bench server --accept-proxy` behind a relay with `send-proxy` (issue 20, item 4):
//! `vsplice bench client` -> `vsplice TCP-LISTEN ... TCP:...,send-proxy=v1|v2` -> the bench
//! server, all real processes on loopback. The client binds 127.0.0.2 (all of 127/8 is
//! loopback) and the relay dials from 127.0.0.1, so the server can only name 127.0.0.2 if it
//! read the header. Over vsock (the declared CID) it runs in the guest lab:
//! `tests/vsock_guest.rs`, `send_proxy_v2_...`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

use common::{Relay, free_port, vsplice_bin, vsplice_json};
use serde_json::Value;

/// A bench server with `--accept-proxy` on 127.0.0.1, the lines it prints per test, and its
/// port.
fn accept_proxy_server() -> (Relay, Receiver<String>, u16) {
    let port = free_port();
    let mut server = Relay::spawn(
        &[
            "bench",
            "server",
            &format!("TCP-LISTEN:{port},bind=127.0.0.1"),
            "--accept-proxy",
        ],
        Stdio::null(),
        Stdio::piped(),
    );
    server.wait_for_stdout("listening on");
    let out = server.child.stdout.take().unwrap();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            // The rest of the "listening on" line is not a test's.
            if line.starts_with("test ") && tx.send(line).is_err() {
                return;
            }
        }
    });
    (server, rx, port)
}

/// A relay in front of the server on `server_port`, writing `send-proxy=VERSION`; its port.
fn send_proxy_relay(version: &str, server_port: u16) -> (Relay, u16) {
    let port = free_port();
    let relay = Relay::start(&[
        &format!("TCP-LISTEN:{port},fork,bind=127.0.0.1"),
        &format!("TCP:127.0.0.1:{server_port},send-proxy={version}"),
    ]);
    (relay, port)
}

/// The next line the server printed (within 30 s).
fn next_line(lines: &Receiver<String>) -> String {
    lines
        .recv_timeout(Duration::from_secs(30))
        .expect("the server printed a line for the test")
}

/// Checks a report's `server_saw_client`: the client on 127.0.0.2, by a `version` header
/// from the relay on 127.0.0.1.
fn assert_saw_the_true_client(report: &Value, version: &str) {
    let seen = &report["server_saw_client"];
    let client = seen["client"].as_str().unwrap_or_default();
    assert!(client.starts_with("127.0.0.2:"), "{seen}");
    assert!(
        seen["via"]
            .as_str()
            .is_some_and(|v| v.starts_with("127.0.0.1:")),
        "{seen}"
    );
    assert_eq!(seen["proxy"], version, "{seen}");
    assert_eq!(
        report["errors"].as_array().map(Vec::len),
        Some(0),
        "{report}"
    );
}

#[test]
fn a_bench_through_a_send_proxy_v2_relay_reports_the_clients_true_address_for_each_workload() {
    let (_server, lines, server_port) = accept_proxy_server();
    let (_relay, relay_port) = send_proxy_relay("v2", server_port);
    let target = format!("TCP:127.0.0.1:{relay_port},bind=127.0.0.2");
    let workloads: [&[&str]; 3] = [
        &["--bytes", "32M", "--streams", "2", "--verify"],
        &["--rr", "--time", "1"],
        &["--crr", "--time", "1", "--streams", "2"],
    ];
    for workload in workloads {
        let mut args = vec!["bench", "client", &target, "--interval", "0"];
        args.extend_from_slice(workload);
        let doc = vsplice_json(&args);
        assert_saw_the_true_client(&doc, "v2");
        if workload[0] == "--bytes" {
            assert_eq!(doc["sum_client_to_server"]["receiver_bytes"], 32 << 20);
        } else {
            let done = doc["latency"]["transactions"].as_u64().unwrap_or(0);
            assert!(done > 0, "{workload:?}: no transaction: {doc}");
        }
        // The server's own text output names the same client.
        let line = next_line(&lines);
        let client = doc["server_saw_client"]["client"].as_str().unwrap();
        assert!(
            line.contains(&format!("client {client} (PROXY v2 header from 127.0.0.1:")),
            "{line}"
        );
    }
}

#[test]
fn a_sweep_through_a_send_proxy_v1_relay_reports_the_clients_true_address_in_text_and_json() {
    let (_server, lines, server_port) = accept_proxy_server();
    let (_relay, relay_port) = send_proxy_relay("v1", server_port);
    let target = format!("TCP:127.0.0.1:{relay_port},bind=127.0.0.2");
    let doc = vsplice_json(&[
        "bench", "client", &target, "--sweep", "4K,64K", "--bytes", "8M",
    ]);
    let sweep = doc["sweep"].as_array().expect("a sweep document");
    assert_eq!(sweep.len(), 2);
    for report in sweep {
        assert_saw_the_true_client(report, "v1");
    }
    for _ in 0..2 {
        assert!(next_line(&lines).contains("client 127.0.0.2:"));
    }
    // The text output says it too.
    let out = Command::new(vsplice_bin())
        .args([
            "bench",
            "client",
            &target,
            "--bytes",
            "8M",
            "--interval",
            "0",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("The server saw this client as 127.0.0.2:")
            && text.contains("(PROXY v1 header from 127.0.0.1:"),
        "{text}"
    );
}

/// Reads what the server answers a connection, to its end (within 30 s).
fn answer(stream: &mut TcpStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut got = Vec::new();
    let _ = stream.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn a_connection_without_a_valid_proxy_header_is_refused_with_a_message_and_the_server_stays_up() {
    let (_server, _lines, server_port) = accept_proxy_server();
    let direct = format!("TCP:127.0.0.1:{server_port}");
    // A bench client straight to the server: its hello is no PROXY header.
    let out = Command::new(vsplice_bin())
        .args(["bench", "client", &direct, "--time", "1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no valid PROXY protocol header (bad-signature")
            && err.contains("--accept-proxy"),
        "{err}"
    );
    // A malformed v1 line is refused at once, naming the reason.
    let mut bad = TcpStream::connect(("127.0.0.1", server_port)).unwrap();
    bad.write_all(b"PROXY TCP4 999.0.0.1 127.0.0.1 1 2\r\n{}\n")
        .unwrap();
    let said = answer(&mut bad);
    assert!(
        said.contains("no valid PROXY protocol header (bad-v1"),
        "{said}"
    );
    // Half a v2 header, then silence: refused once the header's time (5 s) is up.
    let mut slow = TcpStream::connect(("127.0.0.1", server_port)).unwrap();
    slow.write_all(b"\r\n\r\n\0\r\nQU").unwrap();
    let said = answer(&mut slow);
    assert!(
        said.contains("no complete PROXY protocol header within 5 s"),
        "{said}"
    );
    // The server still serves a run through a relay.
    let (_relay, relay_port) = send_proxy_relay("v2", server_port);
    let target = format!("TCP:127.0.0.1:{relay_port},bind=127.0.0.2");
    let doc = vsplice_json(&["bench", "client", &target, "--crr", "--time", "1"]);
    assert_saw_the_true_client(&doc, "v2");
}
