//! `UDP-LISTEN` under `vsplice serve`, on real UDP sockets on loopback: fifty senders at once,
//! each with its own session and every datagram checked; the allow list, `max-children` and
//! the message counters of a UDP service; a reload that changes the target while a session
//! is open; and a UDP service beside a TCP service on the same port number.

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::messages::{Sequence, udp_answerer, udp_exchange};
use common::{Relay, Scratch, free_port};

/// The UDP payload limit over IPv4.
const UDP_MAX: usize = 65507;
/// Messages per test case, over all senders.
const COUNT: usize = 20_000;
/// A guard against a hang, never a measure.
const LONG: Duration = Duration::from_secs(60);

/// A UDP client socket on `source`, connected to the relay's `port`.
fn client(source: &str, port: u16) -> UdpSocket {
    let socket = UdpSocket::bind((source, 0)).unwrap();
    socket.connect(("127.0.0.1", port)).unwrap();
    socket
}

/// Sends `message` and returns the answer, or `None` if none came within `wait`.
fn ask(socket: &UdpSocket, message: &[u8], wait: Duration) -> Option<Vec<u8>> {
    socket.set_read_timeout(Some(wait)).unwrap();
    socket.send(message).unwrap();
    let mut buf = vec![0u8; 70_000];
    socket.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
}

/// `senders` senders at once through `port`, each with its share of [`COUNT`] datagrams of
/// random sizes (seeds from `seed` on), every datagram checked as it comes back.
fn senders_at_once(port: u16, senders: usize, seed: u64, relay: &Relay) {
    let threads: Vec<_> = (0..senders)
        .map(|c| {
            std::thread::spawn(move || {
                let socket = client("127.0.0.1", port);
                let seq = Sequence {
                    seed: seed + c as u64,
                    count: COUNT / senders,
                    max: UDP_MAX,
                    empty: true,
                };
                udp_exchange(&socket, seq, seq, 2)
            })
        })
        .collect();
    for (c, sender) in threads.into_iter().enumerate() {
        assert_eq!(
            sender.join().unwrap(),
            Ok(()),
            "sender {c}; log:\n{}",
            relay.log()
        );
    }
}

fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    out
}

/// The value of the sample whose line starts with `name_and_labels`, if present.
fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
}

/// Waits until the metrics show `value` for `name_and_labels`; returns the text.
fn wait_sample(port: u16, name_and_labels: &str, value: f64) -> String {
    let deadline = Instant::now() + LONG;
    loop {
        let text = scrape(port);
        if sample(&text, name_and_labels) == Some(value) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{name_and_labels} never reached {value}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_udp_service_serves_fifty_senders_at_once_counts_their_messages_and_refuses_others() {
    const SENDERS: usize = 50;
    let dir = Scratch::new("serve-udp");
    let backend = udp_answerer(b"");
    let (front, metrics) = (free_port(), free_port());
    let config = dir.path("vsplice.toml");
    std::fs::write(
        &config,
        format!(
            "[metrics]\nlisten = \"TCP4-LISTEN:{metrics},bind=127.0.0.1\"\n\
             [[service]]\nname = \"dns\"\n\
             listen = \"UDP4-LISTEN:{front},bind=127.0.0.1,fork\"\n\
             connect = \"UDP:127.0.0.1:{backend}\"\n\
             allow = [\"127.0.0.1/32\"]\nidle-timeout = \"3s\"\n"
        ),
    )
    .unwrap();
    let relay = Relay::serve(&config, 1);
    senders_at_once(front, SENDERS, 500, &relay);
    let count = COUNT as f64;
    // Counted once the relay has seen each send complete, which may be after the sender
    // read its answer: waited for, both ways.
    wait_sample(
        metrics,
        "vsplice_messages_total{service=\"dns\",direction=\"first_to_second\"}",
        count,
    );
    let text = wait_sample(
        metrics,
        "vsplice_messages_total{service=\"dns\",direction=\"second_to_first\"}",
        count,
    );
    assert_eq!(
        sample(&text, "vsplice_connections_accepted_total{service=\"dns\"}"),
        Some(SENDERS as f64),
        "one session per sender:\n{text}"
    );
    // A sender outside the allow list gets no session and no answer, and is counted.
    assert_eq!(
        ask(&client("127.0.0.2", front), b"ping", Duration::from_secs(1)),
        None
    );
    wait_sample(
        metrics,
        "vsplice_connections_denied_total{service=\"dns\"}",
        1.0,
    );
    // Each session ends after its idle timeout.
    let text = wait_sample(
        metrics,
        "vsplice_connections_closed_total{service=\"dns\",reason=\"idle_timeout\"}",
        SENDERS as f64,
    );
    assert_eq!(
        sample(&text, "vsplice_connections_active{service=\"dns\"}"),
        Some(0.0),
        "{text}"
    );
    let mut relay = relay;
    assert!(relay.stop().success(), "{}", relay.log());
}

#[test]
fn max_children_holds_a_new_senders_datagrams_until_a_session_ends() {
    let dir = Scratch::new("serve-udp-max");
    let backend = udp_answerer(b"");
    let front = free_port();
    let config = dir.path("vsplice.toml");
    std::fs::write(
        &config,
        format!(
            "[[service]]\nname = \"one\"\n\
             listen = \"UDP4-LISTEN:{front},bind=127.0.0.1,fork\"\n\
             connect = \"UDP:127.0.0.1:{backend}\"\n\
             max-children = 1\nidle-timeout = \"3s\"\n"
        ),
    )
    .unwrap();
    let mut relay = Relay::serve(&config, 1);
    let (a, b) = (client("127.0.0.1", front), client("127.0.0.1", front));
    assert_eq!(ask(&a, b"a", LONG), Some(b"a".to_vec()), "{}", relay.log());
    // The one session is A's: B's datagram waits in the socket's queue, unanswered...
    assert_eq!(ask(&b, b"b", Duration::from_millis(500)), None);
    // ... until A's session ends after its idle timeout; then B's session carries it.
    b.set_read_timeout(Some(LONG)).unwrap();
    let mut buf = [0u8; 16];
    let n = b.recv(&mut buf).expect("B's datagram is answered");
    assert_eq!(&buf[..n], b"b");
    let log = relay.log();
    assert_eq!(
        log.matches("closed: inactivity timeout").count(),
        1,
        "B was answered once A's session had ended, not before:\n{log}"
    );
    assert!(relay.stop().success(), "{}", relay.log());
}

#[test]
fn a_reload_sends_new_senders_to_the_new_target_while_an_open_session_keeps_its_own() {
    let dir = Scratch::new("serve-udp-reload");
    let (old_target, new_target) = (udp_answerer(b"old:"), udp_answerer(b"new:"));
    let port = free_port();
    let config = dir.path("vsplice.toml");
    let write = |target: u16| {
        // A TCP service on the same port number: UDP has its own ports.
        std::fs::write(
            &config,
            format!(
                "[[service]]\nname = \"udp\"\n\
                 listen = \"UDP4-LISTEN:{port},bind=127.0.0.1,fork\"\n\
                 connect = \"UDP:127.0.0.1:{target}\"\n\
                 [[service]]\nname = \"tcp\"\n\
                 listen = \"TCP4-LISTEN:{port},bind=127.0.0.1,fork,framing=len16\"\n\
                 connect = \"UDP:127.0.0.1:{target}\"\n"
            ),
        )
        .unwrap()
    };
    write(old_target);
    let mut relay = Relay::serve(&config, 2);
    let early = client("127.0.0.1", port);
    assert_eq!(ask(&early, b"1", LONG), Some(b"old:1".to_vec()));
    write(new_target);
    relay.signal(nix::sys::signal::Signal::SIGHUP);
    relay.wait_for_log("reloaded", LONG);
    assert!(
        relay
            .log()
            .contains("0 added, 0 removed, 2 changed, 0 unchanged"),
        "{}",
        relay.log()
    );
    let late = client("127.0.0.1", port);
    assert_eq!(ask(&late, b"2", LONG), Some(b"new:2".to_vec()));
    assert_eq!(
        ask(&early, b"3", LONG),
        Some(b"old:3".to_vec()),
        "an open session keeps the target it started with"
    );
    // Renamed, at the same address: the socket moves to the new name and serves on.
    std::fs::write(
        &config,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("name = \"udp\"", "name = \"resolver\""),
    )
    .unwrap();
    relay.signal(nix::sys::signal::Signal::SIGHUP);
    relay.wait_for_log("1 added, 0 removed, 0 changed, 1 unchanged", LONG);
    let renamed = client("127.0.0.1", port);
    assert_eq!(ask(&renamed, b"5", LONG), Some(b"new:5".to_vec()));
    // The TCP service on the same port number, framed onto UDP.
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.write_all(b"\x00\x014").unwrap();
    let mut answer = [0u8; 7];
    tcp.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"\x00\x05new:4");
    assert!(relay.stop().success(), "{}", relay.log());
}

/// Starts `args` (a vsplice command line) under `systemd-socket-activate --datagram` with a
/// UDP socket on 127.0.0.1:`port`; the activator execs vsplice at the first datagram.
fn activated_udp(port: u16, args: &[&str]) -> Relay {
    let mut command = common::debs::socket_activate();
    command
        .arg("--datagram")
        .arg("-l")
        .arg(format!("127.0.0.1:{port}"))
        .arg(common::vsplice_bin())
        .args(args);
    Relay::spawn_command(command, &[])
}

#[test]
fn a_udp_socket_passed_by_systemd_serves_sessions_on_the_command_line_and_in_serve() {
    let backend = udp_answerer(b"");
    let dir = Scratch::new("serve-udp-activated");
    let config = dir.path("vsplice.toml");
    std::fs::write(
        &config,
        format!(
            "[[service]]\nname = \"dns\"\nlisten = \"ACCEPT-FD:3,fork\"\n\
             connect = \"UDP:127.0.0.1:{backend}\"\nallow = [\"127.0.0.1/32\"]\n"
        ),
    )
    .unwrap();
    let target = format!("UDP:127.0.0.1:{backend}");
    for args in [
        vec!["ACCEPT-FD:3,fork,allow=127.0.0.1/32", target.as_str()],
        vec!["serve", "--config", config.to_str().unwrap()],
    ] {
        let port = free_port();
        let mut relay = activated_udp(port, &args);
        // The first datagram wakes the activator, which execs vsplice on the same socket.
        // (Until the activator binds, a datagram meets a closed port: asked again.)
        let first = client("127.0.0.1", port);
        let deadline = Instant::now() + LONG;
        while ask(&first, b"first", Duration::from_millis(200)).as_deref() != Some(b"first") {
            assert!(Instant::now() < deadline, "{args:?}: {}", relay.log());
        }
        senders_at_once(port, 20, 900, &relay);
        assert_eq!(
            ask(&client("127.0.0.2", port), b"x", Duration::from_secs(1)),
            None,
            "outside the allow list: {args:?}"
        );
        relay.wait_for_log("refused by the allow list", LONG);
        assert!(relay.stop().success(), "{args:?}: {}", relay.log());
    }
}
