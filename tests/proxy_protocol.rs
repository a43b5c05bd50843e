//! The PROXY protocol end to end: vsplice's `send-proxy` read by HAProxy (Debian's
//! `haproxy`, unpacked by the test, logging the client it parsed), HAProxy's `send-proxy` and
//! `send-proxy-v2` read by vsplice's `accept-proxy`, a chain of two relays that keeps the
//! first client, `allow-source`, and bad headers (malformed, oversized, slow) that cost their
//! own connection only.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Relay, Scratch, free_port, payload, sha_hex};

/// A client on 127.0.0.2 (all of 127/8 is loopback), so its address differs from the relay's.
fn client_to(port: u16) -> TcpStream {
    try_client_to(port).unwrap()
}

fn try_client_to(port: u16) -> std::io::Result<TcpStream> {
    let socket = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Stream,
        nix::sys::socket::SockFlag::empty(),
        None,
    )
    .unwrap();
    let local = nix::sys::socket::SockaddrIn::new(127, 0, 0, 2, 0);
    nix::sys::socket::bind(std::os::fd::AsRawFd::as_raw_fd(&socket), &local).unwrap();
    let remote = nix::sys::socket::SockaddrIn::new(127, 0, 0, 1, port);
    nix::sys::socket::connect(std::os::fd::AsRawFd::as_raw_fd(&socket), &remote)?;
    let stream = TcpStream::from(socket);
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    Ok(stream)
}

/// Reads one v1 line (up to CRLF) from `s`, byte by byte.
fn read_v1_line(s: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        assert_eq!(s.read(&mut b).unwrap(), 1, "header cut short: {line:?}");
        line.push(b[0]);
        assert!(line.len() <= 107, "v1 line too long: {line:?}");
    }
    String::from_utf8(line).unwrap()
}

/// Sends `data` through `client`, half-closes, and returns what comes back.
fn round_trip(mut client: TcpStream, data: &[u8]) -> Vec<u8> {
    let writer = {
        let mut c = client.try_clone().unwrap();
        let data = data.to_vec();
        std::thread::spawn(move || {
            c.write_all(&data).unwrap();
            c.shutdown(std::net::Shutdown::Write).unwrap();
        })
    };
    let mut back = Vec::new();
    client.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    back
}

/// A backend that reads a PROXY v1 line, then echoes the stream back: returns the line.
fn v1_echo_backend(listener: TcpListener) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let line = read_v1_line(&mut s);
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        s.write_all(&rest).unwrap();
        line
    })
}

#[test]
fn a_chain_of_two_relays_gives_the_backend_the_first_clients_address_and_port() {
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend_port = backend.local_addr().unwrap().port();
    let served = v1_echo_backend(backend);
    let (pa, pb) = (free_port(), free_port());
    let _b = Relay::start(&[
        &format!("TCP-LISTEN:{pb},fork,accept-proxy"),
        &format!("TCP:127.0.0.1:{backend_port},send-proxy=v1"),
    ]);
    let _a = Relay::start(&[
        &format!("TCP-LISTEN:{pa},fork"),
        &format!("TCP:127.0.0.1:{pb},send-proxy=v2,proxy-crc,proxy-unique-id"),
    ]);
    let client = client_to(pa);
    let me = client.local_addr().unwrap();
    let data = payload(8 << 20, 7);
    let back = round_trip(client, &data.data);
    assert_eq!(
        sha_hex(&back),
        data.sha,
        "the stream after the headers is whole"
    );
    let line = served.join().unwrap();
    assert_eq!(
        line,
        format!("PROXY TCP4 127.0.0.2 127.0.0.1 {} {pa}\r\n", me.port()),
        "the first client, and the address it reached"
    );
}

/// Writes one connection's `bytes` to an `accept-proxy` relay and says how it ended.
fn send_header(port: u16, bytes: &[u8], then_wait: bool) -> std::io::Result<usize> {
    let mut c = TcpStream::connect(("127.0.0.1", port))?;
    c.set_read_timeout(Some(Duration::from_secs(30)))?;
    let _ = c.write_all(bytes);
    if !then_wait {
        let _ = c.shutdown(std::net::Shutdown::Write);
    }
    let mut buf = [0u8; 64];
    c.read(&mut buf)
}

#[test]
fn bad_headers_cost_their_connection_only_and_never_reach_the_backend() {
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend_port = backend.local_addr().unwrap().port();
    backend.set_nonblocking(true).unwrap();
    let port = free_port();
    let relay = Relay::start(&[
        &format!("TCP-LISTEN:{port},fork,accept-proxy,proxy-timeout=0.5"),
        &format!("TCP:127.0.0.1:{backend_port}"),
    ]);
    let mut oversized = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x10\x00".to_vec();
    oversized.resize(5000, 0);
    let mut long_v1 = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2".to_vec();
    long_v1.resize(200, b' ');
    let bad: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "plain HTTP",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            true,
        ),
        (
            "v1 without CRLF",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n".to_vec(),
            true,
        ),
        ("v1 over 107 bytes", long_v1, true),
        (
            "v1 bad port",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\nx".to_vec(),
            true,
        ),
        (
            "v2 wrong family",
            b"\r\n\r\n\0\r\nQUIT\n\x21\x51\x00\x00".to_vec(),
            true,
        ),
        ("v2 over 4 KiB", oversized, true),
        (
            "truncated, then closed",
            b"\r\n\r\n\0\r\nQU".to_vec(),
            false,
        ),
        ("slow: never whole", b"PROXY TCP4 1.2.3.4".to_vec(), true),
    ];
    for (what, bytes, wait) in &bad {
        let started = Instant::now();
        match send_header(port, bytes, *wait) {
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            other => panic!("{what}: expected a reset, got {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{what}: ended by the relay, not by the test's own timeout"
        );
        let dialed = backend.accept();
        assert!(
            dialed
                .as_ref()
                .is_err_and(|e| e.kind() == ErrorKind::WouldBlock),
            "{what}: the backend was dialed"
        );
    }
    for reason in [
        "bad-signature",
        "bad-v1",
        "too-long",
        "bad-family",
        "closed",
        "timeout",
    ] {
        relay.wait_for_log(&format!("({reason})"), Duration::from_secs(10));
    }
    // The relay is still up and serves a good header right after.
    backend.set_nonblocking(false).unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = backend.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        s.write_all(b"pong").unwrap();
        got
    });
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.write_all(b"PROXY TCP4 192.0.2.9 10.0.0.1 4321 80\r\nping")
        .unwrap();
    let back = round_trip(c, b"");
    assert_eq!(back, b"pong");
    assert_eq!(server.join().unwrap(), b"ping", "the header is not relayed");
    relay.wait_for_log("(192.0.2.9:4321 via 127.0.0.1:", Duration::from_secs(10));
}

#[test]
fn allow_source_checks_the_declared_client_and_allow_the_real_peer() {
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend_port = backend.local_addr().unwrap().port();
    let port = free_port();
    let _relay = Relay::start(&[
        &format!("TCP-LISTEN:{port},fork,accept-proxy,allow=127.0.0.0/8,allow-source=10.0.0.0/8"),
        &format!("TCP:127.0.0.1:{backend_port}"),
    ]);
    let refused = send_header(port, b"PROXY TCP4 192.0.2.1 10.0.0.1 1 2\r\n", true);
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.kind() == ErrorKind::ConnectionReset),
        "{refused:?}"
    );
    let server = std::thread::spawn(move || {
        let (mut s, _) = backend.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.write_all(b"PROXY TCP4 10.1.2.3 10.0.0.1 1 2\r\nok")
        .unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(server.join().unwrap(), b"ok");
}

#[test]
fn proxy_options_that_cannot_apply_fail_with_the_option_named() {
    let cases = [
        ("TCP:127.0.0.1:1,send-proxy=v3", "send-proxy"),
        ("TCP:127.0.0.1:1,send-proxy=v1,proxy-crc", "proxy-crc"),
        ("TCP:127.0.0.1:1,proxy-unique-id", "proxy-unique-id"),
        ("TCP:127.0.0.1:1,accept-proxy", "accept-proxy"),
    ];
    for (second, token) in cases {
        let out = Command::new(common::vsplice_bin())
            .args(["TCP-LISTEN:0", second])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{second}: {err}");
        assert!(err.contains(token), "{second}: {err}");
    }
    for args in [
        ["bench", "client", "TCP:127.0.0.1:1,send-proxy"],
        ["bench", "server", "TCP-LISTEN:0,accept-proxy"],
    ] {
        let out = Command::new(common::vsplice_bin())
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("not supported by the bench"),
            "{args:?}: {err}"
        );
    }
    for pair in [
        ["TCP:127.0.0.1:1,send-proxy", "TCP-LISTEN:0"],
        ["TCP:127.0.0.1:1", "TCP-LISTEN:0,accept-proxy"],
    ] {
        let out = Command::new(common::vsplice_bin())
            .args(pair)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{pair:?}: {err}");
        assert!(err.contains("only valid on the"), "{pair:?}: {err}");
    }
    let out = Command::new(common::vsplice_bin())
        .args(["TCP-LISTEN:0,allow-source=10.0.0.0/8", "TCP:127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("allow-source"));
}

// ---- HAProxy, the reference implementation ----

/// Debian's HAProxy, unpacked (never installed); `None` with a clear message when the
/// machine's Debian mirror cannot provide it.
fn haproxy() -> Option<Command> {
    // One test at a time fetches and unpacks the package.
    static FETCH: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = FETCH.lock().unwrap_or_else(|e| e.into_inner());
    match common::debs::tool("haproxy", "usr/sbin/haproxy") {
        Ok(cmd) => Some(cmd),
        Err(e) => {
            eprintln!("SKIPPED: haproxy from the Debian mirror is not available: {e}");
            None
        }
    }
}

/// HAProxy started on `config`, killed on drop; its stdout (the log) goes to a file.
struct HaProxy {
    child: Child,
    log: std::path::PathBuf,
    _dir: Scratch,
}

impl HaProxy {
    fn start(mut cmd: Command, config: &str) -> HaProxy {
        let dir = Scratch::new("haproxy");
        let cfg = dir.path("haproxy.cfg");
        std::fs::write(&cfg, config).unwrap();
        let log = dir.path("stdout.log");
        let child = cmd
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start haproxy");
        HaProxy {
            child,
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_for_log(&self, needle: &str) -> String {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < until,
                "haproxy never logged {needle:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_listening(port: u16) {
    let until = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

const HAPROXY_GLOBAL: &str = "global\n  log stdout format raw local0\ndefaults\n  mode tcp\n  log global\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n";

#[test]
fn haproxy_reads_vsplices_v1_and_v2_headers_and_logs_the_true_client() {
    let Some(_) = haproxy() else { return };
    for version in ["v1", "v2"] {
        let backend = TcpListener::bind("127.0.0.1:0").unwrap();
        let backend_port = backend.local_addr().unwrap().port();
        let hport = free_port();
        let config = format!(
            "{HAPROXY_GLOBAL}frontend f\n  bind 127.0.0.1:{hport} accept-proxy\n  log-format \"parsed-client=%ci:%cp\"\n  default_backend b\nbackend b\n  server s 127.0.0.1:{backend_port}\n"
        );
        let ha = HaProxy::start(haproxy().unwrap(), &config);
        wait_listening(hport);
        let vport = free_port();
        let _relay = Relay::start(&[
            &format!("TCP-LISTEN:{vport},fork"),
            &format!("TCP:127.0.0.1:{hport},send-proxy={version}"),
        ]);
        let server = std::thread::spawn(move || {
            // The probe of wait_listening may come through HAProxy too, empty: skip it.
            loop {
                let (mut s, _) = backend.accept().unwrap();
                let mut got = Vec::new();
                let _ = s.read_to_end(&mut got);
                if !got.is_empty() {
                    s.write_all(&got).unwrap();
                    break;
                }
            }
        });
        let client = client_to(vport);
        let me: SocketAddr = client.local_addr().unwrap();
        let data = payload(1 << 20, 3);
        let back = round_trip(client, &data.data);
        assert_eq!(sha_hex(&back), data.sha, "{version}");
        server.join().unwrap();
        ha.wait_for_log(&format!("parsed-client={me}"));
    }
}

#[test]
fn vsplice_accepts_haproxys_send_proxy_and_send_proxy_v2_and_passes_the_client_on() {
    let Some(_) = haproxy() else { return };
    for option in ["send-proxy", "send-proxy-v2"] {
        let backend = TcpListener::bind("127.0.0.1:0").unwrap();
        let backend_port = backend.local_addr().unwrap().port();
        let served = v1_echo_backend(backend);
        let vport = free_port();
        let relay = Relay::start(&[
            &format!("TCP-LISTEN:{vport},fork,accept-proxy"),
            &format!("TCP:127.0.0.1:{backend_port},send-proxy=v1"),
        ]);
        let hport = free_port();
        let config = format!(
            "{HAPROXY_GLOBAL}frontend f\n  bind 127.0.0.1:{hport}\n  default_backend b\nbackend b\n  server s 127.0.0.1:{vport} {option}\n"
        );
        let _ha = HaProxy::start(haproxy().unwrap(), &config);
        let until = Instant::now() + Duration::from_secs(20);
        let client = loop {
            if let Ok(c) = try_client_to(hport) {
                break c;
            }
            assert!(Instant::now() < until, "haproxy does not listen");
            std::thread::sleep(Duration::from_millis(50));
        };
        let me = client.local_addr().unwrap();
        let data = payload(1 << 20, 5);
        let back = round_trip(client, &data.data);
        assert_eq!(sha_hex(&back), data.sha, "{option}");
        let line = served.join().unwrap();
        assert!(
            line.starts_with(&format!(
                "PROXY TCP4 127.0.0.2 127.0.0.1 {} {hport}\r\n",
                me.port()
            )),
            "{option}: {line:?}"
        );
        relay.wait_for_log(&format!("({me} via 127.0.0.1:"), Duration::from_secs(10));
    }
}

#[test]
fn a_unix_clients_uid_gid_and_pid_reach_readmes_python_reader_in_the_v2_tlv() {
    let dir = Scratch::new("proxy-unix");
    let port = free_port();
    let (mut backend, mut out) = common::proxy_reader::spawn(port, &dir);
    let sock = dir.path("front.sock");
    let _relay = Relay::start(&[
        &format!("UNIX-LISTEN:{},fork", sock.display()),
        &format!("TCP:127.0.0.1:{port},send-proxy,proxy-crc"),
    ]);
    let mut client = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    client.write_all(b"hello from unix").unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let got: serde_json::Value = serde_json::from_str(&line).expect(&line);
    let me = [
        nix::unistd::getuid().as_raw(),
        nix::unistd::getgid().as_raw(),
        std::process::id(),
    ];
    assert_eq!(
        got["header"]["uid_gid_pid"],
        serde_json::json!(me),
        "{line}"
    );
    assert_eq!(got["rest"], "hello from unix", "{line}");
    let _ = backend.wait();
}

/// 400 generated broken headers, each on its own connection to one relay: a v2 header with a
/// CRC32C and one byte changed (signature, command, length, address, TLV, CRC), or
/// a v1 or v2 header cut short. Every one ends its connection with a reset, none dials the
/// backend, and a good header right after is served.
#[test]
fn four_hundred_generated_broken_headers_each_cost_their_connection_only() {
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend_port = backend.local_addr().unwrap().port();
    backend.set_nonblocking(true).unwrap();
    let (pa, pb) = (free_port(), free_port());
    // A relay writes the real thing (v2 with CRC32C, unique id) for the generator to break.
    let sample = TcpListener::bind("127.0.0.1:0").unwrap();
    let _writer = Relay::start(&[
        &format!("TCP-LISTEN:{pa},fork"),
        &format!(
            "TCP:127.0.0.1:{},send-proxy=v2,proxy-crc,proxy-unique-id",
            sample.local_addr().unwrap().port()
        ),
    ]);
    let _c = TcpStream::connect(("127.0.0.1", pa)).unwrap();
    let (mut s, _) = sample.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = [0u8; 16];
    s.read_exact(&mut head).unwrap();
    let mut v2 = head.to_vec();
    v2.resize(
        16 + usize::from(u16::from_be_bytes([head[14], head[15]])),
        0,
    );
    s.read_exact(&mut v2[16..]).unwrap();
    let v1 = b"PROXY TCP4 192.0.2.1 10.0.0.1 51000 80\r\n".to_vec();
    let relay = Relay::start(&[
        &format!("TCP-LISTEN:{pb},fork,accept-proxy,proxy-timeout=2"),
        &format!("TCP:127.0.0.1:{backend_port}"),
    ]);
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for i in 0..400 {
        let r = next();
        let broken = if i % 2 == 0 {
            let mut b = v2.clone();
            let mut at = (r % b.len() as u64) as usize;
            if at == b.len() - 7 {
                // The CRC TLV's type byte: changed, the CRC becomes an unknown TLV and the
                // header a good one without a checksum. Break the byte before it instead.
                at -= 1;
            }
            b[at] ^= ((r >> 32) as u8) | 1;
            b
        } else {
            let whole = if r % 3 == 0 { &v1 } else { &v2 };
            whole[..(r >> 8) as usize % whole.len()].to_vec()
        };
        match send_header(pb, &broken, false) {
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            other => panic!("#{i} {broken:?}: expected a reset, got {other:?}"),
        }
        let dialed = backend.accept();
        assert!(
            dialed.is_err_and(|e| e.kind() == ErrorKind::WouldBlock),
            "#{i} {broken:?}: the backend was dialed"
        );
    }
    backend.set_nonblocking(false).unwrap();
    let mut c = TcpStream::connect(("127.0.0.1", pb)).unwrap();
    c.write_all(&v2).unwrap();
    c.write_all(b"good").unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let (mut s, _) = backend.accept().unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"good", "{}", relay.log());
}
