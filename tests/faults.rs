//! Faults from outside, against the real relay binary: every signal that asks a process to end
//! (it must stop cleanly, remove its UNIX-LISTEN socket file and leave the path free for the
//! next start). Each case moves hashed payloads through the relay before and after, so the
//! relay is shown to serve, not merely to exist.

mod common;

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const LONG: Duration = Duration::from_secs(120);
const EACH_WAY: usize = 8 * MIB;

/// One connection through a running `UNIX-LISTEN:path,fork` relay to `server`, `EACH_WAY`
/// bytes each way at once, both hashes checked.
fn exchange_through(path: &Path, server: &ExchangeServer, seed: u64) {
    let up = payload(EACH_WAY, seed);
    let down_sha = sha_hex(&payload(EACH_WAY, seed + 1).data);
    let got = exchange(
        Box::new(UnixStream::connect(path).expect("connect to the relay")),
        up.data.clone(),
    )
    .expect("client exchange");
    assert_eq!(got.received, EACH_WAY, "client received every byte");
    assert_eq!(
        got.sha, down_sha,
        "client received the server's bytes intact"
    );
    let at_server = server.next(LONG);
    assert_eq!(at_server.received, EACH_WAY, "server received every byte");
    assert_eq!(
        at_server.sha, up.sha,
        "server received the client's bytes intact"
    );
}

/// Starts a relay on a UNIX-LISTEN path, moves a payload through it, sends `signal`, and checks
/// that it exits 0, logs the stop, removes the socket file, and that a new relay can take the
/// same path and serve.
fn signal_stops_cleanly(signal: Signal) {
    let dir = Scratch::new("signal");
    let path = dir.path("relay.sock");
    let server = Listen::tcp();
    let upstream = server.connect_address();
    let server = ExchangeServer::spawn(server, payload(EACH_WAY, 2).data, 2);
    let listen = format!("UNIX-LISTEN:{},fork", path.display());

    let mut relay = Relay::start(&["-d", &listen, &upstream]);
    exchange_through(&path, &server, 1);
    // The connection is over; wait until the relay has seen it close, so the signal finds it
    // idle (what a signal does to open connections is the drain's business, not this test's).
    relay.wait_for_log("closed", LONG);
    let pid = Pid::from_raw(relay.child.id() as i32);
    kill(pid, signal).expect("send the signal");
    let status = relay.wait_exit(LONG);
    assert_eq!(
        status.code(),
        Some(0),
        "{signal} ends the relay with status 0 (not by the signal: {status}); stderr:\n{}",
        relay.log()
    );
    assert!(
        relay.log().contains(&format!("signal {}", signal as i32)),
        "the relay logs which signal stopped it; stderr:\n{}",
        relay.log()
    );
    assert!(
        !path.exists(),
        "{signal} leaves no socket file behind at {}",
        path.display()
    );

    // The path is free: a new relay listens there and serves.
    let mut again = Relay::start(&["-d", &listen, &upstream]);
    exchange_through(&path, &server, 1);
    assert_eq!(again.stop().code(), Some(0), "{}", again.log());
    assert!(!path.exists(), "SIGTERM leaves no socket file behind");
}

#[test]
fn sighup_stops_the_relay_cleanly_and_frees_its_socket_path() {
    signal_stops_cleanly(Signal::SIGHUP);
}

#[test]
fn sigint_stops_the_relay_cleanly_and_frees_its_socket_path() {
    signal_stops_cleanly(Signal::SIGINT);
}

#[test]
fn sigquit_stops_the_relay_cleanly_and_frees_its_socket_path() {
    signal_stops_cleanly(Signal::SIGQUIT);
}

#[test]
fn sigusr1_stops_the_relay_cleanly_and_frees_its_socket_path() {
    signal_stops_cleanly(Signal::SIGUSR1);
}

#[test]
fn sigusr2_stops_the_relay_cleanly_and_frees_its_socket_path() {
    signal_stops_cleanly(Signal::SIGUSR2);
}

#[test]
fn sigalrm_stops_the_relay_cleanly_and_frees_its_socket_path() {
    signal_stops_cleanly(Signal::SIGALRM);
}

#[test]
fn sigterm_stops_the_relay_cleanly_and_frees_its_socket_path() {
    signal_stops_cleanly(Signal::SIGTERM);
}

#[test]
fn sigxcpu_stops_the_relay_cleanly_and_frees_its_socket_path() {
    signal_stops_cleanly(Signal::SIGXCPU);
}

#[test]
fn sigio_stops_the_relay_cleanly_and_frees_its_socket_path() {
    signal_stops_cleanly(Signal::SIGIO);
}

#[test]
fn sigpwr_stops_the_relay_cleanly_and_frees_its_socket_path() {
    signal_stops_cleanly(Signal::SIGPWR);
}

#[test]
fn sigpipe_from_outside_does_not_stop_the_relay() {
    let dir = Scratch::new("sigpipe");
    let path = dir.path("relay.sock");
    let server = Listen::tcp();
    let upstream = server.connect_address();
    let server = ExchangeServer::spawn(server, payload(EACH_WAY, 2).data, 2);
    let listen = format!("UNIX-LISTEN:{},fork", path.display());
    let mut relay = Relay::start(&["-d", &listen, &upstream]);
    let pid = Pid::from_raw(relay.child.id() as i32);
    kill(pid, Signal::SIGPIPE).expect("send SIGPIPE");
    exchange_through(&path, &server, 1);
    assert!(
        relay.is_running(),
        "SIGPIPE is ignored; stderr:\n{}",
        relay.log()
    );
    exchange_through(&path, &server, 1);
    assert_eq!(relay.stop().code(), Some(0), "{}", relay.log());
    assert!(!path.exists());
}
