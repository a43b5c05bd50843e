//! `vsplice bench --seqpacket` end to end on the machine, over UNIX SEQPACKET: server and
//! client as real processes, every message counted and its length checked at the far end,
//! patterns checked, a sweep by message size, a vsplice relay in the middle, a man in the
//! middle that merges two messages (the check must catch it), and the usage errors. Over vsock
//! SEQPACKET it runs in the guest lab (tests/vsock_guest.rs, `bench_seqpacket_over_vsock`).

mod common;

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::*;
use nix::sys::socket::{
    Backlog, MsgFlags, Shutdown, UnixAddr, accept, bind, connect, listen, recv, send, shutdown,
};
use serde_json::Value;

use common::bench::{BenchServer as Server, bench_client as client, bench_json as json_client};

/// A SEQPACKET bench server on a fresh path; the server, its scratch folder and the path.
fn seqpacket_server() -> (Server, Scratch, String) {
    let dir = Scratch::new("bench-seqpacket");
    let path = dir.path("bench.sock").display().to_string();
    let server = Server::start(&[&format!("UNIX-LISTEN:{path}"), "--seqpacket"]);
    (server, dir, path)
}

/// The messages both ends counted in one direction of a report, checked equal.
fn messages(dir: &Value) -> u64 {
    let m = &dir["messages"];
    assert_eq!(m["sender_messages"], m["receiver_messages"], "{dir}");
    assert!(
        m["receiver_messages_per_second"].as_f64().unwrap() > 0.0,
        "{dir}"
    );
    m["receiver_messages"].as_u64().unwrap()
}

#[test]
fn seqpacket_messages_both_ways_are_counted_whole_and_verified_at_both_ends() {
    let (_server, _dir, path) = seqpacket_server();
    // 20 MiB over 2 streams in 1000-byte messages: 10,486 a stream each way, the last of
    // each 760 bytes.
    let doc = json_client(&[
        &format!("UNIX-CONNECT:{path}"),
        "--seqpacket",
        "--bytes",
        "20M",
        "--len",
        "1000",
        "--streams",
        "2",
        "--bidir",
        "--verify",
    ]);
    assert_eq!(doc["errors"].as_array().unwrap().len(), 0, "{doc}");
    assert_eq!(doc["params"]["messages"], true);
    for dir in ["sum_client_to_server", "sum_server_to_client"] {
        let d = &doc[dir];
        assert_eq!(d["receiver_bytes"], 20 << 20, "{dir}");
        assert_eq!(messages(d), 2 * 10_486, "{dir}");
    }
    for s in doc["streams"].as_array().unwrap() {
        assert_eq!(messages(&s["client_to_server"]), 10_486);
    }
}

#[test]
fn a_seqpacket_sweep_reports_messages_per_second_by_size() {
    let (_server, _dir, path) = seqpacket_server();
    let addr = format!("UNIX-CONNECT:{path}");
    let doc = json_client(&[
        &addr,
        "--seqpacket",
        "--time",
        "0.3",
        "--sweep",
        "64,4K,64K",
    ]);
    let rows = doc["sweep"].as_array().unwrap();
    let lens: Vec<u64> = rows
        .iter()
        .map(|r| r["params"]["len"].as_u64().unwrap())
        .collect();
    assert_eq!(lens, vec![64, 4096, 65536]);
    for r in rows {
        assert_eq!(r["errors"].as_array().unwrap().len(), 0, "{r}");
        let up = &r["sum_client_to_server"];
        let len = r["params"]["len"].as_u64().unwrap();
        assert_eq!(
            up["receiver_bytes"].as_u64().unwrap(),
            messages(up) * len,
            "every message of a --time test is --len bytes"
        );
    }
    let (code, out, err) = client(&[&addr, "--seqpacket", "--time", "0.3", "--sweep", "1K,16K"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("receiver msgs/s"), "{out}");
    assert!(out.contains("1K") && out.contains("16K"), "{out}");
    // A single run prints each end's messages and rate.
    let (code, out, err) = client(&[&addr, "--seqpacket", "--time", "0.3", "--len", "512"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("512 byte SEQPACKET messages"), "{out}");
    // kmsg/s or Mmsg/s, as fast as the machine is.
    assert!(
        out.contains("msgs") && out.contains("msg/s  sender"),
        "{out}"
    );
}

#[test]
fn through_a_seqpacket_relay_every_message_arrives_whole() {
    let (_server, dir, path) = seqpacket_server();
    let front = dir.path("front.sock").display().to_string();
    let mut relay = Relay::start(&[
        &format!("UNIX-LISTEN:{front},socktype=seqpacket,fork"),
        &format!("UNIX-CONNECT:{path},socktype=seqpacket"),
    ]);
    let doc = json_client(&[
        &format!("UNIX-CONNECT:{front},socktype=5"),
        "--bytes",
        "16M",
        "--len",
        "700",
        "--bidir",
        "--streams",
        "3",
        "--verify",
    ]);
    assert_eq!(doc["errors"].as_array().unwrap().len(), 0, "{doc}");
    // socktype=5 on the address is the same as --seqpacket.
    assert_eq!(doc["params"]["messages"], true);
    for dir in ["sum_client_to_server", "sum_server_to_client"] {
        assert_eq!(doc[dir]["receiver_bytes"], 16 << 20, "{dir}");
        assert!(messages(&doc[dir]) >= 3 * ((16 << 20) / 3 / 700), "{dir}");
    }
    assert!(relay.stop().success());
}

/// Passes messages from `from` to `to` until the end, sending the data messages `merge` and
/// `merge + 1` (counted after a data connection's hello) as one: a broken relay.
fn pass(from: Arc<OwnedFd>, to: Arc<OwnedFd>, merge: usize) {
    let mut buf = vec![0u8; 1 << 20];
    let mut data_hello = false;
    let mut held: Option<Vec<u8>> = None;
    for n in 0usize.. {
        let got = match recv(from.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(0) | Err(_) => break,
            Ok(got) => got,
        };
        let message = &buf[..got];
        if n == 0 {
            data_hello = String::from_utf8_lossy(message).contains("\"type\":\"data\"");
        }
        let out = match held.take() {
            Some(mut first) => {
                first.extend_from_slice(message);
                first
            }
            None if data_hello && n == merge => {
                held = Some(message.to_vec());
                continue;
            }
            None => message.to_vec(),
        };
        if send(to.as_raw_fd(), &out, MsgFlags::MSG_NOSIGNAL).is_err() {
            break;
        }
    }
    let _ = shutdown(to.as_raw_fd(), Shutdown::Write);
}

/// A SEQPACKET man in the middle at `front` for the server at `back` that merges two
/// messages of every data connection from the client.
fn merging_proxy(front: &Path, back: &Path, merge: usize) {
    let listener = common::messages::unix_seqpacket();
    bind(listener.as_raw_fd(), &UnixAddr::new(front).unwrap()).unwrap();
    listen(&listener, Backlog::new(16).unwrap()).unwrap();
    let back = back.to_path_buf();
    std::thread::spawn(move || {
        while let Ok(near) = accept(&listener) {
            let near = Arc::new(near);
            let far = common::messages::unix_seqpacket();
            connect(far.as_raw_fd(), &UnixAddr::new(&back).unwrap()).unwrap();
            let far = Arc::new(far);
            let (a, b) = (near.clone(), far.clone());
            std::thread::spawn(move || pass(a, b, merge));
            std::thread::spawn(move || pass(far, near, usize::MAX));
        }
    });
}

#[test]
fn a_relay_that_merges_two_messages_fails_the_test_naming_the_message() {
    let (_server, dir, path) = seqpacket_server();
    let front = dir.path("broken.sock");
    merging_proxy(&front, Path::new(&path), 5);
    let (code, out, err) = client(&[
        &format!("UNIX-CONNECT:{}", front.display()),
        "--seqpacket",
        "--bytes",
        "50K",
        "--len",
        "1000",
        "--stall-timeout",
        "5",
    ]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("message 5 of stream 1 was 2000 bytes, sent as one of 1000")
            && err.contains("(merged)"),
        "stderr: {err}\nstdout: {out}"
    );
}

#[test]
fn seqpacket_usage_errors_exit_2_naming_the_bad_token() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["TCP:127.0.0.1:1", "--seqpacket"],
            "--seqpacket: \"TCP:127.0.0.1:1\" has no SOCK_SEQPACKET",
        ),
        (
            &["VSOCK-UDS-CONNECT:/nonexistent:5", "--seqpacket"],
            "has no SOCK_SEQPACKET",
        ),
        (
            &["UNIX-CONNECT:/nonexistent,socktype=1", "--seqpacket"],
            "asks for a stream (socktype=1)",
        ),
        (
            &["UNIX-CONNECT:/nonexistent", "--seqpacket", "--rr"],
            "--rr",
        ),
        (
            &["UNIX-CONNECT:/nonexistent", "--seqpacket", "--zerocopy"],
            "--zerocopy",
        ),
        (
            &["UNIX-CONNECT:/nonexistent", "--seqpacket", "--len", "300K"],
            "--len 307200 is more than the largest --seqpacket message",
        ),
        (
            &[
                "UNIX-CONNECT:/nonexistent",
                "--seqpacket",
                "--sweep",
                "1K,1M",
            ],
            "--len 1048576 is more than the largest --seqpacket message",
        ),
        (
            &["UNIX-CONNECT:/nonexistent,socktype=5", "--crr"],
            "--seqpacket measures messages one way or both, not --rr/--crr",
        ),
    ];
    for (args, want) in cases {
        let (code, out, err) = client(args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let out = Command::new(vsplice_bin())
        .args(["bench", "server", "TCP-LISTEN:1", "--seqpacket"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--seqpacket: \"TCP-LISTEN:1\" has no SOCK_SEQPACKET"),
        "{err}"
    );
}

#[test]
fn a_stream_client_at_a_seqpacket_server_gets_an_error_not_a_hang() {
    let (_server, _dir, path) = seqpacket_server();
    let (code, out, err) = client(&[&format!("UNIX-CONNECT:{path}"), "--time", "0.5"]);
    assert_ne!(code, 0, "{out}");
    assert_ne!(code, 2, "not a usage error: {err}");
    assert!(!err.is_empty(), "{out}");
}

/// 128 streams make the server's results line longer than two control messages (8 KiB): over
/// SEQPACKET it goes in pieces, each one message, and the client reads it whole.
#[test]
fn control_lines_longer_than_one_message_cross_seqpacket_in_pieces() {
    let (_server, _dir, path) = seqpacket_server();
    let doc = json_client(&[
        &format!("UNIX-CONNECT:{path}"),
        "--seqpacket",
        "--streams",
        "128",
        "--bytes",
        "8M",
        "--len",
        "4K",
    ]);
    assert_eq!(doc["errors"].as_array().unwrap().len(), 0, "{doc}");
    let streams = doc["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 128);
    let results = serde_json::to_string(&doc["streams"]).unwrap();
    assert!(results.len() > 16 << 10, "{} bytes", results.len());
    assert_eq!(messages(&doc["sum_client_to_server"]), 128 * 16);
}

/// A client that asks a stream server for a SEQPACKET test (by hand: vsplice's own client
/// cannot, its socket type follows the address) is refused with a message saying so.
#[test]
fn a_stream_server_refuses_a_test_that_asks_for_messages() {
    use std::io::{BufRead, BufReader, Write};
    let port = free_port();
    let _server = Server::start(&[&format!("TCP-LISTEN:{port},bind=127.0.0.1")]);
    let mut control = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let hello = serde_json::json!({
        "type": "control",
        "version": 2,
        "cookie": "seqpacket-on-tcp",
        "params": {
            "streams": 1, "len": 1000, "direction": "forward",
            "limit": {"time": {"ms": 1000}}, "verify": false, "zerocopy": false,
            "messages": true
        }
    });
    control.write_all(format!("{hello}\n").as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(&control).read_line(&mut line).unwrap();
    let reply: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(reply["type"], "error", "{line}");
    assert_eq!(
        reply["message"],
        "the test asks for SEQPACKET messages, this server's sockets are streams"
    );
}
