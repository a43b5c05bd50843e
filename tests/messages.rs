//! Message relays end to end on real sockets: UNIX SEQPACKET on both sides, both ways at
//! once, 20,000 messages of random sizes (zero-length ones included) each way, every message's
//! length, bytes and order checked at the far end; a message too large for the other end, a
//! framed stream that breaks its framing, and pairs that cannot carry messages.
//! (vsock SEQPACKET runs in the guest lab: tests/vsock_guest.rs.)

mod common;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Duration;

use common::messages::{
    Framing, Sequence, check_sequence, recv_timeout, send_sequence, seqpacket_connect,
    seqpacket_listen,
};
use common::*;
use nix::sys::socket::{Shutdown, accept, shutdown};

const COUNT: usize = 20_000;
const LONG: Duration = Duration::from_secs(120);

fn accept_one(listener: &OwnedFd) -> OwnedFd {
    accept(listener).unwrap()
}

/// Sends `out` and checks `back` on `fd` at once (sender on a thread), then half-closes.
fn exchange_messages(
    fd: OwnedFd,
    out: Sequence,
    back: Sequence,
    framing: Framing,
) -> Result<(), String> {
    recv_timeout(fd.as_fd(), 60);
    let fd = std::sync::Arc::new(fd);
    let sender = {
        let fd = fd.clone();
        std::thread::spawn(move || {
            send_sequence(fd.as_fd(), out, framing).map_err(|e| e.to_string())?;
            shutdown(fd.as_raw_fd(), Shutdown::Write).map_err(|e| e.to_string())
        })
    };
    let checked = check_sequence(fd.as_fd(), back, framing);
    let sent = sender.join().unwrap();
    checked.and(sent)
}

#[test]
fn unix_seqpacket_messages_cross_both_ways_at_once_with_every_boundary_kept() {
    let dir = Scratch::new("seqpacket");
    let front = dir.path("front.sock");
    let back = dir.path("back.sock");
    let backend = seqpacket_listen(&back, 64);
    let mut relay = Relay::start(&[
        &format!("UNIX-LISTEN:{},socktype=seqpacket", front.display()),
        &format!("UNIX-CONNECT:{},socktype=5", back.display()),
    ]);
    let up = Sequence {
        seed: 1,
        count: COUNT,
        max: 65535,
        empty: true,
    };
    let down = Sequence {
        seed: 2,
        count: COUNT,
        max: 65535,
        empty: true,
    };
    let server = std::thread::spawn(move || {
        let conn = accept_one(&backend);
        exchange_messages(conn, down, up, Framing::Packets)
    });
    let client = exchange_messages(seqpacket_connect(&front), up, down, Framing::Packets);
    let server = server.join().unwrap();
    assert_eq!(client, Ok(()), "client side; relay log:\n{}", relay.log());
    assert_eq!(server, Ok(()), "server side; relay log:\n{}", relay.log());
    let status = relay.wait_exit(LONG);
    assert!(status.success(), "{status}\n{}", relay.log());
    let log = relay.log();
    assert!(
        log.contains(&format!("({COUNT} + {COUNT} messages)")),
        "every message counted, once:\n{log}"
    );
}

/// Runs vsplice with `args` and returns its exit code and standard error.
fn refused(args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(vsplice_bin())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_seqpacket_address_paired_with_a_stream_without_framing_is_refused_naming_both() {
    let dir = Scratch::new("seqpacket-stream");
    let front = dir.path("front.sock");
    let first = format!("UNIX-LISTEN:{},socktype=seqpacket", front.display());
    let (code, err) = refused(&[&first, "TCP:127.0.0.1:1"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&format!("\"{first}\" carries messages"))
            && err.contains("\"TCP:127.0.0.1:1\" is a stream")
            && err.contains("framing=len16"),
        "{err}"
    );
    assert!(!front.exists(), "refused before anything opened");
    let (code, err) = refused(&["TCP-LISTEN:0", "TCP:127.0.0.1:1,framing=len16"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("carries none"), "{err}");
}

#[test]
fn socktype_on_an_address_without_such_a_type_is_refused_naming_it() {
    let (code, err) = refused(&["TCP-LISTEN:0,socktype=5", "TCP:127.0.0.1:1"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("option \"socktype\" is not valid for TCP-LISTEN"),
        "{err}"
    );
    let (code, err) = refused(&["UNIX-LISTEN:/nonexistent/x,socktype=2", "UDP:127.0.0.1:1"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("socktype") && err.contains("no datagram type"),
        "{err}"
    );
    let (code, err) = refused(&["UNIX-LISTEN:/nonexistent/x,socktype=7", "TCP:127.0.0.1:1"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("invalid value \"7\" for option \"socktype\""),
        "{err}"
    );
    let (code, err) = refused(&[
        "UNIX-LISTEN:/nonexistent/x,socktype=5,framing=len16",
        "TCP:127.0.0.1:1",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("use one of the two"), "{err}");
}

#[test]
fn a_message_larger_than_the_other_end_takes_cuts_that_connection_only() {
    let dir = Scratch::new("seqpacket-big");
    let front = dir.path("front.sock");
    let back = dir.path("back.sock");
    let backend = seqpacket_listen(&back, 64);
    // The backend side's send buffer (16 KiB, doubled by the kernel) takes no 60 KB message.
    let relay = Relay::start(&[
        &format!("UNIX-LISTEN:{},socktype=seqpacket,fork", front.display()),
        &format!("UNIX-CONNECT:{},socktype=5,sndbuf=16384", back.display()),
    ]);
    let server = std::thread::spawn(move || {
        let mut got = Vec::new();
        for _ in 0..2 {
            let conn = accept_one(&backend);
            recv_timeout(conn.as_fd(), 30);
            let mut buf = vec![0u8; 128 * 1024];
            let mut lens = Vec::new();
            loop {
                match common::messages::recv_one(conn.as_fd(), &mut buf) {
                    Ok(0) => break,
                    Ok(n) => lens.push(n),
                    Err(e) => panic!("backend: {e}"),
                }
            }
            got.push(lens);
        }
        got
    });
    let send = |fd: &OwnedFd, len: usize| {
        let m = vec![9u8; len];
        let n = nix::sys::socket::send(fd.as_raw_fd(), &m, nix::sys::socket::MsgFlags::empty())
            .unwrap();
        assert_eq!(n, len);
    };
    let big = seqpacket_connect(&front);
    send(&big, 100);
    send(&big, 60_000);
    // The relay may have cut the connection by now (EPIPE): this one must not arrive anyway.
    let _ = nix::sys::socket::send(
        big.as_raw_fd(),
        &[1u8; 200],
        nix::sys::socket::MsgFlags::empty(),
    );
    // The relay cuts this connection: its client reads a reset (or the end, where the
    // relay had read all it sent).
    recv_timeout(big.as_fd(), 30);
    let mut buf = [0u8; 16];
    match common::messages::recv_one(big.as_fd(), &mut buf) {
        Ok(0) => {}
        Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => {}
        other => panic!("expected the connection cut, got {other:?}"),
    }
    relay.wait_for_log("larger than the other end takes", LONG);
    // Another connection of the same relay is served as before.
    let other = seqpacket_connect(&front);
    send(&other, 1000);
    send(&other, 2000);
    shutdown(other.as_raw_fd(), Shutdown::Write).unwrap();
    let got = server.join().unwrap();
    assert_eq!(
        got[0],
        vec![100],
        "the message before the large one went; nothing after it"
    );
    assert_eq!(got[1], vec![1000, 2000], "{}", relay.log());
}

/// The UDP payload limit over IPv4.
const UDP_MAX: usize = 65507;

/// A UDP echo server on loopback: every datagram goes back to its sender. Returns its port.
fn udp_echo() -> u16 {
    common::messages::udp_answerer(b"")
}

#[test]
fn udp_to_udp_with_fork_makes_a_session_per_sender_for_fifty_senders_at_once() {
    const SENDERS: usize = 50;
    let backend = udp_echo();
    let front = free_port();
    let relay = Relay::start(&[
        &format!("UDP4-LISTEN:{front},bind=127.0.0.1,fork"),
        &format!("UDP:127.0.0.1:{backend}"),
        "-T",
        "5",
    ]);
    let clients: Vec<_> = (0..SENDERS)
        .map(|c| {
            std::thread::spawn(move || {
                let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                socket.connect(("127.0.0.1", front)).unwrap();
                let seq = Sequence {
                    seed: 100 + c as u64,
                    count: COUNT / SENDERS,
                    max: UDP_MAX,
                    empty: true,
                };
                common::messages::udp_exchange(&socket, seq, seq, 2)
            })
        })
        .collect();
    for (c, client) in clients.into_iter().enumerate() {
        assert_eq!(
            client.join().unwrap(),
            Ok(()),
            "sender {c}; relay log:\n{}",
            relay.log()
        );
    }
    // Each session ends when idle (-T 5), having carried its sender's every message.
    let each = COUNT / SENDERS;
    let carried = "closed: inactivity timeout (-T); ";
    let deadline = std::time::Instant::now() + LONG;
    while relay.log().matches(carried).count() < SENDERS && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = relay.log();
    assert_eq!(
        log.matches(" closed: ").count(),
        SENDERS,
        "one session per sender:\n{log}"
    );
    assert_eq!(
        log.matches(&format!("({each} + {each} messages)")).count(),
        SENDERS,
        "every session carried its sender's messages:\n{log}"
    );
}

#[test]
fn udp_datagrams_cross_to_unix_seqpacket_and_back_one_message_each() {
    let dir = Scratch::new("udp-seqpacket");
    let back = dir.path("back.sock");
    let backend = seqpacket_listen(&back, 64);
    let front = free_port();
    let mut relay = Relay::start(&[
        &format!("UDP4-LISTEN:{front},bind=127.0.0.1"),
        &format!("UNIX-CONNECT:{},socktype=seqpacket", back.display()),
        "-T",
        "3",
    ]);
    let up = Sequence {
        seed: 21,
        count: COUNT,
        max: UDP_MAX,
        empty: true,
    };
    let down = Sequence {
        seed: 22,
        count: COUNT,
        max: UDP_MAX,
        empty: true,
    };
    // The server answers each message with the next of its own sequence.
    let server = std::thread::spawn(move || -> Result<(), String> {
        let conn = accept_one(&backend);
        recv_timeout(conn.as_fd(), 30);
        let mut buf = vec![0u8; 128 * 1024];
        for i in 0..up.count {
            let n = common::messages::recv_one(conn.as_fd(), &mut buf)
                .map_err(|e| format!("message {i}: {e}"))?;
            let want = up.message(i);
            if n != want.len() || buf[..n] != want[..] {
                return Err(format!("message {i}: {n} bytes, {} sent", want.len()));
            }
            let m = down.message(i);
            nix::sys::socket::send(conn.as_raw_fd(), &m, nix::sys::socket::MsgFlags::empty())
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    });
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    client.connect(("127.0.0.1", front)).unwrap();
    let at_client = common::messages::udp_exchange(&client, up, down, 2);
    let at_server = server.join().unwrap();
    assert_eq!(
        at_server,
        Ok(()),
        "at the server; relay log:\n{}",
        relay.log()
    );
    assert_eq!(
        at_client,
        Ok(()),
        "at the client; relay log:\n{}",
        relay.log()
    );
    // The session ends when idle; without fork the relay then exits.
    let status = relay.wait_exit(LONG);
    assert!(status.success(), "{status}\n{}", relay.log());
    assert!(
        relay
            .log()
            .contains(&format!("({COUNT} + {COUNT} messages)")),
        "{}",
        relay.log()
    );
}

#[test]
fn udp_datagrams_cross_a_tcp_stream_framed_with_2_byte_lengths_and_back() {
    let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp_port = backend.local_addr().unwrap().port();
    let front = free_port();
    let mut relay = Relay::start(&[
        &format!("UDP4-LISTEN:{front},bind=127.0.0.1"),
        &format!("TCP:127.0.0.1:{tcp_port},framing=len16"),
        "-T",
        "3",
    ]);
    let up = Sequence {
        seed: 31,
        count: COUNT,
        max: UDP_MAX,
        empty: true,
    };
    let down = Sequence {
        seed: 32,
        count: COUNT,
        max: UDP_MAX,
        empty: true,
    };
    let server = std::thread::spawn(move || {
        let (conn, _) = backend.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        common::messages::answer_each(conn.as_fd(), up, down, Framing::Len16)
    });
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    client.connect(("127.0.0.1", front)).unwrap();
    let at_client = common::messages::udp_exchange(&client, up, down, 2);
    let at_server = server.join().unwrap();
    assert_eq!(
        at_server,
        Ok(()),
        "at the TCP server; relay log:\n{}",
        relay.log()
    );
    assert_eq!(
        at_client,
        Ok(()),
        "at the UDP client; relay log:\n{}",
        relay.log()
    );
    let status = relay.wait_exit(LONG);
    assert!(status.success(), "{status}\n{}", relay.log());
}

#[test]
fn a_stream_peer_that_breaks_its_framing_costs_that_connection_only() {
    let dir = Scratch::new("bad-frame");
    let front = dir.path("front.sock");
    let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp_port = backend.local_addr().unwrap().port();
    let relay = Relay::start(&[
        &format!("UNIX-LISTEN:{},socktype=seqpacket,fork", front.display()),
        &format!("TCP:127.0.0.1:{tcp_port},framing=len16"),
    ]);
    // First connection: one good frame, then a frame announcing 1,000 bytes and ending after
    // 10. Second: a good frame.
    let server = std::thread::spawn(move || {
        use std::io::Write;
        let (mut conn, _) = backend.accept().unwrap();
        conn.write_all(b"\x00\x03abc\x03\xe8").unwrap();
        conn.write_all(&[7u8; 10]).unwrap();
        drop(conn);
        let (mut conn, _) = backend.accept().unwrap();
        conn.write_all(b"\x00\x02ok").unwrap();
        conn.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut conn, &mut rest);
    });
    let mut buf = [0u8; 2048];
    let bad = seqpacket_connect(&front);
    recv_timeout(bad.as_fd(), 30);
    assert_eq!(
        common::messages::recv_one(bad.as_fd(), &mut buf).unwrap(),
        3
    );
    assert_eq!(&buf[..3], b"abc");
    match common::messages::recv_one(bad.as_fd(), &mut buf) {
        Ok(0) => {}
        Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => {}
        other => panic!("expected the connection cut, got {other:?}"),
    }
    relay.wait_for_log("the stream ended inside a frame", LONG);
    let good = seqpacket_connect(&front);
    recv_timeout(good.as_fd(), 30);
    assert_eq!(
        common::messages::recv_one(good.as_fd(), &mut buf).unwrap(),
        2
    );
    assert_eq!(&buf[..2], b"ok");
    shutdown(good.as_raw_fd(), Shutdown::Write).unwrap();
    server.join().unwrap();
}

/// A real DNS-over-TCP speaker behind the relay and a real DNS client in front: Debian's
/// dnsmasq (answering from `--host-record`s, on loopback TCP and UDP) and `dig` from
/// bind9-dnsutils, both unpacked into the labs' cache (see `common::debs::tool`). dig asks over
/// UDP through `UDP-LISTEN ... TCP:...,framing=len16`, so each query reaches dnsmasq's TCP port
/// framed as RFC 7766 says, and each answer must name its own query's address.
#[test]
fn dig_asks_dnsmasq_through_a_udp_listener_framed_onto_its_tcp_port() {
    const NAMES: usize = 12;
    let dnsmasq = common::debs::tool("dnsmasq-base", "usr/sbin/dnsmasq")
        .unwrap_or_else(|e| panic!("dnsmasq: {e}"));
    let dig = || {
        common::debs::tool("bind9-dnsutils", "usr/bin/dig").unwrap_or_else(|e| panic!("dig: {e}"))
    };
    let dns_port = free_port();
    let mut server = dnsmasq;
    server.args([
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--listen-address=127.0.0.1",
        "--pid-file=",
        "--user=root",
        &format!("--port={dns_port}"),
    ]);
    for i in 0..NAMES {
        server.arg(format!(
            "--host-record=n{i}.vsplice.test,10.9.{i}.{}",
            100 + i
        ));
    }
    let mut server = server
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start dnsmasq");
    let front = free_port();
    let relay = Relay::start(&[
        &format!("UDP4-LISTEN:{front},bind=127.0.0.1,fork"),
        &format!("TCP:127.0.0.1:{dns_port},framing=len16"),
        "-T",
        "1",
    ]);
    let ask = |name: &str| {
        let out = dig()
            .args([
                "@127.0.0.1",
                "-p",
                &front.to_string(),
                "+notcp",
                "+tries=3",
                "+time=5",
                "+short",
                name,
                "A",
            ])
            .output()
            .expect("run dig");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // Twice over: the second round's queries come while the first round's sessions live on.
    for round in 0..2 {
        for i in 0..NAMES {
            let answer = ask(&format!("n{i}.vsplice.test"));
            assert_eq!(
                answer,
                format!("10.9.{i}.{}", 100 + i),
                "round {round}, name {i}; relay log:\n{}",
                relay.log()
            );
        }
    }
    let _ = server.kill();
    let _ = server.wait();
    let log = relay.log();
    assert!(!log.contains(" E ") && !log.contains("failed"), "{log}");
}

#[test]
fn a_udp_sender_outside_the_allow_list_gets_no_session_and_one_inside_does() {
    let backend = udp_echo();
    let front = free_port();
    let relay = Relay::start(&[
        &format!("UDP4-LISTEN:{front},bind=127.0.0.1,fork,allow=127.0.0.2/32"),
        &format!("UDP:127.0.0.1:{backend}"),
        "-T",
        "2",
    ]);
    let asked = |from: &str| {
        let socket = std::net::UdpSocket::bind((from, 0)).unwrap();
        socket.connect(("127.0.0.1", front)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        socket.send(b"ping").unwrap();
        let mut buf = [0u8; 16];
        socket.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
    };
    assert_eq!(asked("127.0.0.1"), None, "refused: no answer");
    relay.wait_for_log("refused by the allow list", LONG);
    assert_eq!(
        asked("127.0.0.2"),
        Some(b"ping".to_vec()),
        "{}",
        relay.log()
    );
}

#[test]
fn one_way_discards_the_other_directions_messages() {
    let dir = Scratch::new("seqpacket-oneway");
    let front = dir.path("front.sock");
    let back = dir.path("back.sock");
    let backend = seqpacket_listen(&back, 64);
    let mut relay = Relay::start(&[
        "-u",
        &format!("UNIX-LISTEN:{},socktype=seqpacket", front.display()),
        &format!("UNIX-CONNECT:{},socktype=seqpacket", back.display()),
    ]);
    let up = Sequence {
        seed: 51,
        count: 2000,
        max: 65535,
        empty: true,
    };
    let server = std::thread::spawn(move || {
        let conn = accept_one(&backend);
        // What the server sends is read and dropped by the relay.
        let noise = Sequence {
            seed: 52,
            count: 50,
            max: 1000,
            empty: false,
        };
        let _ = send_sequence(conn.as_fd(), noise, Framing::Packets);
        recv_timeout(conn.as_fd(), 30);
        let checked = check_sequence(conn.as_fd(), up, Framing::Packets);
        let mut buf = [0u8; 16];
        let end = common::messages::recv_one(conn.as_fd(), &mut buf);
        (checked, end.ok())
    });
    let client = seqpacket_connect(&front);
    send_sequence(client.as_fd(), up, Framing::Packets).unwrap();
    shutdown(client.as_raw_fd(), Shutdown::Write).unwrap();
    let (checked, end) = server.join().unwrap();
    assert_eq!(checked, Ok(()), "{}", relay.log());
    assert_eq!(end, Some(0), "the end passed on");
    recv_timeout(client.as_fd(), 5);
    let mut buf = [0u8; 2048];
    let got = common::messages::recv_one(client.as_fd(), &mut buf);
    assert!(
        matches!(got, Ok(0)) || got.is_err(),
        "nothing came back: {got:?}"
    );
    drop(client);
    relay.wait_exit(LONG);
}
