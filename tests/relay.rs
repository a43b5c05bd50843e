//! The relay end to end on the machine itself: TCP and UNIX sockets on loopback and STDIO,
//! tens of MiB each way with hashes checked on both ends, half-close in both orders, hundreds
//! of concurrent connections, failing upstreams, signals and exit codes. (vsock runs in the
//! guest lab: tests/vsock_guest.rs.)

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::*;

const BIG: usize = 32 * MIB;
const LONG: Duration = Duration::from_secs(120);

/// Relays one connection `client -> vsplice -> server` moving BIG bytes each way at once and
/// checks both hashes and the relay's exit status.
fn bulk_through(
    relay_args: &[&str],
    listen_addr: &str,
    server: Listen,
    connect: impl FnOnce() -> Box<dyn Duplex>,
) -> String {
    let up = payload(BIG, 1);
    let down = payload(BIG, 2);
    let upstream = server.connect_address();
    let server = ExchangeServer::spawn(server, down.data.clone(), 1);
    let mut args: Vec<&str> = relay_args.to_vec();
    args.push(listen_addr);
    args.push(&upstream);
    let mut relay = Relay::start(&args);
    let got = exchange(connect(), up.data.clone()).expect("client exchange");
    assert_eq!(got.received, BIG, "client received every byte");
    assert_eq!(
        got.sha, down.sha,
        "client received the server's bytes intact"
    );
    let at_server = server.next(LONG);
    assert_eq!(at_server.received, BIG, "server received every byte");
    assert_eq!(
        at_server.sha, up.sha,
        "server received the client's bytes intact"
    );
    let status = relay.wait_exit(LONG);
    assert!(
        status.success(),
        "relay exit {status}; stderr:\n{}",
        relay.log()
    );
    relay.log()
}

/// TCP->TCP on one data path; the log (at -ddd) must show both directions really took it,
/// not a fallback.
fn tcp_to_tcp(mode: &str) -> String {
    let port = free_port();
    let listen = format!("TCP-LISTEN:{port},bind=127.0.0.1");
    let log = bulk_through(&["-d", "--mode", mode], &listen, Listen::tcp(), || {
        Box::new(TcpStream::connect(("127.0.0.1", port)).unwrap())
    });
    let path = format!("(first->second: {mode}, second->first: {mode})");
    assert!(log.contains(&path), "expected {path} in:\n{log}");
    log
}

#[test]
fn tcp_to_tcp_splice_32mib_each_way() {
    tcp_to_tcp("splice");
}

#[test]
fn tcp_to_tcp_uring_splice_32mib_each_way() {
    tcp_to_tcp("uring-splice");
}

#[test]
fn tcp_to_tcp_copy_32mib_each_way() {
    tcp_to_tcp("copy");
}

#[test]
fn tcp_to_tcp_recv_ring_32mib_each_way() {
    tcp_to_tcp("recv");
}

/// SEND_ZC from the ring's registered memory: TCP supports it, so no direction falls back.
#[test]
fn tcp_to_tcp_recv_zerocopy_32mib_each_way() {
    let log = tcp_to_tcp("recv-zc");
    assert!(!log.contains("no SEND_ZC here"), "{log}");
}

/// A receive budget too small for even one autotuned connection: the relay fixes its TCP
/// sockets' receive buffers (256 KiB over two sockets) and every byte still arrives.
#[test]
fn a_small_receive_budget_caps_tcp_receive_buffers_and_every_byte_arrives() {
    let port = free_port();
    let listen = format!("TCP-LISTEN:{port},bind=127.0.0.1");
    let log = bulk_through(
        &["-ddd", "--receive-budget", "256K"],
        &listen,
        Listen::tcp(),
        || Box::new(TcpStream::connect(("127.0.0.1", port)).unwrap()),
    );
    assert!(
        log.contains("TCP receive buffers capped at 128 KiB (1 busy connections"),
        "{log}"
    );
}

/// `-S` counts every byte of each connection, and the total at exit.
#[test]
fn statistics_count_every_byte_per_connection_and_in_total() {
    let port = free_port();
    let listen = format!("TCP-LISTEN:{port},bind=127.0.0.1");
    let log = bulk_through(&["-S"], &listen, Listen::tcp(), || {
        Box::new(TcpStream::connect(("127.0.0.1", port)).unwrap())
    });
    let each = format!("{BIG} bytes first->second, {BIG} bytes second->first");
    let conn = log
        .lines()
        .find(|l| l.contains("vsplice: conn 1 ("))
        .unwrap_or_else(|| panic!("no connection line:\n{log}"));
    assert!(conn.contains(&each) && conn.ends_with("finished"), "{conn}");
    assert!(
        log.contains(&format!("vsplice: total: 1 connections (0 failed), {each}")),
        "{log}"
    );
}

/// An upstream given by name: the worker hands the lookup to a resolver thread and waits
/// for its answer like for any other event; every connection gets through, bytes intact.
#[test]
fn upstream_by_name_is_resolved_off_the_worker() {
    let server = Listen::tcp();
    let upstream = format!("TCP:localhost:{}", server.port());
    let reply = payload(MIB, 7);
    let server = ExchangeServer::spawn(server, reply.data.clone(), 3);
    let port = free_port();
    let listen = format!("TCP-LISTEN:{port},bind=127.0.0.1,fork");
    let mut relay = Relay::start(&["-ddd", "--threads", "1", &listen, &upstream]);
    let sent = payload(MIB, 8);
    for _ in 0..3 {
        let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let got = exchange(Box::new(client), sent.data.clone()).expect("client exchange");
        assert_eq!(
            got.sha, reply.sha,
            "client received the server's bytes intact"
        );
        let at_server = server.next(LONG);
        assert_eq!(
            at_server.sha, sent.sha,
            "server received the client's bytes intact"
        );
    }
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", relay.child.id()))
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .collect();
    assert!(
        threads.iter().any(|t| t.starts_with("vsplice-dns")),
        "no resolver thread among {threads:?}"
    );
    relay.stop();
    let log = relay.log();
    assert_eq!(log.matches("closed: finished").count(), 3, "{log}");
}

/// The ring path with small buffers (-b 32K: 4 KiB each) keeps running out of buffers, so the
/// multishot receive ends and is armed again many times: every byte must still arrive.
#[test]
fn recv_ring_back_pressure_with_small_buffers() {
    let port = free_port();
    let listen = format!("TCP-LISTEN:{port},bind=127.0.0.1");
    let log = bulk_through(
        &["-d", "--mode", "recv", "-b", "32K"],
        &listen,
        Listen::tcp(),
        || Box::new(TcpStream::connect(("127.0.0.1", port)).unwrap()),
    );
    assert!(
        log.contains("(first->second: recv, second->first: recv)"),
        "{log}"
    );
}

#[test]
fn unix_to_tcp_32mib_each_way() {
    let dir = Scratch::new("u2t");
    let path = dir.path("relay.sock");
    let listen = format!("UNIX-LISTEN:{}", path.display());
    let p = path.clone();
    bulk_through(&[], &listen, Listen::tcp(), move || {
        Box::new(UnixStream::connect(&p).unwrap())
    });
    assert!(
        !path.exists(),
        "UNIX-LISTEN removes its socket file on exit"
    );
}

#[test]
fn tcp_to_unix_32mib_each_way() {
    let dir = Scratch::new("t2u");
    let port = free_port();
    let listen = format!("TCP-LISTEN:{port},bind=127.0.0.1");
    bulk_through(&[], &listen, Listen::unix(&dir.path("server.sock")), || {
        Box::new(TcpStream::connect(("127.0.0.1", port)).unwrap())
    });
}

/// STDIO -> TCP with both ends pipes: what we write to vsplice's stdin reaches the server,
/// what the server sends comes out of vsplice's stdout.
#[test]
fn stdio_pipes_to_tcp_32mib_each_way() {
    let up = payload(BIG, 3);
    let down = payload(BIG, 4);
    let server = Listen::tcp();
    let upstream = server.connect_address();
    let server = ExchangeServer::spawn(server, down.data.clone(), 1);
    let mut relay = Relay::spawn(&["-", &upstream], Stdio::piped(), Stdio::piped());
    let mut stdin = relay.child.stdin.take().unwrap();
    let mut stdout = relay.child.stdout.take().unwrap();
    let data = up.data.clone();
    let writer = std::thread::spawn(move || {
        stdin.write_all(&data).unwrap();
        // Dropping stdin is vsplice's end of file.
    });
    let got = drain(&mut stdout).unwrap();
    writer.join().unwrap();
    assert_eq!((got.received, got.sha.as_str()), (BIG, down.sha.as_str()));
    let at_server = server.next(LONG);
    assert_eq!(
        (at_server.received, at_server.sha.as_str()),
        (BIG, up.sha.as_str())
    );
    assert!(relay.wait_exit(LONG).success(), "{}", relay.log());
}

/// STDIO from a regular file (splice reads files) to an O_APPEND file (splice refuses to
/// write those, so that direction copies).
#[test]
fn stdio_files_to_tcp_with_append_output() {
    let dir = Scratch::new("files");
    let up = payload(8 * MIB, 5);
    let down = payload(8 * MIB, 6);
    let input = dir.path("in.bin");
    let output = dir.path("out.bin");
    std::fs::write(&input, &*up.data).unwrap();
    std::fs::write(&output, b"").unwrap();
    let server = Listen::tcp();
    let upstream = server.connect_address();
    let server = ExchangeServer::spawn(server, down.data.clone(), 1);
    let stdin = std::fs::File::open(&input).unwrap();
    let stdout = std::fs::OpenOptions::new()
        .append(true)
        .open(&output)
        .unwrap();
    let mut relay = Relay::spawn(&["-ddd", "STDIO", &upstream], stdin.into(), stdout.into());
    let at_server = server.next(LONG);
    assert_eq!(at_server.sha, up.sha);
    assert!(relay.wait_exit(LONG).success(), "{}", relay.log());
    let written = std::fs::read(&output).unwrap();
    assert_eq!(written.len(), down.data.len());
    assert_eq!(sha_hex(&written), down.sha);
}

/// STDIO on a terminal (a pseudo-terminal in raw mode): splice cannot touch terminals, so
/// both directions take the copy path.
#[test]
fn stdio_terminal_to_tcp() {
    use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
    let pty = nix::pty::openpty(None, None).unwrap();
    let mut attrs = tcgetattr(&pty.slave).unwrap();
    cfmakeraw(&mut attrs);
    tcsetattr(&pty.slave, SetArg::TCSANOW, &attrs).unwrap();
    let up = payload(MIB, 7);
    let down = payload(MIB, 8);
    let server = Listen::tcp();
    let upstream = server.connect_address();
    let server = ExchangeServer::spawn(server, down.data.clone(), 1);
    let slave_in = pty.slave.try_clone().unwrap();
    let mut relay = Relay::spawn(
        &["-ddd", "-t", "2", "STDIO", &upstream],
        slave_in.into(),
        pty.slave.into(),
    );
    let mut master = std::fs::File::from(pty.master);
    let mut reader = master.try_clone().unwrap();
    let expect = down.data.len();
    let read_back = std::thread::spawn(move || {
        let mut got = vec![0u8; expect];
        reader.read_exact(&mut got).map(|_| got)
    });
    master.write_all(&up.data).unwrap();
    let got = read_back
        .join()
        .unwrap()
        .expect("read the server's bytes from the terminal");
    assert_eq!(sha_hex(&got), down.sha);
    // A terminal has no end of file to pass on: after the server's half-close reached the
    // terminal, -t ends the connection, and the server then sees end of file.
    let at_server = server.next(LONG);
    assert_eq!(at_server.sha, up.sha, "what was typed reached the server");
    let status = relay.wait_exit(LONG);
    assert!(status.success(), "{status}: {}", relay.log());
    assert!(
        relay
            .log()
            .contains("first->second: copy, second->first: copy"),
        "terminals take the copy path: {}",
        relay.log()
    );
}

fn fork_relay_to(upstream: &str) -> (Relay, u16) {
    let port = free_port();
    let listen = format!("TCP-LISTEN:{port},bind=127.0.0.1,fork");
    (Relay::start(&[&listen, upstream]), port)
}

/// Client sends a request, shuts down its write side, and waits for a reply that the server
/// sends 1.5 s after it saw end of file. The relay must pass the half-close on and keep the
/// other direction open (socat's default -t 0.5 would cut this reply off).
#[test]
fn half_close_client_then_late_reply() {
    let server = Listen::tcp();
    let upstream = server.connect_address();
    let reply = payload(4 * MIB, 9);
    let expect = reply.clone();
    let srv = std::thread::spawn(move || {
        let mut s = server.accept().unwrap();
        let got = drain(&mut s).unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        s.write_all(&reply.data).unwrap();
        got
    });
    let (mut relay, port) = fork_relay_to(&upstream);
    let request = payload(MIB, 10);
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    client.write_all(&request.data).unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let started = Instant::now();
    let got = drain(&mut client).unwrap();
    assert!(started.elapsed() >= Duration::from_millis(1400));
    assert_eq!(got.sha, expect.sha, "the late reply arrived whole");
    let seen = srv.join().unwrap();
    assert_eq!(
        seen.sha, request.sha,
        "the server saw the whole request, then EOF"
    );
    assert!(relay.is_running());
    assert!(relay.stop().success());
}

/// Server sends a burst and closes at once: every byte still reaches the client.
#[test]
fn half_close_server_sends_then_closes() {
    let server = Listen::tcp();
    let upstream = server.connect_address();
    let burst = payload(16 * MIB, 11);
    let data = burst.data.clone();
    let srv = std::thread::spawn(move || {
        let mut s = server.accept().unwrap();
        s.write_all(&data).unwrap();
        // Dropping the stream closes it fully, right after the last write.
    });
    let (mut relay, port) = fork_relay_to(&upstream);
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let got = drain(&mut client).unwrap();
    srv.join().unwrap();
    assert_eq!(
        (got.received, got.sha.as_str()),
        (burst.data.len(), burst.sha.as_str())
    );
    // The client can still write after the server's EOF reached it; the relay then notices
    // the closed upstream and ends this connection only.
    assert!(relay.is_running());
    assert!(relay.stop().success());
}

/// An echo server that answers each connection with what it read, once the client half-closed.
fn echo_server(listen: Listen, conns: usize) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut handles = Vec::new();
        for _ in 0..conns {
            let Ok(mut s) = listen.accept() else { return };
            handles.push(std::thread::spawn(move || {
                let mut buf = Vec::new();
                if s.read_to_end(&mut buf).is_ok() {
                    let _ = s.write_all(&buf);
                }
            }));
        }
        for h in handles {
            let _ = h.join();
        }
    })
}

fn echo_once(port: u16, message: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut c = TcpStream::connect(("127.0.0.1", port))?;
    c.write_all(message)?;
    c.shutdown(std::net::Shutdown::Write)?;
    let mut back = Vec::new();
    c.read_to_end(&mut back)?;
    Ok(back)
}

#[test]
fn five_hundred_concurrent_connections_through_one_fork_listener() {
    const N: usize = 500;
    let server = Listen::tcp();
    let upstream = server.connect_address();
    let echo = echo_server(server, N);
    let (mut relay, port) = fork_relay_to(&upstream);
    let all_connected = Arc::new(Barrier::new(N));
    let clients: Vec<_> = (0..N)
        .map(|i| {
            let barrier = all_connected.clone();
            std::thread::spawn(move || -> Result<(), String> {
                let message = payload(4096 + i * 37, 100 + i as u64);
                let connected = TcpStream::connect(("127.0.0.1", port));
                // Every connection is open at the same time before any data moves.
                barrier.wait();
                let mut c = connected.map_err(|e| format!("client {i}: connect: {e}"))?;
                message.echo_through(&mut c, i)
            })
        })
        .collect();
    let errors: Vec<String> = clients
        .into_iter()
        .filter_map(|c| {
            c.join()
                .unwrap_or_else(|_| Err("client panicked".into()))
                .err()
        })
        .collect();
    let log = relay.log();
    let failures: Vec<&str> = log.lines().filter(|l| l.contains(" W ")).take(5).collect();
    assert!(
        errors.is_empty(),
        "{} of {N} replies wrong; first: {:?}; relay warnings: {failures:#?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    echo.join().unwrap();
    assert!(relay.is_running());
    assert!(relay.stop().success());
    let log = relay.log();
    assert_eq!(log.matches("closed: finished").count(), N, "{log}");
}

/// More connections than the descriptor limit can hold with two sockets each: idle ones are
/// parked in the io_uring fixed-file table (their descriptors closed), every connection is
/// served, and bytes still flow on parked connections afterwards.
#[test]
fn idle_connections_beyond_the_descriptor_limit_are_parked_and_still_served() {
    const N: usize = 300;
    const LIMIT: u32 = 256;
    let server = Listen::tcp();
    let upstream = server.connect_address();
    // Echo every chunk as it comes, keeping each connection open until the client closes.
    std::thread::spawn(move || {
        for _ in 0..N {
            let Ok(mut s) = server.accept() else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 256];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let port = free_port();
    let listen = format!("TCP-LISTEN:{port},bind=127.0.0.1,fork");
    let mut relay = Relay::start_limited(LIMIT, &["-d", &listen, &upstream]);
    let ping = |c: &mut TcpStream, byte: u8| -> std::io::Result<()> {
        c.write_all(&[byte])?;
        let mut back = [0u8; 1];
        c.read_exact(&mut back)?;
        assert_eq!(back[0], byte);
        Ok(())
    };
    let mut clients = Vec::with_capacity(N);
    for i in 0..N {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        ping(&mut c, i as u8)
            .unwrap_or_else(|e| panic!("connection {i} not served: {e}\n{}", relay.log()));
        clients.push(c);
    }
    let log = relay.log();
    assert!(
        log.contains("parked in the fixed-file table"),
        "{N} connections under a {LIMIT}-descriptor limit needed parking:\n{log}"
    );
    // Parked connections still move bytes, both ways, through the fixed-file table.
    std::thread::sleep(Duration::from_millis(800));
    for (i, c) in clients.iter_mut().enumerate() {
        ping(c, 255 - i as u8).unwrap_or_else(|e| panic!("connection {i} after parking: {e}"));
    }
    let pid = relay.child.id();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    assert!(fds < LIMIT as usize, "{fds} descriptors open");
    drop(clients);
    assert!(relay.is_running());
    assert!(relay.stop().success(), "{}", relay.log());
}

/// A refused upstream costs only that connection; once the upstream is up, the next client is
/// served by the same relay process.
#[test]
fn refused_upstream_then_served() {
    let upstream_port = free_port();
    let upstream = format!("TCP:127.0.0.1:{upstream_port}");
    let (mut relay, port) = fork_relay_to(&upstream);
    let first = echo_once(port, b"anyone there?");
    assert!(
        matches!(&first, Ok(b) if b.is_empty()) || first.is_err(),
        "refused upstream gives the client a closed connection, got {first:?}"
    );
    relay.wait_for_log("Connection refused", Duration::from_secs(10));
    assert!(relay.is_running(), "the relay survives a refused upstream");
    let server = Listen::Tcp(std::net::TcpListener::bind(("127.0.0.1", upstream_port)).unwrap());
    let echo = echo_server(server, 1);
    let back = echo_once(port, b"hello again").unwrap();
    assert_eq!(back, b"hello again");
    echo.join().unwrap();
    assert!(relay.stop().success());
}

#[test]
fn grammar_errors_exit_2_naming_the_token() {
    for (args, expect) in [
        (vec!["NOPE:1", "TCP:h:1"], "unknown address type \"NOPE\""),
        (
            vec!["TCP-LISTEN:99999", "TCP:h:1"],
            "port 99999 out of range 0-65535",
        ),
        (
            vec!["TCP-LISTEN:80,frobnicate", "TCP:h:1"],
            "option \"frobnicate\" is not valid for TCP-LISTEN",
        ),
        (
            vec!["TCP-L:80", "VSOCK-CONNECT:5"],
            "VSOCK-CONNECT needs cid:port",
        ),
        (vec!["-b", "12Q", "TCP-L:80", "TCP:h:1"], "12Q"),
    ] {
        let (code, stderr) = run_vsplice(&args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
    }
}

#[test]
fn free_ports_lie_below_the_ephemeral_range_and_can_be_bound() {
    let (ephemeral_low, _) = ephemeral_ports();
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    for &port in &ports {
        assert!(
            port < ephemeral_low || ephemeral_low <= FREE_PORT_LOW + 1000,
            "port {port} lies in the ephemeral range from {ephemeral_low}"
        );
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("port {port} cannot be bound: {e}"));
        drop(listener);
    }
    let mut distinct = ports.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        ports.len(),
        "one port handed out twice: {ports:?}"
    );
}

#[test]
fn runtime_errors_exit_1_naming_address_and_os_error() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let listen = format!("TCP4-LISTEN:{port},bind=127.0.0.1,reuseaddr=0");
    let (code, stderr) = run_vsplice(&[&listen, "TCP:127.0.0.1:1"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&listen) && stderr.contains("Address already in use"),
        "{stderr}"
    );

    let closed = free_port();
    let target = format!("TCP:127.0.0.1:{closed}");
    let (code, stderr) = run_vsplice(&[&target, "-"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&target) && stderr.contains("Connection refused"),
        "{stderr}"
    );

    let (code, stderr) = run_vsplice(&["-", "TCP:no-such-host.invalid:80"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("TCP:no-such-host.invalid:80") && stderr.contains("cannot resolve"),
        "{stderr}"
    );
}

#[test]
fn sigterm_stops_cleanly_and_removes_the_socket_file() {
    let dir = Scratch::new("sig");
    let path = dir.path("l.sock");
    let server = Listen::tcp();
    let upstream = server.connect_address();
    let _echo = echo_server(server, 1);
    let listen = format!("UNIX-LISTEN:{},fork", path.display());
    let mut relay = Relay::start(&["-d", &listen, &upstream]);
    assert!(path.exists());
    // A connection in the middle of its life when the signal comes.
    let mut c = UnixStream::connect(&path).unwrap();
    c.write_all(b"partial").unwrap();
    relay.wait_for_log("relaying", Duration::from_secs(10));
    let status = relay.stop();
    assert_eq!(status.code(), Some(0), "{}", relay.log());
    assert!(!path.exists(), "socket file removed on exit");
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
}

#[test]
fn one_way_forward_only() {
    let up = payload(4 * MIB, 12);
    let server = Listen::tcp();
    let upstream = server.connect_address();
    let srv = std::thread::spawn(move || {
        let mut s = server.accept().unwrap();
        // Anything written back must not reach the client under -u.
        let _ = s.write_all(b"ignored");
        drain(&mut s).unwrap()
    });
    let port = free_port();
    let listen = format!("TCP-LISTEN:{port},bind=127.0.0.1");
    let mut relay = Relay::start(&["-u", &listen, &upstream]);
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.write_all(&up.data).unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let got = srv.join().unwrap();
    assert_eq!(got.sha, up.sha);
    let mut back = Vec::new();
    c.read_to_end(&mut back).unwrap();
    assert!(back.is_empty(), "nothing flows second->first under -u");
    assert!(relay.wait_exit(LONG).success());
    assert!(relay.log().contains("closed: finished"), "{}", relay.log());
}

#[test]
fn max_children_bounds_concurrent_connections() {
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = format!("TCP:127.0.0.1:{}", server.local_addr().unwrap().port());
    let port = free_port();
    let listen = format!("TCP-LISTEN:{port},bind=127.0.0.1,fork,max-children=2");
    let mut relay = Relay::start(&[&listen, &upstream]);
    let mut clients: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let first_two = [server.accept().unwrap().0, server.accept().unwrap().0];
    // The third client waits in the relay's backlog: nothing reaches the upstream.
    server.set_nonblocking(true).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let early = server.accept();
    assert!(
        matches!(&early, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a third connection went upstream while two were live: {early:?}"
    );
    // Ending both live connections frees the slots; the third is then served.
    drop(first_two);
    clients.drain(..2);
    let deadline = Instant::now() + Duration::from_secs(10);
    let third = loop {
        match server.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("third connection never reached the upstream: {e}"),
        }
    };
    drop(third);
    assert!(relay.stop().success());
}

#[test]
fn idle_timeout_closes_a_silent_connection() {
    let server = Listen::tcp();
    let upstream = server.connect_address();
    let port = free_port();
    let listen = format!("TCP-LISTEN:{port},bind=127.0.0.1,fork");
    let mut relay = Relay::start(&["-T", "0.5", &listen, &upstream]);
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _up = server.accept().unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    // -T cuts the connection: the client reads a reset, not a clean end of file.
    let cut = c.read_to_end(&mut buf).expect_err("a reset");
    assert_eq!(cut.kind(), std::io::ErrorKind::ConnectionReset);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(400),
        "closed after {waited:?}"
    );
    relay.wait_for_log("inactivity timeout", Duration::from_secs(5));
    assert!(relay.stop().success());
}

/// The copy path sends a whole buffer per request when nothing times out, and a whole send
/// shows no progress until it completes: under `-T` it must report each part, or a reader that
/// keeps reading slowly (16 KiB every 30 ms here, so a 1 MiB buffer takes about two seconds)
/// is cut as idle. Failed before the copy path gave up whole sends under an idle timeout.
/// `-T` is a second, not less: the reader thread must be scheduled within it, and on a loaded
/// 2-core machine a thread can wait a few hundred milliseconds for a core.
#[test]
fn a_slow_reader_that_keeps_reading_is_not_taken_for_idle_in_copy_mode() {
    slow_reader_is_not_idle(&["--mode", "copy"]);
}

/// The same on the buffer-ring path, which sends each filled buffer whole too (1 MiB buffers
/// with `-b 8M`).
#[test]
fn a_slow_reader_that_keeps_reading_is_not_taken_for_idle_in_recv_mode() {
    slow_reader_is_not_idle(&["--mode", "recv", "-b", "8M"]);
}

fn slow_reader_is_not_idle(mode: &[&str]) {
    let server = Listen::tcp();
    let upstream = format!("{},sndbuf=16K", server.connect_address());
    let port = free_port();
    let listen = format!("TCP-LISTEN:{port},bind=127.0.0.1");
    let mut args = mode.to_vec();
    args.extend(["-T", "1", &listen, &upstream]);
    let mut relay = Relay::start(&args);
    let up = payload(2 * MIB, 31);
    let reader = std::thread::spawn(move || {
        let mut s = server.accept().unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => panic!("the slow reader was cut after {} bytes: {e}", got.len()),
            }
            std::thread::sleep(Duration::from_millis(30));
        }
        sha_hex(&got)
    });
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.write_all(&up.data).unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(
        reader.join().unwrap(),
        up.sha,
        "every byte reached the reader"
    );
    let mut rest = Vec::new();
    c.read_to_end(&mut rest)
        .expect("a clean end once the reader closed");
    assert!(relay.wait_exit(LONG).success(), "{}", relay.log());
    assert!(
        !relay.log().contains("inactivity timeout"),
        "{}",
        relay.log()
    );
}

#[test]
fn half_close_timeout_cuts_the_other_direction_off() {
    let server = Listen::tcp();
    let upstream = server.connect_address();
    let srv = std::thread::spawn(move || {
        let mut s = server.accept().unwrap();
        let _ = drain(&mut s);
        std::thread::sleep(Duration::from_secs(3));
        let _ = s.write_all(b"too late");
    });
    let port = free_port();
    let listen = format!("TCP-LISTEN:{port},bind=127.0.0.1");
    let mut relay = Relay::start(&["-t", "0.3", &listen, &upstream]);
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut back = Vec::new();
    let _ = c.read_to_end(&mut back);
    assert!(back.is_empty(), "the reply after -t is cut off");
    assert!(relay.wait_exit(LONG).success());
    assert!(
        relay.log().contains("half-close timeout"),
        "{}",
        relay.log()
    );
    srv.join().unwrap();
}
