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

// ---- truncation reaches the other side as a reset (issue 9, defect 7) ----

/// Reads until end of file or an error: (bytes read, the error if one ended it).
fn read_until_end(stream: &mut std::net::TcpStream) -> (usize, Option<std::io::Error>) {
    use std::io::Read;
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (total, None),
            Ok(n) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return (total, Some(e)),
        }
    }
}

/// A TCP relay in front of a TCP listener the test drives by hand: (relay, backend listener,
/// relay address).
fn tcp_relay_to_hand_backend(extra: &[&str]) -> (Relay, std::net::TcpListener, String) {
    let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = format!("TCP:{}", backend.local_addr().unwrap());
    let port = free_port();
    let listen = format!("TCP-LISTEN:{port},bind=127.0.0.1,fork");
    let mut args = vec!["-d"];
    args.extend_from_slice(extra);
    args.extend([listen.as_str(), upstream.as_str()]);
    let relay = Relay::start(&args);
    (relay, backend, format!("127.0.0.1:{port}"))
}

/// The modes whose directions run differently: splice (default), and the buffer-ring path,
/// whose idle directions hold no buffers and wait for readiness.
const RESET_MODES: [&[&str]; 3] = [&[], &["--mode", "recv"], &["--mode", "recv-zc"]];

#[test]
fn a_backend_reset_mid_stream_reaches_the_client_as_a_reset_not_an_end_of_file() {
    for extra in RESET_MODES {
        backend_reset_reaches_the_client(extra, MIB);
    }
}

#[test]
fn a_backend_reset_of_an_idle_connection_reaches_the_client_as_a_reset() {
    for extra in RESET_MODES {
        backend_reset_reaches_the_client(extra, 0);
    }
}

/// The backend sends `len` bytes, then resets; the client must read a reset.
fn backend_reset_reaches_the_client(extra: &[&str], len: usize) {
    use std::io::Write;
    let (mut relay, backend, address) = tcp_relay_to_hand_backend(extra);
    let mut client = std::net::TcpStream::connect(&address).unwrap();
    let (mut server, _) = backend.accept().unwrap();
    // Mid-stream: the relay has finished its dial (a reset that lands while the dial is still
    // checking its connect is a failed dial, not a cut stream).
    relay.wait_for_log("conn 1: relaying", std::time::Duration::from_secs(60));
    server.write_all(&payload(len, 7).data).unwrap();
    close_with_reset(server);
    let (got, error) = read_until_end(&mut client);
    let kind = error.as_ref().map(std::io::Error::kind);
    assert_eq!(
        kind,
        Some(std::io::ErrorKind::ConnectionReset),
        "{extra:?}: the client got {got} bytes then {error:?} (None: a clean end of file); \
         stderr:\n{}",
        relay.log()
    );
    drop(client);
    // The relay still serves.
    let mut client = std::net::TcpStream::connect(&address).unwrap();
    let (mut server, _) = backend.accept().unwrap();
    client.write_all(b"ping").unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let (got, error) = read_until_end(&mut server);
    assert_eq!((got, error.is_none()), (4, true));
    assert_eq!(relay.stop().code(), Some(0), "{}", relay.log());
}

#[test]
fn a_client_reset_mid_stream_reaches_the_backend_as_a_reset_not_an_end_of_file() {
    for extra in RESET_MODES {
        client_reset_reaches_the_backend(extra);
    }
}

fn client_reset_reaches_the_backend(extra: &[&str]) {
    use std::io::Write;
    let (mut relay, backend, address) = tcp_relay_to_hand_backend(extra);
    let mut client = std::net::TcpStream::connect(&address).unwrap();
    client.write_all(&payload(MIB, 8).data).unwrap();
    let (mut server, _) = backend.accept().unwrap();
    close_with_reset(client);
    let (got, error) = read_until_end(&mut server);
    let kind = error.as_ref().map(std::io::Error::kind);
    assert_eq!(
        kind,
        Some(std::io::ErrorKind::ConnectionReset),
        "{extra:?}: the backend got {got} bytes then {error:?} (None: a clean end of file); \
         stderr:\n{}",
        relay.log()
    );
    assert_eq!(relay.stop().code(), Some(0), "{}", relay.log());
}

#[test]
fn sigterm_during_a_256_mib_upload_lets_it_finish_within_the_drain() {
    let server = Listen::tcp();
    let upstream = server.connect_address();
    let reply = payload(MIB, 31);
    let server = ExchangeServer::spawn(server, reply.data.clone(), 1);
    let port = free_port();
    let listen = format!("TCP-LISTEN:{port},bind=127.0.0.1,fork");
    let mut relay = Relay::start(&["-d", &listen, &upstream]);
    let up = payload(256 * MIB, 32);
    let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let upload = {
        let data = up.data.clone();
        std::thread::spawn(move || exchange(Box::new(client), data))
    };
    relay.wait_for_log("relaying", LONG);
    relay.signal(Signal::SIGTERM);
    relay.wait_for_log("draining", LONG);
    // No new connection is taken while draining.
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the listener is closed while draining"
    );
    let got = upload.join().unwrap().expect("the client's exchange");
    assert_eq!(got.received, MIB);
    assert_eq!(got.sha, reply.sha);
    let at_server = server.next(LONG);
    assert_eq!(at_server.received, 256 * MIB, "{}", relay.log());
    assert_eq!(at_server.sha, up.sha);
    assert_eq!(relay.wait_exit(LONG).code(), Some(0), "{}", relay.log());
}

#[test]
fn a_second_sigterm_cuts_open_connections_and_both_peers_see_a_reset() {
    use std::io::{Read, Write};
    let (mut relay, backend, address) = tcp_relay_to_hand_backend(&[]);
    let mut client = std::net::TcpStream::connect(&address).unwrap();
    client.write_all(b"hello").unwrap();
    let (mut server, _) = backend.accept().unwrap();
    let mut hello = [0u8; 5];
    server.read_exact(&mut hello).unwrap();
    relay.signal(Signal::SIGTERM);
    relay.wait_for_log("draining", LONG);
    assert!(relay.is_running(), "an open connection holds the drain");
    relay.signal(Signal::SIGTERM);
    assert_eq!(relay.wait_exit(LONG).code(), Some(0), "{}", relay.log());
    for (name, stream) in [("client", &mut client), ("backend", &mut server)] {
        let (got, error) = read_until_end(stream);
        assert_eq!(
            error.as_ref().map(std::io::Error::kind),
            Some(std::io::ErrorKind::ConnectionReset),
            "the {name} got {got} bytes then {error:?}; stderr:\n{}",
            relay.log()
        );
    }
}

/// Reads from a client of the relay until its connection ends: the error kind that ended it
/// (`None`: a clean end of file), and the bytes it got first.
fn how_it_ends(stream: &mut std::net::TcpStream) -> (Option<std::io::ErrorKind>, usize) {
    stream.set_read_timeout(Some(LONG)).unwrap();
    let (got, error) = read_until_end(stream);
    (error.as_ref().map(std::io::Error::kind), got)
}

/// As [`how_it_ends`], for a client that first sends `bytes`: a reset that arrives before
/// the write ends the connection there (the write reports it, and a read after it would
/// only see the closed socket's end of file).
fn how_it_ends_after_sending(
    stream: &mut std::net::TcpStream,
    bytes: &[u8],
) -> (Option<std::io::ErrorKind>, usize) {
    use std::io::Write;
    match stream.write_all(bytes) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => (Some(e.kind()), 0),
        Err(e) => panic!("the client's write failed otherwise: {e}"),
        Ok(()) => how_it_ends(stream),
    }
}

#[test]
fn a_failed_dial_reaches_the_client_as_a_reset_not_an_end_of_file() {
    let closed = free_port();
    let upstream = format!("TCP:127.0.0.1:{closed}");
    let port = free_port();
    let listen = format!("TCP-LISTEN:{port},bind=127.0.0.1,fork");
    let mut relay = Relay::start(&["-d", &listen, &upstream]);
    // A client that waits for the other side to speak first: nothing of it is left unread
    // when the relay gives up, so only the relay's choice decides FIN or reset.
    let mut quiet = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    relay.wait_for_log(&format!("{upstream}: "), LONG);
    let ending = how_it_ends(&mut quiet);
    assert_eq!(
        ending,
        (Some(std::io::ErrorKind::ConnectionReset), 0),
        "a quiet client's connection must end in a reset; stderr:\n{}",
        relay.log()
    );
    // A client that sent bytes which will never be delivered.
    let mut talker = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let ending = how_it_ends_after_sending(&mut talker, &payload(64 * 1024, 71).data);
    assert_eq!(
        ending,
        (Some(std::io::ErrorKind::ConnectionReset), 0),
        "stderr:\n{}",
        relay.log()
    );
    // The log keeps the reason, naming the target.
    let log = relay.log();
    assert!(
        log.contains(&format!("closed: {upstream}: ")) && log.contains("refused"),
        "the dial's error is logged; stderr:\n{log}"
    );
    assert!(relay.is_running(), "the relay survives failed dials");
    assert_eq!(relay.stop().code(), Some(0), "{}", relay.log());
}

#[test]
fn a_backend_that_resets_as_it_accepts_reaches_every_client_as_a_reset() {
    const ROUNDS: usize = 20;
    let (mut relay, backend, address) = tcp_relay_to_hand_backend(&[]);
    // Each connection is reset the moment it is accepted: the reset lands during the relay's
    // connect check (a failed dial) or just after it (a failed read); the client must see a
    // reset either way.
    let resetter = std::thread::spawn(move || {
        for _ in 0..ROUNDS {
            let (s, _) = backend.accept().expect("backend accept");
            close_with_reset(s);
        }
    });
    for round in 0..ROUNDS {
        let mut client = std::net::TcpStream::connect(&address).unwrap();
        let ending = if round % 2 == 1 {
            how_it_ends_after_sending(&mut client, b"request")
        } else {
            how_it_ends(&mut client)
        };
        assert_eq!(
            ending,
            (Some(std::io::ErrorKind::ConnectionReset), 0),
            "round {round}; stderr:\n{}",
            tail(&relay.log())
        );
    }
    resetter.join().unwrap();
    assert!(relay.is_running());
    assert_eq!(relay.stop().code(), Some(0), "{}", tail(&relay.log()));
}

#[test]
fn a_vmm_that_refuses_the_hybrid_handshake_reaches_the_client_as_a_reset() {
    use std::io::BufRead;
    // A VMM's UNIX socket that accepts, reads the CONNECT line and closes without a reply:
    // the dial fails after its connect succeeded.
    let dir = Scratch::new("refusing-vmm");
    let sock = dir.path("vmm.sock");
    let vmm = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let refuser = std::thread::spawn(move || {
        let (s, _) = vmm.accept().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(&s).read_line(&mut line).unwrap();
        line
    });
    let port = free_port();
    let listen = format!("TCP-LISTEN:{port},bind=127.0.0.1,fork");
    let upstream = format!("VSOCK-UDS-CONNECT:{}:52", sock.display());
    let mut relay = Relay::start(&["-d", &listen, &upstream]);
    let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let ending = how_it_ends(&mut client);
    assert_eq!(refuser.join().unwrap(), "CONNECT 52\n");
    assert_eq!(
        ending,
        (Some(std::io::ErrorKind::ConnectionReset), 0),
        "stderr:\n{}",
        relay.log()
    );
    relay.wait_for_log("guest port 52 refused", LONG);
    assert_eq!(relay.stop().code(), Some(0), "{}", relay.log());
}

// ---- descriptor pressure: waking directions wait for descriptors (issue 9, defect 2) ----

/// Raises this test process's descriptor limit to its hard limit (both ends of 1,000
/// connections live here).
fn raise_own_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
}

#[test]
fn a_thousand_idle_clients_waking_at_once_under_nofile_1024_lose_no_byte() {
    use std::collections::HashMap;
    use std::io::{Read, Write};
    const CLIENTS: usize = 1000;
    const EACH: usize = 1000;
    raise_own_nofile();
    let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    widen_backlog(&backend);
    let upstream = format!("TCP:{}", backend.local_addr().unwrap());
    let backend_after = backend.try_clone().unwrap();
    let port = free_port();
    let listen = format!("TCP-LISTEN:{port},bind=127.0.0.1,fork,backlog=2048");
    let mut relay = Relay::start_limited(1024, &["-d", &listen, &upstream]);
    // Every client connects and stays idle; the relay dials the backend for each.
    let accepter = std::thread::spawn(move || {
        (0..CLIENTS)
            .map(|_| {
                let (s, _) = backend.accept().expect("backend accept");
                s.set_read_timeout(Some(LONG)).unwrap();
                s
            })
            .collect::<Vec<_>>()
    });
    let mut clients: Vec<std::net::TcpStream> = (0..CLIENTS)
        .map(|_| {
            let c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
            c.set_read_timeout(Some(LONG)).unwrap();
            c
        })
        .collect();
    let mut servers = accepter.join().unwrap();
    // All wake at once: every client sends its payload before anyone reads.
    let payloads: Vec<Payload> = (0..CLIENTS)
        .map(|i| payload(EACH, 1000 + i as u64))
        .collect();
    let by_sha: HashMap<&str, usize> = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| (p.sha.as_str(), i))
        .collect();
    for (c, p) in clients.iter_mut().zip(&payloads) {
        c.write_all(&p.data).expect("client write");
    }
    // The backend receives every payload intact and echoes it.
    let mut seen = vec![false; CLIENTS];
    for s in &mut servers {
        let mut buf = vec![0u8; EACH];
        s.read_exact(&mut buf)
            .unwrap_or_else(|e| panic!("backend read: {e}; relay stderr:\n{}", tail(&relay.log())));
        let i = *by_sha
            .get(sha_hex(&buf).as_str())
            .expect("the backend received one client's payload intact");
        assert!(!seen[i], "each payload arrives once");
        seen[i] = true;
        s.write_all(&buf).unwrap();
    }
    for (i, (c, p)) in clients.iter_mut().zip(&payloads).enumerate() {
        let mut buf = vec![0u8; EACH];
        c.read_exact(&mut buf).unwrap_or_else(|e| {
            panic!(
                "client {i} read: {e}; relay stderr:\n{}",
                tail(&relay.log())
            )
        });
        assert_eq!(sha_hex(&buf), p.sha, "client {i} got its echo intact");
    }
    assert!(
        !relay.log().contains("failed"),
        "no connection failed while they all woke; stderr:\n{}",
        tail(&relay.log())
    );
    drop(clients);
    drop(servers);
    assert_a_new_client_reaches(port, &backend_after);
    assert_eq!(relay.stop().code(), Some(0), "{}", tail(&relay.log()));
}

/// A new client through the relay on `port` reaches `backend` with its bytes: the relay still
/// serves after what the test did to it.
fn assert_a_new_client_reaches(port: u16, backend: &std::net::TcpListener) {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.write_all(b"after").unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let (mut s, _) = backend.accept().unwrap();
    s.set_read_timeout(Some(LONG)).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"after");
}

/// A relay under `prlimit --nofile=128:128` in front of a hand-driven backend, with 48
/// connections open through it and the idle ones parked (past 36 live connections their
/// sockets move into the ring's fixed-file table and lose their descriptors): (relay, a
/// clone of the backend listener, relay port, clients, backend ends).
fn relay_with_parked_connections() -> (
    Relay,
    std::net::TcpListener,
    u16,
    Vec<std::net::TcpStream>,
    Vec<std::net::TcpStream>,
) {
    const CLIENTS: usize = 48;
    raise_own_nofile();
    let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    widen_backlog(&backend);
    let upstream = format!("TCP:{}", backend.local_addr().unwrap());
    let backend_after = backend.try_clone().unwrap();
    let port = free_port();
    let listen = format!("TCP-LISTEN:{port},bind=127.0.0.1,fork");
    let relay = Relay::start_limited(128, &["-d", &listen, &upstream]);
    let (clients, servers) = connect_many(&relay, port, backend, CLIENTS);
    relay.wait_for_log("connections parked in the fixed-file table", LONG);
    (relay, backend_after, port, clients, servers)
}

#[test]
fn parked_connections_cut_by_backend_resets_reach_their_clients_as_resets() {
    let (mut relay, backend, port, mut clients, servers) = relay_with_parked_connections();
    for server in servers {
        close_with_reset(server);
    }
    for (i, client) in clients.iter_mut().enumerate() {
        assert_eq!(
            how_it_ends(client),
            (Some(std::io::ErrorKind::ConnectionReset), 0),
            "client {i} (the first are parked); stderr:\n{}",
            tail(&relay.log())
        );
    }
    drop(clients);
    assert_a_new_client_reaches(port, &backend);
    assert_eq!(relay.stop().code(), Some(0), "{}", tail(&relay.log()));
}

#[test]
fn a_second_sigterm_cuts_parked_connections_and_both_peers_see_a_reset() {
    let (mut relay, _backend, _, mut clients, mut servers) = relay_with_parked_connections();
    relay.signal(Signal::SIGTERM);
    relay.wait_for_log("draining", LONG);
    relay.signal(Signal::SIGTERM);
    assert_eq!(
        relay.wait_exit(LONG).code(),
        Some(0),
        "{}",
        tail(&relay.log())
    );
    let ends = clients.iter_mut().map(|c| ("client", c));
    let ends = ends.chain(servers.iter_mut().map(|s| ("backend", s)));
    for (i, (name, stream)) in ends.enumerate() {
        assert_eq!(
            how_it_ends(stream),
            (Some(std::io::ErrorKind::ConnectionReset), 0),
            "{name} of connection {} (the first are parked); stderr:\n{}",
            i % 48,
            tail(&relay.log())
        );
    }
}

/// The last 40 lines of a log.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

// ---- memory of idle connections on the copy and buffer-ring paths (issue 9, defect 3) ----

/// A field of /proc/PID/status in KiB (VmRSS, VmPin, ...).
fn status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Descriptors process `pid` has open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// `clients` connections through `relay` (listening on `port`) to `backend`, all open at
/// once and relayed: (clients, backend ends).
fn connect_many(
    relay: &Relay,
    port: u16,
    backend: std::net::TcpListener,
    clients: usize,
) -> (Vec<std::net::TcpStream>, Vec<std::net::TcpStream>) {
    let accepter = std::thread::spawn(move || {
        (0..clients)
            .map(|_| {
                let (s, _) = backend.accept().expect("backend accept");
                s.set_read_timeout(Some(LONG)).unwrap();
                s
            })
            .collect::<Vec<_>>()
    });
    let conns: Vec<std::net::TcpStream> = (0..clients)
        .map(|_| {
            let c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
            c.set_read_timeout(Some(LONG)).unwrap();
            c
        })
        .collect();
    let servers = accepter.join().unwrap();
    let deadline = std::time::Instant::now() + LONG;
    while relay.log().matches(": relaying ").count() < clients {
        assert!(std::time::Instant::now() < deadline, "not all relayed");
        std::thread::sleep(Duration::from_millis(50));
    }
    (conns, servers)
}

/// 1,000 idle connections through `--mode MODE -b 1M` hold no staging memory (VmPin and
/// VmRSS bounded); then every client sends `each` hashed bytes at once and gets them echoed;
/// once they are idle again the relay gives the memory back (VmPin and VmRSS), and they all
/// still work.
fn idle_connections_hold_no_buffers(mode: &str, each: usize) {
    const CLIENTS: usize = 1000;
    // Bounds with room for the relay itself and a worker's few idle buffers, far below the
    // 2 x 1 MiB per connection (about 2 GB) of buffers held for a connection's life.
    const PIN_KIB: u64 = 64 * 1024;
    const RSS_KIB: u64 = 200 * 1024;
    raise_own_nofile();
    let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    widen_backlog(&backend);
    let upstream = format!("TCP:{}", backend.local_addr().unwrap());
    let port = free_port();
    let listen = format!("TCP-LISTEN:{port},bind=127.0.0.1,fork,backlog=2048");
    let mut relay = Relay::start(&["-d", "--mode", mode, "-b", "1M", &listen, &upstream]);
    let pid = relay.child.id();
    let (mut clients, mut servers) = connect_many(&relay, port, backend, CLIENTS);
    let (rss, pin) = (status_kib(pid, "VmRSS"), status_kib(pid, "VmPin"));
    println!("{CLIENTS} idle {mode} connections: VmRSS {rss} KiB, VmPin {pin} KiB");
    assert!(
        pin < PIN_KIB,
        "{mode}: VmPin {pin} KiB for idle connections"
    );
    assert!(
        rss < RSS_KIB,
        "{mode}: VmRSS {rss} KiB for idle connections"
    );
    // They all still work: every client sends a hashed payload at once, the backend echoes.
    echo_all(&mut clients, &mut servers, each);
    let (rss, pin) = (status_kib(pid, "VmRSS"), status_kib(pid, "VmPin"));
    println!("{mode}: right after the echo: VmRSS {rss} KiB, VmPin {pin} KiB");
    // Idle again: the buffers go back (a drained direction lets go of them after a pause).
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let (rss, pin) = (status_kib(pid, "VmRSS"), status_kib(pid, "VmPin"));
        if rss < RSS_KIB && pin < PIN_KIB {
            println!("{mode}: idle again: VmRSS {rss} KiB, VmPin {pin} KiB");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{mode}: VmRSS {rss} KiB, VmPin {pin} KiB after the connections went idle again"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // And they wake again: the buffers are taken anew.
    echo_all(&mut clients, &mut servers, each / 4);
    drop(clients);
    drop(servers);
    assert_eq!(relay.stop().code(), Some(0), "{}", tail(&relay.log()));
}

#[test]
fn a_thousand_idle_connections_in_copy_mode_hold_no_buffers() {
    // Copy buffers are mappings of their own: as heap blocks, glibc kept their pages after
    // they were freed and the relay stayed at about 1 GB of RSS once the echo was over.
    idle_connections_hold_no_buffers("copy", 256 * 1024);
}

#[test]
fn a_thousand_idle_connections_in_recv_mode_hold_no_buffer_groups() {
    // 256 KiB each way fills several of a group's 128 KiB buffers: memory a group held for
    // the connection's life would keep.
    idle_connections_hold_no_buffers("recv", 256 * 1024);
}

#[test]
fn a_thousand_idle_connections_in_recv_zc_mode_pin_no_buffer_groups() {
    idle_connections_hold_no_buffers("recv-zc", 256 * 1024);
}

#[test]
fn ring_path_directions_waking_past_the_staging_cap_wait_for_a_buffer_group_and_lose_no_byte() {
    use std::io::{Read, Write};
    // -b 256M: a direction's group is 256 MiB (mapped, touched only as it fills), so four
    // groups fill the process-wide 1 GiB cap; eight connections sending both ways need more.
    const CLIENTS: usize = 8;
    const EACH: usize = 24 * MIB;
    let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = format!("TCP:{}", backend.local_addr().unwrap());
    let port = free_port();
    let listen = format!("TCP-LISTEN:{port},bind=127.0.0.1,fork");
    let mut relay = Relay::start(&["-dd", "--mode", "recv", "-b", "256M", &listen, &upstream]);
    let (clients, servers) = connect_many(&relay, port, backend, CLIENTS);
    let payloads: Vec<Payload> = (0..CLIENTS)
        .map(|i| payload(EACH, 7100 + i as u64))
        .collect();
    // Every client sends at once; the backend reads nothing yet, so the first four
    // directions hold their groups full of bytes and the others find no room.
    let senders: Vec<_> = clients
        .into_iter()
        .zip(&payloads)
        .map(|(mut c, p)| {
            let (data, sha) = (p.data.clone(), p.sha.clone());
            std::thread::spawn(move || {
                c.write_all(&data).unwrap();
                let mut echo = vec![0u8; EACH];
                c.read_exact(&mut echo).expect("client reads its echo");
                assert_eq!(sha_hex(&echo), sha, "the echo came back intact");
            })
        })
        .collect();
    relay.wait_for_log("buffer room; waiting", LONG);
    // Now the backend reads every connection at once and echoes.
    let echoes: Vec<_> = servers
        .into_iter()
        .map(|mut s| {
            std::thread::spawn(move || {
                let mut buf = vec![0u8; EACH];
                s.read_exact(&mut buf).expect("backend read");
                s.write_all(&buf).unwrap();
                sha_hex(&buf)
            })
        })
        .collect();
    let mut got: Vec<String> = echoes.into_iter().map(|h| h.join().unwrap()).collect();
    for s in senders {
        s.join().unwrap();
    }
    let mut want: Vec<String> = payloads.iter().map(|p| p.sha.clone()).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "every payload reached the backend intact");
    let log = relay.log();
    println!(
        "{} waits for room under the cap, {} groups given back",
        log.matches("buffer room; waiting").count(),
        log.matches("its buffers went back").count()
    );
    assert!(
        !log.contains("read failed") && !log.contains("write failed"),
        "no connection failed: {}",
        tail(&log)
    );
    assert_eq!(relay.stop().code(), Some(0), "{}", tail(&relay.log()));
}

/// Every client sends `each` bytes (its own pattern) at once; the backend ends, in whatever
/// order the relay dialed them, read each payload, find it intact and echo it; every client
/// reads its echo intact.
fn echo_all(clients: &mut [std::net::TcpStream], servers: &mut [std::net::TcpStream], each: usize) {
    use std::collections::HashMap;
    use std::io::{Read, Write};
    let payloads: Vec<Payload> = (0..clients.len())
        .map(|i| payload(each, 5000 + i as u64))
        .collect();
    let by_sha: HashMap<&str, usize> = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| (p.sha.as_str(), i))
        .collect();
    let writers: Vec<_> = clients
        .iter()
        .zip(&payloads)
        .map(|(c, p)| {
            let mut c = c.try_clone().unwrap();
            let data = p.data.clone();
            std::thread::spawn(move || c.write_all(&data).unwrap())
        })
        .collect();
    let mut seen = vec![false; clients.len()];
    for s in servers.iter_mut() {
        let mut buf = vec![0u8; each];
        s.read_exact(&mut buf).expect("backend read");
        let i = *by_sha
            .get(sha_hex(&buf).as_str())
            .expect("the backend received one client's payload intact");
        assert!(!seen[i], "each payload arrives once");
        seen[i] = true;
        s.write_all(&buf).unwrap();
    }
    for w in writers {
        w.join().unwrap();
    }
    for (i, (c, p)) in clients.iter_mut().zip(&payloads).enumerate() {
        let mut buf = vec![0u8; each];
        c.read_exact(&mut buf).expect("client read");
        assert_eq!(sha_hex(&buf), p.sha, "client {i} got its echo intact");
    }
}

// ---- churn: descriptors and memory back to baseline ----

#[test]
fn twenty_thousand_short_connections_leave_descriptors_and_rss_at_baseline() {
    use std::io::{Read, Write};
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    widen_backlog(&server);
    let upstream = format!("TCP:{}", server.local_addr().unwrap());
    // An echo backend that serves connections one after another.
    std::thread::spawn(move || {
        for s in server.incoming() {
            let Ok(mut s) = s else { return };
            let mut buf = [0u8; 64];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 || s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    });
    let port = free_port();
    let listen = format!("TCP-LISTEN:{port},bind=127.0.0.1,fork");
    // -d only (warnings): twenty thousand notices would be most of the test's work.
    let mut relay = Relay::start(&[&listen, &upstream]);
    let pid = relay.child.id();
    let one = |i: u32| {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        c.set_read_timeout(Some(LONG)).unwrap();
        let msg = i.to_be_bytes();
        c.write_all(&msg).unwrap();
        let mut back = [0u8; 4];
        c.read_exact(&mut back).unwrap();
        assert_eq!(back, msg, "connection {i} echoed intact");
    };
    for i in 0..1000 {
        one(i);
    }
    // Idle pools fill during the warm-up; the baseline is taken after it.
    std::thread::sleep(Duration::from_millis(500));
    let (fds, rss) = (open_fds(pid), status_kib(pid, "VmRSS"));
    for i in 0..20_000 {
        one(i);
    }
    let deadline = std::time::Instant::now() + LONG;
    while open_fds(pid) > fds && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (fds_after, rss_after) = (open_fds(pid), status_kib(pid, "VmRSS"));
    println!("churn: fds {fds} -> {fds_after}, VmRSS {rss} -> {rss_after} KiB");
    assert!(fds_after <= fds, "descriptors {fds} -> {fds_after}");
    assert!(
        rss_after <= rss + 32 * 1024,
        "VmRSS {rss} -> {rss_after} KiB"
    );
    one(7);
    assert_eq!(relay.stop().code(), Some(0), "{}", relay.log());
}

// ---- pipe quota: an unprivileged user past fs.pipe-user-pages-soft ----

#[test]
fn an_unprivileged_relay_past_its_pipe_quota_loses_no_byte() {
    // 48 connections x 2 directions x 1 MiB pipes = 96 MiB, past the default soft quota of
    // 16384 pages (64 MiB) per user: later pipes get one page and the relay must go on.
    const CONNS: usize = 48;
    const EACH: usize = 4 * MIB;
    let server = Listen::tcp();
    let upstream = server.connect_address();
    let reply = payload(EACH, 77);
    let server = ExchangeServer::spawn(server, reply.data.clone(), CONNS);
    let port = free_port();
    let listen = format!("TCP-LISTEN:{port},bind=127.0.0.1,fork");
    let mut relay = Relay::start_unprivileged(&["-d", "-b", "1M", &listen, &upstream]);
    let clients: Vec<_> = (0..CONNS)
        .map(|i| {
            let up = payload(EACH, 100 + i as u64);
            std::thread::spawn(move || {
                let c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                (exchange(Box::new(c), up.data.clone()).unwrap(), up.sha)
            })
        })
        .collect();
    let mut sent = Vec::new();
    for c in clients {
        let (got, sha) = c.join().unwrap();
        assert_eq!(got.received, EACH);
        assert_eq!(got.sha, reply.sha, "every client got the reply intact");
        sent.push(sha);
    }
    for _ in 0..CONNS {
        let at_server = server.next(LONG);
        assert_eq!(at_server.received, EACH);
        assert!(
            sent.contains(&at_server.sha),
            "the server got a payload intact"
        );
    }
    assert!(
        !relay.log().contains("failed"),
        "no connection failed; stderr:\n{}",
        tail(&relay.log())
    );
    assert_eq!(relay.stop().code(), Some(0), "{}", tail(&relay.log()));
}

// ---- a slow reader against fast writers, on every data path ----

#[test]
fn a_slow_reader_against_fast_writers_keeps_relay_memory_bounded_on_every_data_path() {
    use std::io::Read;
    const WRITERS: usize = 4;
    const EACH: usize = 8 * MIB;
    for mode in ["splice", "uring-splice", "copy", "recv", "recv-zc"] {
        let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let upstream = format!("TCP:{}", backend.local_addr().unwrap());
        let port = free_port();
        let listen = format!("TCP-LISTEN:{port},bind=127.0.0.1,fork");
        let mut relay = Relay::start(&["-d", "--mode", mode, "-b", "1M", &listen, &upstream]);
        let pid = relay.child.id();
        // The backend reads 16 KiB at a time with a pause between reads.
        let readers = std::thread::spawn(move || {
            let handles: Vec<_> = (0..WRITERS)
                .map(|_| {
                    let (mut s, _) = backend.accept().unwrap();
                    std::thread::spawn(move || {
                        let mut all = Vec::with_capacity(EACH);
                        let mut buf = [0u8; 16 * 1024];
                        loop {
                            match s.read(&mut buf).unwrap() {
                                0 => return sha_hex(&all),
                                n => all.extend_from_slice(&buf[..n]),
                            }
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect::<Vec<_>>()
        });
        let payloads: Vec<Payload> = (0..WRITERS)
            .map(|i| payload(EACH, 900 + i as u64))
            .collect();
        let writers: Vec<_> = payloads
            .iter()
            .map(|p| {
                let data = p.data.clone();
                std::thread::spawn(move || {
                    use std::io::Write;
                    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                    c.write_all(&data).unwrap();
                    c.shutdown(std::net::Shutdown::Write).unwrap();
                    let mut rest = Vec::new();
                    c.read_to_end(&mut rest).unwrap();
                })
            })
            .collect();
        let mut peak = 0;
        while !readers.is_finished() {
            peak = peak.max(status_kib(pid, "VmRSS"));
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut got = readers.join().unwrap();
        for w in writers {
            w.join().unwrap();
        }
        let mut want: Vec<String> = payloads.iter().map(|p| p.sha.clone()).collect();
        got.sort();
        want.sort();
        assert_eq!(got, want, "{mode}: every writer's bytes arrived intact");
        println!("{mode}: relay VmRSS peak {peak} KiB with a slow reader");
        assert!(peak < 128 * 1024, "{mode}: VmRSS peaked at {peak} KiB");
        assert_eq!(relay.stop().code(), Some(0), "{mode}: {}", relay.log());
    }
}

/// Starts a relay on a UNIX-LISTEN path, serves through it, replaces its socket file with
/// `replace` (another program's file), stops it with SIGTERM; returns the path, still held
/// by the scratch directory.
fn replaced_socket_file_survives_sigterm(
    replace: impl FnOnce(&Path),
) -> (Scratch, std::path::PathBuf) {
    let dir = Scratch::new("replaced");
    let path = dir.path("relay.sock");
    let server = Listen::tcp();
    let upstream = server.connect_address();
    let server = ExchangeServer::spawn(server, payload(EACH_WAY, 2).data, 1);
    let listen = format!("UNIX-LISTEN:{},fork", path.display());
    let mut relay = Relay::start(&["-d", &listen, &upstream]);
    exchange_through(&path, &server, 1);
    relay.wait_for_log("closed", LONG);
    std::fs::remove_file(&path).unwrap();
    replace(&path);
    relay.signal(Signal::SIGTERM);
    let status = relay.wait_exit(LONG);
    assert_eq!(status.code(), Some(0), "{}", relay.log());
    (dir, path)
}

#[test]
fn sigterm_leaves_a_regular_file_that_replaced_the_socket_file_alone() {
    let (_dir, path) = replaced_socket_file_survives_sigterm(|path| {
        std::fs::write(path, b"another program's data\n").unwrap()
    });
    assert_eq!(
        std::fs::read(&path).expect("the file is still there"),
        b"another program's data\n"
    );
}

#[test]
fn sigterm_leaves_another_programs_socket_at_the_path_alone() {
    use std::io::{Read, Write};
    let theirs = std::cell::OnceCell::new();
    let (_dir, path) = replaced_socket_file_survives_sigterm(|path| {
        theirs
            .set(std::os::unix::net::UnixListener::bind(path).unwrap())
            .unwrap();
    });
    let theirs = theirs.into_inner().unwrap();
    let mut client = UnixStream::connect(&path).expect("their socket is still reachable");
    client.write_all(b"ping").unwrap();
    let (mut served, _) = theirs.accept().unwrap();
    let mut buf = [0u8; 4];
    served.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
}
