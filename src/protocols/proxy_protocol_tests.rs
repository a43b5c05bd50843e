//! The PROXY protocol on byte literals: the spec's examples, vsplice's own TLV, every way a
//! header can be bad, and 10,000 generated malformed headers.

use super::*;
use proptest::prelude::*;

fn inet(text: &str) -> SockAddr {
    SockAddr::Inet(text.parse().unwrap())
}

fn origin(src: SockAddr, dst: SockAddr) -> Origin {
    Origin {
        source: src,
        destination: Some(dst),
        credentials: None,
    }
}

fn done(bytes: &[u8]) -> Header {
    match parse(bytes) {
        Parsed::Done(h) => h,
        other => panic!("{bytes:?}: {other:?}"),
    }
}

fn reason(bytes: &[u8]) -> &'static str {
    match parse(bytes) {
        Parsed::Error { reason, .. } => reason,
        other => panic!("{bytes:?}: expected an error, got {other:?}"),
    }
}

#[test]
fn v1_lines_of_the_spec_parse_to_their_client() {
    // doc/proxy-protocol.txt, 2.1: "PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"
    let worst = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\nGET /";
    let h = done(worst);
    assert_eq!(h.len, 56);
    assert_eq!(
        h.origin,
        Some(origin(
            inet("255.255.255.255:65535"),
            inet("255.255.255.255:65535")
        ))
    );
    // The spec's longest TCP6 line: 104 bytes.
    let f = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
    let line = format!("PROXY TCP6 {f} {f} 65535 65535\r\n");
    assert_eq!(line.len(), 104);
    let h = done(line.as_bytes());
    assert_eq!(h.origin.unwrap().source, inet(&format!("[{f}]:65535")));
}

#[test]
fn v1_tcp6_and_unknown_lines() {
    let h = done(b"PROXY TCP6 2001:db8::1 ::1 51000 443\r\n");
    assert_eq!(h.origin.unwrap().source, inet("[2001:db8::1]:51000"));
    let h = done(b"PROXY UNKNOWN\r\n");
    assert_eq!((h.len, h.origin), (15, None));
    let h = done(b"PROXY UNKNOWN ffff:f...:ffff ffff:f...:ffff 65535 65535\r\n");
    assert_eq!(h.origin, None);
}

#[test]
fn v1_headers_that_break_a_rule_are_refused_with_their_reason() {
    assert_eq!(reason(b"GET / HTTP/1.1\r\n\r\n"), "bad-signature");
    assert_eq!(reason(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"), "bad-v1");
    assert_eq!(reason(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rx"), "bad-v1");
    assert_eq!(reason(b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"), "bad-v1");
    assert_eq!(reason(b"PROXY TCP4 ::1 ::1 1 2\r\n"), "bad-v1");
    assert_eq!(reason(b"PROXY TCP6 1.2.3.4 1.2.3.4 1 2\r\n"), "bad-v1");
    assert_eq!(reason(b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n"), "bad-v1");
    assert_eq!(reason(b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n"), "bad-v1");
    assert_eq!(reason(b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n"), "bad-v1");
    assert_eq!(reason(b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n"), "bad-v1");
    assert_eq!(reason(b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n"), "bad-family");
    let mut long = b"PROXY UNKNOWN ".to_vec();
    long.resize(V1_MAX, b'x');
    assert_eq!(reason(&long), "too-long");
    // 107 bytes with the CRLF at the very end is the longest line allowed.
    let mut longest = b"PROXY UNKNOWN ".to_vec();
    longest.resize(V1_MAX - 2, b'x');
    longest.extend_from_slice(b"\r\n");
    assert_eq!(done(&longest).len, V1_MAX);
}

#[test]
fn every_prefix_of_a_header_asks_for_more() {
    let headers = [
        b"PROXY TCP4 192.0.2.1 198.51.100.2 51000 80\r\n".to_vec(),
        encode(
            ProxyVersion::V2,
            Some(&origin(inet("192.0.2.1:51000"), inet("198.51.100.2:80"))),
            &Extras {
                crc: true,
                unique_id: Some(b"id-1".to_vec()),
            },
        ),
    ];
    for header in headers {
        for cut in 1..header.len() {
            assert_eq!(parse(&header[..cut]), Parsed::NeedMore, "{cut}");
        }
        assert_eq!(done(&header).len, header.len());
    }
}

#[test]
fn v2_examples_decode_to_their_client() {
    // A PROXY over TCP4 header as HAProxy's send-proxy-v2 writes it (the spec's layout,
    // section 2.2): 192.168.1.10:40000 -> 10.0.0.1:443.
    let mut bytes = V2_SIGNATURE.to_vec();
    bytes.extend_from_slice(&[0x21, 0x11, 0x00, 0x0c]);
    bytes.extend_from_slice(&[192, 168, 1, 10, 10, 0, 0, 1, 0x9c, 0x40, 0x01, 0xbb]);
    bytes.extend_from_slice(b"payload");
    let h = done(&bytes);
    assert_eq!(h.len, 28);
    assert_eq!(
        h.origin,
        Some(origin(inet("192.168.1.10:40000"), inet("10.0.0.1:443")))
    );
    // LOCAL (a health check): accepted, no client declared, addresses skipped.
    let mut local = V2_SIGNATURE.to_vec();
    local.extend_from_slice(&[0x20, 0x11, 0x00, 0x0c]);
    local.extend_from_slice(&[0; 12]);
    assert_eq!(done(&local).origin, None);
    // UNSPEC without vsplice's TLV: nothing declared.
    let mut unspec = V2_SIGNATURE.to_vec();
    unspec.extend_from_slice(&[0x21, 0x00, 0x00, 0x00]);
    assert_eq!(done(&unspec).origin, None);
}

#[test]
fn v2_round_trips_every_family_vsplice_writes() {
    let creds = PeerCredentials {
        pid: 4242,
        uid: 1000,
        gid: 100,
    };
    let cases = [
        origin(inet("192.0.2.1:51000"), inet("198.51.100.2:80")),
        origin(inet("[2001:db8::1]:51000"), inet("[2001:db8::2]:443")),
        origin(
            SockAddr::Vsock {
                cid: 3,
                port: 1_073_741_824,
            },
            SockAddr::Vsock { cid: 2, port: 5201 },
        ),
        Origin {
            source: SockAddr::Unix(PathBuf::new()),
            destination: Some(SockAddr::Unix("/run/app.sock".into())),
            credentials: Some(creds),
        },
    ];
    for o in cases {
        for crc in [false, true] {
            let extras = Extras {
                crc,
                unique_id: Some(b"vs-1".to_vec()),
            };
            let bytes = encode(ProxyVersion::V2, Some(&o), &extras);
            let h = done(&bytes);
            assert_eq!(h.len, bytes.len());
            assert_eq!(h.origin.as_ref(), Some(&o));
            assert_eq!(h.unique_id.as_deref(), Some(&b"vs-1"[..]));
        }
    }
}

#[test]
fn ipv4_mapped_clients_go_out_as_ipv4() {
    let o = origin(
        inet("[::ffff:192.0.2.1]:5000"),
        inet("[::ffff:127.0.0.1]:80"),
    );
    let v1 = encode(ProxyVersion::V1, Some(&o), &Extras::default());
    assert_eq!(v1, b"PROXY TCP4 192.0.2.1 127.0.0.1 5000 80\r\n");
    let v2 = encode(ProxyVersion::V2, Some(&o), &Extras::default());
    assert_eq!(v2[13], 0x11, "AF_INET, STREAM");
    assert_eq!(done(&v2).origin.unwrap().source, inet("192.0.2.1:5000"));
}

#[test]
fn vsock_clients_are_unspec_with_the_vsplice_tlv_byte_for_byte() {
    let o = origin(
        SockAddr::Vsock { cid: 3, port: 1025 },
        SockAddr::Vsock { cid: 2, port: 80 },
    );
    let bytes = encode(ProxyVersion::V2, Some(&o), &Extras::default());
    let mut want = V2_SIGNATURE.to_vec();
    want.extend_from_slice(&[0x21, 0x00, 0x00, 20]);
    want.extend_from_slice(&[0xE3, 0x00, 17, 0x01]);
    want.extend_from_slice(&[0, 0, 0, 3, 0, 0, 4, 1, 0, 0, 0, 2, 0, 0, 0, 80]);
    assert_eq!(bytes, want);
    assert_eq!(
        encode(ProxyVersion::V1, Some(&o), &Extras::default()),
        b"PROXY UNKNOWN\r\n"
    );
    assert_eq!(
        encode(ProxyVersion::V2, None, &Extras::default())[12],
        0x20,
        "no client known: LOCAL"
    );
}

#[test]
fn v2_headers_that_break_a_rule_are_refused_with_their_reason() {
    let good = encode(
        ProxyVersion::V2,
        Some(&origin(inet("192.0.2.1:1"), inet("192.0.2.2:2"))),
        &Extras {
            crc: true,
            unique_id: None,
        },
    );
    let with = |at: usize, byte: u8| {
        let mut b = good.clone();
        b[at] = byte;
        b
    };
    assert_eq!(reason(&with(12, 0x11)), "bad-version");
    assert_eq!(reason(&with(12, 0x22)), "bad-command");
    assert_eq!(reason(&with(13, 0x12)), "bad-family", "UDP");
    assert_eq!(reason(&with(13, 0x41)), "bad-family");
    assert_eq!(reason(&with(16, 10)), "bad-crc", "a changed address");
    let mut big = V2_SIGNATURE.to_vec();
    big.extend_from_slice(&[0x21, 0x11, 0x0f, 0xf1]);
    assert_eq!(reason(&big), "too-long", "known from the length alone");
    let mut short = V2_SIGNATURE.to_vec();
    short.extend_from_slice(&[0x21, 0x21, 0x00, 12]);
    short.extend_from_slice(&[0; 12]);
    assert_eq!(reason(&short), "bad-length");
    let mut tlv = V2_SIGNATURE.to_vec();
    tlv.extend_from_slice(&[0x21, 0x00, 0x00, 5, 0x04, 0x00, 0x09, 0, 0]);
    assert_eq!(reason(&tlv), "bad-tlv", "a TLV running past the header");
    let mut vs = V2_SIGNATURE.to_vec();
    vs.extend_from_slice(&[0x21, 0x00, 0x00, 5, 0xE3, 0x00, 0x02, 0x01, 0]);
    assert_eq!(reason(&vs), "bad-tlv", "a vsock TLV of the wrong length");
}

#[test]
fn accept_proxy_takes_exactly_the_header_from_what_it_is_shown() {
    let header = b"PROXY TCP4 192.0.2.1 198.51.100.2 51000 80\r\n";
    let mut m = AcceptProxy::default();
    assert!(matches!(m.feed(&header[..10]), Step::More));
    let mut rest = header[10..].to_vec();
    rest.extend_from_slice(b"GET / HTTP/1.0\r\n");
    match m.feed(&rest) {
        Step::Done { used, outcome } => {
            assert_eq!(used, header.len() - 10);
            assert_eq!(outcome.origin.unwrap().source, inet("192.0.2.1:51000"));
        }
        other => panic!("{other:?}"),
    }
    let mut m = AcceptProxy::default();
    assert!(matches!(m.feed(b"SSH-2.0-x\r\n"), Step::Fail(f) if f.reason == "bad-signature"));
    let v2 = encode(ProxyVersion::V2, None, &Extras::default());
    let mut m = AcceptProxy::default();
    assert_eq!(m.want(), 16);
    assert!(matches!(m.feed(&v2[..16]), Step::Done { used: 16, .. }));
}

fn valid_header() -> impl Strategy<Value = Vec<u8>> {
    (any::<[u8; 4]>(), any::<u16>(), any::<bool>(), any::<bool>()).prop_map(
        |(ip, port, v2, crc)| {
            let o = origin(
                SockAddr::Inet(SocketAddr::new(IpAddr::V4(ip.into()), port)),
                inet("10.0.0.1:80"),
            );
            let version = if v2 {
                ProxyVersion::V2
            } else {
                ProxyVersion::V1
            };
            let extras = Extras {
                crc: crc && v2,
                unique_id: None,
            };
            encode(version, Some(&o), &extras)
        },
    )
}

/// A good header broken in one way: cut short, a byte changed, bytes inserted, a length
/// field changed, the CRLF removed, or grown past the limits.
fn malformed() -> impl Strategy<Value = Vec<u8>> {
    (
        valid_header(),
        0usize..6,
        any::<usize>(),
        any::<u8>(),
        proptest::collection::vec(any::<u8>(), 1..64),
    )
        .prop_map(|(mut h, how, at, byte, junk)| {
            let i = at % h.len();
            match how {
                0 => h.truncate(i),
                1 => h[i] ^= byte | 1,
                2 => {
                    let tail = h.split_off(i);
                    h.extend_from_slice(&junk);
                    h.extend_from_slice(&tail);
                }
                3 if h.starts_with(&V2_SIGNATURE) => {
                    h[14] = byte;
                    h[15] = junk[0];
                }
                3 | 4 => {
                    h.retain(|&b| b != b'\r' && b != b'\n');
                    h.extend_from_slice(&junk);
                }
                _ => h.resize(V2_MAX + 1 + (at % 64), byte),
            }
            h
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]
    /// Any bytes give an answer without a panic, a header never claims more bytes than it
    /// was given nor more than the limits, and more is asked for only while the input is
    /// short of those limits.
    #[test]
    fn malformed_headers_end_in_an_error_or_a_bounded_header_never_a_panic(bytes in malformed()) {
        match parse(&bytes) {
            Parsed::Done(h) => {
                prop_assert!(h.len <= bytes.len());
                prop_assert!(h.len <= V2_MAX);
            }
            Parsed::NeedMore => prop_assert!(bytes.len() < V2_MAX),
            Parsed::Error { reason, .. } => prop_assert!(!reason.is_empty()),
        }
        let mut m = AcceptProxy::default();
        let mut fed = 0;
        let mut steps = 0;
        loop {
            steps += 1;
            prop_assert!(steps < 10_000);
            let n = m.want().min(bytes.len() - fed).min(7);
            if n == 0 { break; }
            match m.feed(&bytes[fed..fed + n]) {
                Step::More => fed += n,
                Step::Done { used, .. } => { prop_assert!(used <= n); break; }
                Step::Fail(_) => break,
                Step::Reply(_) => prop_assert!(false, "accept-proxy never replies"),
            }
            prop_assert!(fed <= V2_MAX);
        }
    }
}
