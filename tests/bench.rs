//! `vsplice bench` end to end on the machine: server and client as real processes over TCP
//! and UNIX, byte counts and patterns checked, a relay in the middle, and the failure modes a
//! user meets (unsupported MSG_ZEROCOPY, a server that dies mid-test, wrong address kinds).
//! Over vsock it runs in the guest lab (tests/vsock_guest.rs).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A running `vsplice bench server`, killed on drop.
struct Server {
    child: std::process::Child,
}

impl Server {
    fn start(listen: &str) -> Server {
        let mut child = Command::new(vsplice_bin())
            .args(["bench", "server", listen])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        let mut line = String::new();
        use std::io::Read;
        let mut byte = [0u8; 1];
        while !line.contains("listening on") {
            assert_eq!(out.read(&mut byte).unwrap(), 1, "server exited: {line}");
            line.push(byte[0] as char);
        }
        Server { child }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(vsplice_bin())
        .args(["bench", "client"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json_client(args: &[&str]) -> Value {
    let mut all = vec!["bench", "client"];
    all.extend_from_slice(args);
    vsplice_json(&all)
}

fn tcp_server() -> (Server, String) {
    let port = free_port();
    (
        Server::start(&format!("TCP-LISTEN:{port},bind=127.0.0.1")),
        format!("TCP:127.0.0.1:{port}"),
    )
}

#[test]
fn byte_budget_is_delivered_and_verified_at_both_ends() {
    let (_server, addr) = tcp_server();
    let doc = json_client(&[&addr, "--bytes", "64M", "--streams", "2", "--verify"]);
    let sum = &doc["sum_client_to_server"];
    assert_eq!(sum["sender_bytes"], 64 << 20);
    assert_eq!(
        sum["receiver_bytes"],
        64 << 20,
        "the server counted every byte"
    );
    assert!(sum["receiver_bits_per_second"].as_f64().unwrap() > 0.0);
    assert_eq!(doc["errors"].as_array().unwrap().len(), 0);
    assert!(doc["cpu"]["server"]["total_pct"].as_f64().unwrap() > 0.0);
    assert_eq!(doc["streams"].as_array().unwrap().len(), 2);
}

#[test]
fn unix_bidirectional_streams_with_intervals() {
    let dir = Scratch::new("bench-unix");
    let path = dir.path("bench.sock");
    let _server = Server::start(&format!("UNIX-LISTEN:{}", path.display()));
    let doc = json_client(&[
        &format!("UNIX-CONNECT:{}", path.display()),
        "--time",
        "1.2",
        "--interval",
        "0.5",
        "--streams",
        "3",
        "--bidir",
        "--verify",
        "--len",
        "64K",
    ]);
    assert_eq!(doc["errors"].as_array().unwrap().len(), 0, "{doc}");
    for dir in ["sum_client_to_server", "sum_server_to_client"] {
        let d = &doc[dir];
        assert_eq!(d["sender_bytes"], d["receiver_bytes"], "{dir}");
        assert!(d["receiver_bytes"].as_u64().unwrap() > 0, "{dir}");
    }
    assert!(doc["intervals"].as_array().unwrap().len() >= 2, "{doc}");
}

#[test]
fn text_output_has_interval_lines_and_both_ends() {
    let (_server, addr) = tcp_server();
    let (code, out, err) = client(&[&addr, "--time", "1.5", "--interval", "0.5", "--reverse"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("0.00-0.5"), "{out}");
    assert!(out.contains("sender") && out.contains("receiver"), "{out}");
    assert!(out.contains("CPU Utilization: client"), "{out}");
}

#[test]
fn zerocopy_with_verification_on_tcp() {
    let (_server, addr) = tcp_server();
    for dir in [None, Some("--reverse")] {
        let mut args = vec![addr.as_str(), "--bytes", "48M", "--zerocopy", "--verify"];
        args.extend(dir);
        let doc = json_client(&args);
        assert_eq!(doc["errors"].as_array().unwrap().len(), 0, "{doc}");
    }
}

#[test]
fn zerocopy_where_unsupported_is_a_clear_error() {
    let dir = Scratch::new("bench-zc");
    let path = dir.path("bench.sock");
    let _server = Server::start(&format!("UNIX-LISTEN:{}", path.display()));
    let (code, out, err) = client(&[
        &format!("UNIX-CONNECT:{}", path.display()),
        "--time",
        "1",
        "--zerocopy",
    ]);
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("--zerocopy: UNIX sockets do not support MSG_ZEROCOPY"),
        "{err}"
    );
}

#[test]
fn a_sweep_gives_one_row_per_size() {
    let (_server, addr) = tcp_server();
    let doc = json_client(&[&addr, "--time", "0.3", "--sweep", "4K,64K,1M"]);
    let rows = doc["sweep"].as_array().unwrap();
    let lens: Vec<u64> = rows
        .iter()
        .map(|r| r["params"]["len"].as_u64().unwrap())
        .collect();
    assert_eq!(lens, vec![4096, 65536, 1 << 20]);
    let (code, out, _) = client(&[&addr, "--time", "0.3", "--sweep", "4K,1M"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("len") && out.contains("4K") && out.contains("1M"),
        "{out}"
    );
}

#[test]
fn through_a_relay_every_byte_arrives() {
    let (_server, upstream) = tcp_server();
    let port = free_port();
    let listen = format!("TCP-LISTEN:{port},bind=127.0.0.1,fork");
    let mut relay = Relay::start(&[&listen, &upstream]);
    let doc = json_client(&[
        &format!("TCP:127.0.0.1:{port}"),
        "--bytes",
        "96M",
        "--bidir",
        "--streams",
        "4",
        "--verify",
    ]);
    assert_eq!(doc["errors"].as_array().unwrap().len(), 0, "{doc}");
    assert_eq!(doc["sum_client_to_server"]["receiver_bytes"], 96 << 20);
    assert_eq!(doc["sum_server_to_client"]["receiver_bytes"], 96 << 20);
    assert!(relay.stop().success());
}

#[test]
fn a_server_that_dies_mid_test_gives_a_clear_error_not_a_hang() {
    let (mut server, addr) = tcp_server();
    let started = Instant::now();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(800));
        let _ = server.child.kill();
        let _ = server.child.wait();
    });
    let (code, out, err) = client(&[&addr, "--time", "20", "--interval", "0"]);
    killer.join().unwrap();
    assert_ne!(code, 0, "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        err.contains("(did the bench server stop or die?)"),
        "stderr: {err}\nstdout: {out}"
    );
}

#[test]
fn wrong_address_kinds_exit_2() {
    let out = Command::new(vsplice_bin())
        .args(["bench", "server", "TCP:127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a listening address"));
    let (code, _, err) = client(&["TCP-LISTEN:1"]);
    assert_eq!(code, 2);
    assert!(err.contains("needs a connect address"), "{err}");
    let (code, _, err) = client(&["TCP:127.0.0.1:1", "--streams", "0"]);
    assert_eq!(code, 2);
    assert!(err.contains("not a stream count"), "{err}");
}

#[test]
fn the_demo_runs_without_setup() {
    let out = Command::new(vsplice_bin())
        .args(["bench", "demo", "--time", "0.5", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let runs = doc["runs"].as_array().unwrap();
    assert!(runs.len() >= 2);
    assert_eq!(runs[0]["path"], "client -> server (direct)");
    assert_eq!(runs[1]["path"], "client -> vsplice -> server");
    assert!(runs[1]["gbit_per_s"].as_f64().unwrap() > 0.0);
    assert!(runs[1]["relay_cpu_s_per_gib"].as_f64().unwrap() > 0.0);
}
