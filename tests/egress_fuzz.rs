//! 10,000 generated malformed SOCKS5 and HTTP CONNECT requests against one running vsplice
//! proxy (truncated messages, wrong versions, lengths that lie, names of up to 255 bytes with
//! NUL bytes, unknown commands and address types, heads past 8 KiB, random bytes): each ends
//! its own connection, with the protocol's answer where it has one (SOCKS5 0x01/0x02/0x07/0x08
//! after the method reply, HTTP 400/403), never a success; the relay stays up and serves a good
//! request afterwards. Slow senders are cut at `connect-timeout` while others are served.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use common::{Relay, free_port};

/// What a client got back before its connection ended.
fn exchange(port: u16, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The relay may end the connection before it read everything: a failed write is fine.
    let _ = s.write_all(bytes);
    let _ = s.shutdown(Shutdown::Write);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(got),
            Err(e) => return Err(format!("the connection did not end: {e} (got {got:?})")),
        }
    }
}

/// A SOCKS5 case: the bytes, and the SOCKS5 reply codes that may answer its request (empty:
/// no request reply may come).
fn socks5_cases() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    let greeting = b"\x05\x01\x00".to_vec();
    let request = |cmd: u8, atyp: u8, addr: Vec<u8>, port: u16| {
        let mut r = vec![5, cmd, 0, atyp];
        r.extend(addr);
        r.extend(port.to_be_bytes());
        r
    };
    prop_oneof![
        // A wrong version: no reply at all.
        (
            any::<u8>().prop_filter("not 5", |v| *v != 5),
            prop::collection::vec(any::<u8>(), 0..40)
        )
            .prop_map(|(v, rest)| {
                let mut b = vec![v];
                b.extend(rest);
                (b, vec![])
            }),
        // A greeting whose method count lies (more methods than sent).
        (1u8..=255, prop::collection::vec(any::<u8>(), 0..20)).prop_filter_map(
            "short",
            |(n, methods)| (methods.len() < usize::from(n)).then(|| {
                let mut b = vec![5, n];
                b.extend(methods);
                (b, vec![])
            })
        ),
        // BIND, UDP ASSOCIATE, unknown commands: 0x07.
        (
            any::<u8>().prop_filter("not CONNECT", |c| *c != 1),
            any::<[u8; 4]>(),
            any::<u16>()
        )
            .prop_map(move |(cmd, ip, port)| {
                let mut b = greeting.clone();
                b.extend(request(cmd, 1, ip.to_vec(), port));
                (b, vec![7])
            }),
        // Unknown address types: 0x08.
        (
            any::<u8>().prop_filter("unknown", |a| ![1, 3, 4].contains(a)),
            any::<[u8; 6]>()
        )
            .prop_map(|(atyp, rest)| {
                let mut b = b"\x05\x01\x00\x05\x01\x00".to_vec();
                b.push(atyp);
                b.extend(rest);
                (b, vec![8])
            }),
        // Names of 0-255 bytes, NUL and other bytes included: refused (0x01 for a bad name,
        // 0x02 for a name or literal no entry allows), never connected.
        (prop::collection::vec(any::<u8>(), 0..=255), any::<u16>()).prop_map(|(name, port)| {
            let mut b = b"\x05\x01\x00\x05\x01\x00\x03".to_vec();
            b.push(name.len() as u8);
            b.extend(name);
            b.extend(port.to_be_bytes());
            (b, vec![1, 2])
        }),
        // A good request to a denied destination, cut anywhere: no request reply.
        (0usize..20).prop_map(|cut| {
            let full = b"\x05\x01\x00\x05\x01\x00\x03\x0bexample.com\x01\xbb";
            (full[..cut.min(full.len() - 1)].to_vec(), vec![])
        }),
        // Random bytes.
        prop::collection::vec(any::<u8>(), 0..600).prop_map(|b| (b, vec![0x01, 0x02, 0x07, 0x08])),
    ]
}

/// An HTTP case: the bytes, and the statuses that may answer them (empty: none).
fn http_cases() -> impl Strategy<Value = (Vec<u8>, Vec<u16>)> {
    prop_oneof![
        // Methods other than CONNECT, targets without a port or with NUL bytes: 400.
        ("[A-Z]{1,8}", "[ -~]{0,40}").prop_filter_map("not CONNECT", |(m, t)| {
            (m != "CONNECT").then(|| {
                (
                    format!("{m} {t} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes(),
                    vec![400],
                )
            })
        }),
        (prop::collection::vec(any::<u8>(), 0..80), any::<u16>()).prop_map(|(host, port)| {
            let mut b = b"CONNECT ".to_vec();
            b.extend(host);
            b.extend(format!(":{port} HTTP/1.1\r\n\r\n").into_bytes());
            (b, vec![400, 403])
        }),
        // A head past 8 KiB: 400.
        (8192usize..12000).prop_map(|n| {
            let mut b = b"CONNECT example.com:443 HTTP/1.1\r\nX: ".to_vec();
            b.resize(n, b'a');
            b.extend(b"\r\n\r\n");
            (b, vec![400])
        }),
        // A head cut short: no answer.
        (0usize..40).prop_map(|cut| {
            let full = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n";
            (full[..cut].to_vec(), vec![])
        }),
        // Random bytes with a blank line somewhere.
        (
            prop::collection::vec(any::<u8>(), 0..300),
            prop::collection::vec(any::<u8>(), 0..50)
        )
            .prop_map(|(a, b)| {
                let mut out = a;
                out.extend(b"\r\n\r\n");
                out.extend(b);
                (out, vec![400, 403])
            }),
    ]
}

/// A loopback server that counts connections: a malformed request must never reach it.
fn counting_server() -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let n = Arc::new(AtomicUsize::new(0));
    let count = n.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            count.fetch_add(1, Ordering::SeqCst);
            drop(s);
        }
    });
    (port, n)
}

fn start(kind: &str, origin: u16) -> (Relay, u16) {
    let port = free_port();
    let relay = Relay::start(&[
        &format!("TCP-LISTEN:{port},fork,bind=127.0.0.1"),
        &format!("{kind},dest=127.0.0.1:{origin},connect-timeout=3"),
    ]);
    (relay, port)
}

/// Requests sent (a proptest runner counts passing cases, not tries).
static CASES: AtomicUsize = AtomicUsize::new(0);
/// Of those, the ones that got a request reply (SOCKS5) or a status (HTTP).
static ANSWERED: AtomicUsize = AtomicUsize::new(0);

fn still_serves_socks5(port: u16, origin: u16) {
    let mut req = b"\x05\x01\x00\x05\x01\x00\x01\x7f\x00\x00\x01".to_vec();
    req.extend(origin.to_be_bytes());
    let got = exchange(port, &req).unwrap();
    assert_eq!(
        &got[..4],
        b"\x05\x00\x05\x00",
        "a good request after the fuzzing: {got:?}"
    );
}

#[test]
fn ten_thousand_malformed_requests_each_end_their_own_connection_with_the_right_answer() {
    let (origin, reached) = counting_server();
    let (socks, sp) = start("SOCKS5-SERVER", origin);
    let mut runner = TestRunner::new(Config::with_cases(5000));
    runner
        .run(&socks5_cases(), |(bytes, codes)| {
            CASES.fetch_add(1, Ordering::Relaxed);
            let got = exchange(sp, &bytes).map_err(TestCaseError::fail)?;
            ANSWERED.fetch_add(usize::from(got.len() > 2), Ordering::Relaxed);
            // A greeting without the "no authentication" method is refused with 05 FF.
            if got == b"\x05\xff" {
                return Ok(());
            }
            // After a method reply (05 00), at most one request reply: never a success.
            let reply = got.strip_prefix(b"\x05\x00").unwrap_or(&got);
            if !reply.is_empty() {
                prop_assert!(
                    reply.len() >= 2 && reply[0] == 5,
                    "reply {got:?} to {bytes:?}"
                );
                prop_assert!(codes.contains(&reply[1]), "reply {got:?} to {bytes:?}");
            }
            if bytes.first() != Some(&5) {
                prop_assert!(got.is_empty(), "a non-SOCKS5 client got {got:?}");
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(
        reached.load(Ordering::SeqCst),
        0,
        "a malformed request reached the network"
    );
    still_serves_socks5(sp, origin);
    let (http, hp) = start("HTTP-CONNECT-SERVER", origin);
    let mut runner = TestRunner::new(Config::with_cases(5000));
    runner
        .run(&http_cases(), |(bytes, statuses)| {
            CASES.fetch_add(1, Ordering::Relaxed);
            let got = exchange(hp, &bytes).map_err(TestCaseError::fail)?;
            ANSWERED.fetch_add(usize::from(!got.is_empty()), Ordering::Relaxed);
            let text = String::from_utf8_lossy(&got);
            if !got.is_empty() {
                let status: u16 = text
                    .strip_prefix("HTTP/1.1 ")
                    .and_then(|t| t.get(..3))
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0);
                prop_assert!(statuses.contains(&status), "{text:?} to {bytes:?}");
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(
        reached.load(Ordering::SeqCst),
        1,
        "a malformed request reached the network"
    );
    still_serves_socks5(sp, origin);
    assert_eq!(reached.load(Ordering::SeqCst), 2);
    let cases = CASES.load(Ordering::Relaxed);
    let answered = ANSWERED.load(Ordering::Relaxed);
    println!("{cases} malformed requests, each on its own connection; {answered} answered");
    assert!(cases >= 10_000, "{cases}");
    assert!(answered > cases / 3, "too few answers to check: {answered}");
    drop((socks, http));
}

#[test]
fn slow_senders_are_cut_at_connect_timeout_while_others_are_served() {
    let (origin, _) = counting_server();
    let port = free_port();
    let _relay = Relay::start(&[
        &format!("TCP-LISTEN:{port},fork,bind=127.0.0.1"),
        &format!("SOCKS5-SERVER,dest=127.0.0.1:{origin},connect-timeout=1"),
    ]);
    let slow: Vec<_> = (0..20)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let start = Instant::now();
                let mut cut = false;
                // One byte of a greeting every 300 ms: never a whole request in a second.
                for b in b"\x05\x01\x00\x05\x01\x00\x03\x0bexample.com" {
                    if s.write_all(&[*b]).is_err() {
                        cut = true;
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(300));
                }
                let mut rest = Vec::new();
                let ended = cut || matches!(s.read_to_end(&mut rest), Ok(_) | Err(_));
                (ended, start.elapsed())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    still_serves_socks5(port, origin);
    for t in slow {
        let (ended, _) = t.join().unwrap();
        assert!(ended);
    }
    still_serves_socks5(port, origin);
}
