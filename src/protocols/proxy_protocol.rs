//! HAProxy's PROXY protocol (`doc/proxy-protocol.txt`), versions 1 and 2: the encoder
//! behind `send-proxy` and the incremental parser behind `accept-proxy`, pure functions on
//! byte slices.
//!
//! What vsplice writes for each kind of client ([`encode`]):
//!
//! - TCP: v1 `PROXY TCP4|TCP6 src dst sport dport\r\n`; v2 `PROXY` over AF_INET/AF_INET6,
//!   IPv4-mapped IPv6 addresses as AF_INET.
//! - vsock: v2 family AF_UNSPEC and vsplice's TLV [`PP2_TYPE_VSPLICE`] with subtype
//!   [`SUBTYPE_VSOCK`]: source CID, source port, destination CID, destination port, each a
//!   big-endian u32. (The protocol has no AF_VSOCK; 0xE0, 0xEA, 0xEC and 0xEE are taken by
//!   cloud vendors, so the type is 0xE3.) v1: `PROXY UNKNOWN\r\n`.
//! - UNIX: v2 AF_UNIX with both paths (108 bytes each, NUL padded) and the TLV with subtype
//!   [`SUBTYPE_CREDENTIALS`]: uid, gid, pid (SO_PEERCRED), big-endian u32. v1: `UNKNOWN`.
//! - no client known: v2 `LOCAL`, v1 `UNKNOWN`.
//!
//! Optional TLVs: `PP2_TYPE_UNIQUE_ID` (0x05, at most 128 bytes) and `PP2_TYPE_CRC32C` (0x03,
//! the CRC32c of the whole header with its own 4 bytes zero).
//!
//! The parser ([`parse`]) looks at the bytes received so far and says: more are needed (every
//! byte seen so far is part of a header), the header is whole (its length, the declared
//! [`Origin`]), or it is bad (a fixed `reason` word for metrics and a sentence). It detects the
//! version by its signature, as HAProxy does, and bounds what it reads: a v1 line at
//! [`V1_MAX`] bytes (the spec's 107), a v2 header, TLVs included, at [`V2_MAX`] (4 KiB).
//! [`AcceptProxy`] runs it as the engine's prelude.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use super::prelude::{Failure, Origin, Outcome, Prelude, Step};
use crate::addr::ProxyVersion;
use crate::sys::socket::{PeerCredentials, SockAddr};

/// The v2 signature.
pub(crate) const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 line, CRLF included (the spec's 107 bytes).
pub(crate) const V1_MAX: usize = 107;
/// The largest v2 header accepted, TLVs included.
pub(crate) const V2_MAX: usize = 4096;
/// vsplice's TLV type (application range 0xE0-0xEF, avoiding 0xE0, 0xEA, 0xEC, 0xEE).
pub(crate) const PP2_TYPE_VSPLICE: u8 = 0xE3;
/// Subtype: a vsock connection: source CID, source port, destination CID, destination port.
pub(crate) const SUBTYPE_VSOCK: u8 = 0x01;
/// Subtype: a UNIX client's credentials: uid, gid, pid.
pub(crate) const SUBTYPE_CREDENTIALS: u8 = 0x02;
pub(crate) const PP2_TYPE_CRC32C: u8 = 0x03;
pub(crate) const PP2_TYPE_UNIQUE_ID: u8 = 0x05;
/// The longest unique id the spec allows.
pub(crate) const UNIQUE_ID_MAX: usize = 128;
const UNIX_PATH_LEN: usize = 108;

/// What to put in a header besides the addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Extras {
    /// `PP2_TYPE_CRC32C` (v2 only).
    pub crc: bool,
    /// `PP2_TYPE_UNIQUE_ID` (v2 only; cut at 128 bytes).
    pub unique_id: Option<Vec<u8>>,
}

/// Canonical form of an inet address: IPv4-mapped IPv6 becomes IPv4.
fn canonical(addr: &SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Both inet ends in one family: IPv4 when both are, else both as IPv6. `None`: not inet.
fn inet_pair(origin: &Origin) -> Option<(SocketAddr, SocketAddr)> {
    let SockAddr::Inet(src) = &origin.source else {
        return None;
    };
    let src = canonical(src);
    let dst = match &origin.destination {
        Some(SockAddr::Inet(d)) => canonical(d),
        _ => SocketAddr::new(
            match src {
                SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            },
            0,
        ),
    };
    let v6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    Some(match (src, dst) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) => (src, dst),
        _ => (v6(src), v6(dst)),
    })
}

/// The header describing `origin` (`None`: no client known).
pub(crate) fn encode(version: ProxyVersion, origin: Option<&Origin>, extras: &Extras) -> Vec<u8> {
    match version {
        ProxyVersion::V1 => encode_v1(origin),
        ProxyVersion::V2 => encode_v2(origin, extras),
    }
}

fn encode_v1(origin: Option<&Origin>) -> Vec<u8> {
    match origin.and_then(inet_pair) {
        Some((src, dst)) => {
            let proto = if src.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {proto} {} {} {} {}\r\n",
                src.ip(),
                dst.ip(),
                src.port(),
                dst.port()
            )
            .into_bytes()
        }
        None => b"PROXY UNKNOWN\r\n".to_vec(),
    }
}

fn push_tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    out.push(kind);
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
}

fn unix_path(out: &mut Vec<u8>, addr: Option<&SockAddr>) {
    let mut field = [0u8; UNIX_PATH_LEN];
    if let Some(SockAddr::Unix(path)) = addr {
        use std::os::unix::ffi::OsStrExt;
        let bytes = path.as_os_str().as_bytes();
        let n = bytes.len().min(UNIX_PATH_LEN);
        field[..n].copy_from_slice(&bytes[..n]);
    }
    out.extend_from_slice(&field);
}

fn encode_v2(origin: Option<&Origin>, extras: &Extras) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&V2_SIGNATURE);
    let command = if origin.is_some() { 0x21 } else { 0x20 };
    out.push(command);
    out.extend_from_slice(&[0, 0, 0]); // family, length: set below
    let mut family = 0x00;
    if let Some(origin) = origin {
        if let Some((src, dst)) = inet_pair(origin) {
            match (src.ip(), dst.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    family = 0x11;
                    out.extend_from_slice(&s.octets());
                    out.extend_from_slice(&d.octets());
                }
                (s, d) => {
                    family = 0x21;
                    let v6 = |ip: IpAddr| match ip {
                        IpAddr::V4(ip) => ip.to_ipv6_mapped().octets(),
                        IpAddr::V6(ip) => ip.octets(),
                    };
                    out.extend_from_slice(&v6(s));
                    out.extend_from_slice(&v6(d));
                }
            }
            out.extend_from_slice(&src.port().to_be_bytes());
            out.extend_from_slice(&dst.port().to_be_bytes());
        } else {
            match &origin.source {
                SockAddr::Unix(_) => {
                    family = 0x31;
                    unix_path(&mut out, Some(&origin.source));
                    unix_path(&mut out, origin.destination.as_ref());
                }
                SockAddr::Vsock { cid, port } => {
                    let (dcid, dport) = match origin.destination {
                        Some(SockAddr::Vsock { cid, port }) => (cid, port),
                        _ => (0, 0),
                    };
                    let mut value = vec![SUBTYPE_VSOCK];
                    for n in [*cid, *port, dcid, dport] {
                        value.extend_from_slice(&n.to_be_bytes());
                    }
                    push_tlv(&mut out, PP2_TYPE_VSPLICE, &value);
                }
                SockAddr::Inet(_) => unreachable!("inet handled above"),
            }
        }
        if let Some(c) = origin.credentials {
            let mut value = vec![SUBTYPE_CREDENTIALS];
            for n in [c.uid, c.gid, c.pid as u32] {
                value.extend_from_slice(&n.to_be_bytes());
            }
            push_tlv(&mut out, PP2_TYPE_VSPLICE, &value);
        }
    }
    if let Some(id) = &extras.unique_id {
        push_tlv(
            &mut out,
            PP2_TYPE_UNIQUE_ID,
            &id[..id.len().min(UNIQUE_ID_MAX)],
        );
    }
    let crc_at = extras.crc.then(|| {
        push_tlv(&mut out, PP2_TYPE_CRC32C, &[0; 4]);
        out.len() - 4
    });
    out[13] = family;
    let len = (out.len() - 16) as u16;
    out[14..16].copy_from_slice(&len.to_be_bytes());
    if let Some(at) = crc_at {
        let crc = crc32c::crc32c(&out);
        out[at..at + 4].copy_from_slice(&crc.to_be_bytes());
    }
    out
}

/// A whole header, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    /// Its length in bytes: what follows is the client's stream.
    pub len: usize,
    /// The declared client; `None`: `LOCAL`, `UNKNOWN`, or an address family not carried.
    pub origin: Option<Origin>,
    pub unique_id: Option<Vec<u8>>,
}

/// What the bytes received so far are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// The start of a header: all of it belongs to the header; more is needed.
    NeedMore,
    Done(Header),
    /// Not a valid header: `reason` is a fixed word (`bad-signature`, `too-long`, ...).
    Error {
        reason: &'static str,
        detail: String,
    },
}

fn error(reason: &'static str, detail: impl Into<String>) -> Parsed {
    Parsed::Error {
        reason,
        detail: detail.into(),
    }
}

/// Parses the start of a connection's stream as a PROXY header (v1 or v2, by signature).
pub(crate) fn parse(bytes: &[u8]) -> Parsed {
    let v1 = b"PROXY ";
    if bytes.len() >= V2_SIGNATURE.len() && bytes.starts_with(&V2_SIGNATURE) {
        parse_v2(bytes)
    } else if bytes.len() >= v1.len() && bytes.starts_with(v1) {
        parse_v1(bytes)
    } else if V2_SIGNATURE.starts_with(bytes) || v1.starts_with(bytes) {
        Parsed::NeedMore
    } else {
        error("bad-signature", "no PROXY protocol signature")
    }
}

fn parse_v1(bytes: &[u8]) -> Parsed {
    let seen = &bytes[..bytes.len().min(V1_MAX)];
    let Some(cr) = seen.iter().position(|&b| b == b'\r' || b == b'\n') else {
        return if bytes.len() >= V1_MAX {
            error("too-long", format!("v1 line longer than {V1_MAX} bytes"))
        } else {
            Parsed::NeedMore
        };
    };
    if seen[cr] == b'\n' {
        return error("bad-v1", "v1 line ends without CR before LF");
    }
    match seen.get(cr + 1) {
        None if cr + 1 >= V1_MAX => {
            return error("too-long", format!("v1 line longer than {V1_MAX} bytes"));
        }
        None => return Parsed::NeedMore,
        Some(b'\n') => {}
        Some(_) => return error("bad-v1", "v1 line has a CR not followed by LF"),
    }
    let len = cr + 2;
    let Ok(line) = std::str::from_utf8(&seen[..cr]) else {
        return error("bad-v1", "v1 line is not text");
    };
    let fields: Vec<&str> = line.split(' ').collect();
    let done = |origin| {
        Parsed::Done(Header {
            len,
            origin,
            unique_id: None,
        })
    };
    match fields.as_slice() {
        ["PROXY", "UNKNOWN", ..] => done(None),
        ["PROXY", proto @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let v4 = *proto == "TCP4";
            let ip = |text: &str| -> Option<IpAddr> {
                if v4 {
                    text.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
                } else {
                    text.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
                }
            };
            let port = |text: &str| -> Option<u16> {
                let digits = !text.is_empty() && text.len() <= 5;
                let plain = text.bytes().all(|b| b.is_ascii_digit());
                let no_lead = text == "0" || !text.starts_with('0');
                (digits && plain && no_lead)
                    .then(|| text.parse().ok())
                    .flatten()
            };
            match (ip(src), ip(dst), port(sport), port(dport)) {
                (Some(s), Some(d), Some(sp), Some(dp)) => done(Some(Origin {
                    source: SockAddr::Inet(SocketAddr::new(s, sp)),
                    destination: Some(SockAddr::Inet(SocketAddr::new(d, dp))),
                    credentials: None,
                })),
                _ => error("bad-v1", format!("bad {proto} addresses or ports")),
            }
        }
        ["PROXY", proto, ..] if !proto.is_empty() && !["TCP4", "TCP6"].contains(proto) => {
            error("bad-family", "v1 protocol is not TCP4, TCP6 or UNKNOWN")
        }
        _ => error("bad-v1", "v1 line is not PROXY PROTO SRC DST SPORT DPORT"),
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn parse_v2(bytes: &[u8]) -> Parsed {
    if bytes.len() < 16 {
        return Parsed::NeedMore;
    }
    let (version, command) = (bytes[12] >> 4, bytes[12] & 0x0f);
    if version != 2 {
        return error("bad-version", format!("v2 version nibble {version}"));
    }
    if command > 1 {
        return error("bad-command", format!("v2 command {command}"));
    }
    let len = 16 + usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
    if len > V2_MAX {
        return error(
            "too-long",
            format!("v2 header of {len} bytes (at most {V2_MAX})"),
        );
    }
    if bytes.len() < len {
        return Parsed::NeedMore;
    }
    let header = &bytes[..len];
    let body = &header[16..];
    let family = header[13];
    if command == 0 {
        // LOCAL: the proxy's own connection (a health check); its addresses are ignored.
        return Parsed::Done(Header {
            len,
            origin: None,
            unique_id: None,
        });
    }
    let (need, source, destination) = match family {
        0x00 => (0, None, None),
        0x11 if body.len() >= 12 => {
            let ip = |b: &[u8]| IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]));
            let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
            let src = SockAddr::Inet(SocketAddr::new(ip(&body[0..4]), port(&body[8..10])));
            let dst = SockAddr::Inet(SocketAddr::new(ip(&body[4..8]), port(&body[10..12])));
            (12, Some(src), Some(dst))
        }
        0x21 if body.len() >= 36 => {
            let ip = |b: &[u8]| {
                let octets: [u8; 16] = b.try_into().expect("16 bytes");
                IpAddr::V6(Ipv6Addr::from(octets))
            };
            let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
            let src = SockAddr::Inet(SocketAddr::new(ip(&body[0..16]), port(&body[32..34])));
            let dst = SockAddr::Inet(SocketAddr::new(ip(&body[16..32]), port(&body[34..36])));
            (36, Some(src), Some(dst))
        }
        0x31 if body.len() >= 2 * UNIX_PATH_LEN => {
            let path = |b: &[u8]| {
                use std::os::unix::ffi::OsStrExt;
                let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
                PathBuf::from(std::ffi::OsStr::from_bytes(&b[..end]))
            };
            let src = SockAddr::Unix(path(&body[..UNIX_PATH_LEN]));
            let dst = SockAddr::Unix(path(&body[UNIX_PATH_LEN..2 * UNIX_PATH_LEN]));
            (2 * UNIX_PATH_LEN, Some(src), Some(dst))
        }
        0x11 | 0x21 | 0x31 => {
            return error(
                "bad-length",
                format!("v2 address block too short for family {family:#04x}"),
            );
        }
        other => return error("bad-family", format!("v2 family/transport {other:#04x}")),
    };
    let mut origin = source.map(|source| Origin {
        source,
        destination,
        credentials: None,
    });
    let mut unique_id = None;
    let mut tlvs = &body[need..];
    let mut at = 16 + need;
    while !tlvs.is_empty() {
        if tlvs.len() < 3 {
            return error("bad-tlv", "truncated TLV");
        }
        let kind = tlvs[0];
        let n = usize::from(u16::from_be_bytes([tlvs[1], tlvs[2]]));
        if tlvs.len() < 3 + n {
            return error("bad-tlv", format!("TLV {kind:#04x} runs past the header"));
        }
        let value = &tlvs[3..3 + n];
        match kind {
            PP2_TYPE_CRC32C => {
                if n != 4 {
                    return error("bad-tlv", "CRC32C TLV is not 4 bytes");
                }
                let mut zeroed = header.to_vec();
                zeroed[at + 3..at + 7].fill(0);
                if crc32c::crc32c(&zeroed) != be32(value) {
                    return error("bad-crc", "CRC32C does not match");
                }
            }
            PP2_TYPE_UNIQUE_ID => {
                if n > UNIQUE_ID_MAX {
                    return error("bad-tlv", "unique id longer than 128 bytes");
                }
                unique_id = Some(value.to_vec());
            }
            PP2_TYPE_VSPLICE => match value.first() {
                Some(&SUBTYPE_VSOCK) if n == 17 => {
                    let v = &value[1..];
                    if origin.is_none() {
                        origin = Some(Origin {
                            source: SockAddr::Vsock {
                                cid: be32(&v[0..4]),
                                port: be32(&v[4..8]),
                            },
                            destination: Some(SockAddr::Vsock {
                                cid: be32(&v[8..12]),
                                port: be32(&v[12..16]),
                            }),
                            credentials: None,
                        });
                    }
                }
                Some(&SUBTYPE_CREDENTIALS) if n == 13 => {
                    let v = &value[1..];
                    if let Some(o) = origin.as_mut() {
                        o.credentials = Some(PeerCredentials {
                            uid: be32(&v[0..4]),
                            gid: be32(&v[4..8]),
                            pid: be32(&v[8..12]) as i32,
                        });
                    }
                }
                Some(&SUBTYPE_VSOCK | &SUBTYPE_CREDENTIALS) | None => {
                    return error("bad-tlv", "vsplice TLV of the wrong length");
                }
                Some(_) => {}
            },
            _ => {}
        }
        tlvs = &tlvs[3 + n..];
        at += 3 + n;
    }
    Parsed::Done(Header {
        len,
        origin,
        unique_id,
    })
}

/// `accept-proxy` as a prelude: reads one header, yields the declared origin.
#[derive(Debug, Default)]
pub(crate) struct AcceptProxy {
    seen: Vec<u8>,
}

impl Prelude for AcceptProxy {
    fn name(&self) -> &'static str {
        "proxy"
    }

    fn want(&self) -> usize {
        let cap = if self.seen.starts_with(&V2_SIGNATURE) {
            match self.seen.get(14..16) {
                Some(n) => 16 + usize::from(u16::from_be_bytes([n[0], n[1]])),
                None => 16,
            }
        } else if self.seen.starts_with(b"PROXY ") {
            V1_MAX
        } else {
            16
        };
        cap.saturating_sub(self.seen.len()).max(1)
    }

    fn feed(&mut self, bytes: &[u8]) -> Step {
        let before = self.seen.len();
        self.seen.extend_from_slice(bytes);
        match parse(&self.seen) {
            Parsed::NeedMore => Step::More,
            Parsed::Done(header) => Step::Done {
                used: header.len - before,
                outcome: Outcome {
                    origin: header.origin,
                    target: None,
                },
            },
            Parsed::Error { reason, detail } => Step::Fail(Failure::new(reason, detail)),
        }
    }
}

#[cfg(test)]
#[path = "proxy_protocol_tests.rs"]
mod tests;
