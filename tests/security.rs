//! Allow lists against the real relay binary: a peer the list refuses never reaches the
//! backend (the backend is not even dialed) and, over TCP, reads a reset rather than an end
//! of stream; an admitted peer's bytes go through whole.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use common::*;

/// A backend that counts the connections it is dialed with.
fn backend() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    l.set_nonblocking(true).unwrap();
    (l, port)
}

/// Connects to the relay, sends nothing, and reports what the first read saw.
fn first_read(port: u16) -> std::io::Result<usize> {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = [0u8; 64];
    c.read(&mut buf)
}

fn refused_with_a_reset_and_backend_never_dialed(fork: &str) {
    let (backend, bport) = backend();
    let port = free_port();
    let listen = format!("TCP-LISTEN:{port}{fork},allow=10.9.9.0/24");
    let connect = format!("TCP:127.0.0.1:{bport}");
    let relay = Relay::start(&[&listen, &connect]);
    let got = first_read(port);
    assert_eq!(
        got.as_ref().map_err(|e| e.kind()),
        Err(ErrorKind::ConnectionReset),
        "a refused peer reads a reset, got {got:?}"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        backend.accept().is_err(),
        "the backend was never dialed for a refused peer"
    );
    assert!(relay.log().contains("refused by the allow list"));
}

#[test]
fn a_forking_tcp_relay_refuses_a_peer_outside_its_allow_list_with_a_reset() {
    refused_with_a_reset_and_backend_never_dialed(",fork");
}

#[test]
fn a_single_connection_tcp_relay_refuses_a_peer_outside_its_allow_list_with_a_reset() {
    refused_with_a_reset_and_backend_never_dialed("");
}

#[test]
fn a_dual_stack_listener_admits_an_ipv4_peer_by_its_ipv4_entry() {
    let (backend, bport) = backend();
    backend.set_nonblocking(false).unwrap();
    let port = free_port();
    let listen = format!("TCP-LISTEN:{port},fork,allow=127.0.0.0/8");
    let connect = format!("TCP:127.0.0.1:{bport}");
    let _relay = Relay::start(&[&listen, &connect]);
    let data = payload(4 * MIB, 7);
    let server = std::thread::spawn(move || {
        let (mut s, _) = backend.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        sha_hex(&got)
    });
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.write_all(&data.data).unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(
        server.join().unwrap(),
        data.sha,
        "admitted bytes arrive whole"
    );
}

#[test]
fn a_dual_stack_listener_refuses_an_ipv4_peer_outside_its_allow_list_with_a_reset() {
    let (backend, bport) = backend();
    let port = free_port();
    let listen = format!("TCP-LISTEN:{port},fork,allow=10.9.9.0/24");
    let connect = format!("TCP:127.0.0.1:{bport}");
    let relay = Relay::start(&[&listen, &connect]);
    // The wildcard of TCP-LISTEN is IPv6's, dual-stack: the client below is accepted as
    // ::ffff:127.0.0.1, an IPv4-mapped address that the allow list must judge as 127.0.0.1.
    assert!(
        relay.log().contains(&format!("listening on [::]:{port}")),
        "the listener is dual-stack:\n{}",
        relay.log()
    );
    let got = first_read(port);
    assert_eq!(
        got.as_ref().map_err(|e| e.kind()),
        Err(ErrorKind::ConnectionReset),
        "a refused IPv4 peer of a dual-stack listener reads a reset, got {got:?}:\n{}",
        relay.log()
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        backend.accept().is_err(),
        "the backend was dialed for a refused peer"
    );
    assert!(
        relay.log().contains("127.0.0.1 refused by the allow list"),
        "{}",
        relay.log()
    );
}

#[test]
fn a_unix_listener_with_a_uid_entry_refuses_another_user_and_dials_nothing() {
    let me = nix::unistd::geteuid().as_raw();
    let other = if me == 65534 { 65533 } else { 65534 };
    let (backend, bport) = backend();
    let scratch = Scratch::new("allow-uid");
    let path = scratch.path("l.sock");
    let listen = format!("UNIX-LISTEN:{},fork,allow=uid:{other}", path.display());
    let connect = format!("TCP:127.0.0.1:{bport}");
    let relay = Relay::start(&[&listen, &connect]);
    let mut c = std::os::unix::net::UnixStream::connect(&path).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = [0u8; 64];
    // A UNIX peer cannot be reset: it reads end of file, and never a backend byte.
    assert_eq!(
        c.read(&mut buf).unwrap(),
        0,
        "no byte reaches a refused peer"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(backend.accept().is_err(), "the backend was never dialed");
    assert!(
        relay
            .log()
            .contains(&format!("uid {me} refused by the allow list"))
    );
}
