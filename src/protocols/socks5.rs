//! The server side of SOCKS5 (RFC 1928) up to the CONNECT request, with the username and
//! password method of RFC 1929, as a pure state machine.
//!
//! The machine never reads or writes a socket. A driver keeps the bytes the client sent and
//! not yet consumed, hands all of them to [`Socks5::advance`] after every read, and does what
//! the [`Step`] says: read more, write an answer and drop the bytes it consumed, dial the
//! requested [`Target`], or write a refusal and close. Bytes after the request belong to the
//! relayed stream and are never consumed here. Every message has a bound (greeting 257 bytes,
//! authentication 513, request 262), so a driver never needs more than [`MAX_MESSAGE`]
//! buffered; a message that lies about its lengths just waits for bytes that do not come,
//! and the driver's handshake timeout ends it.
//!
//! Only CONNECT is served: BIND and UDP ASSOCIATE (and anything else) get reply 0x07. The
//! reply to a CONNECT is built by [`reply`] once the dial has an outcome.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::auth::Credentials;
use super::target::{Target, check_name};

/// The largest message a client sends before the relay starts (an authentication request
/// with a 255-byte user and a 255-byte password).
#[expect(
    dead_code,
    reason = "the bound the module doc promises; the prelude driver peeks at most its own 4 KiB"
)]
pub(crate) const MAX_MESSAGE: usize = 3 + 255 + 255;

const VERSION: u8 = 5;
const AUTH_VERSION: u8 = 1;
const METHOD_NONE: u8 = 0x00;
const METHOD_PASSWORD: u8 = 0x02;
const METHOD_UNACCEPTABLE: u8 = 0xFF;
const CMD_CONNECT: u8 = 1;
const ATYP_V4: u8 = 1;
const ATYP_NAME: u8 = 3;
const ATYP_V6: u8 = 4;

/// The reply codes of RFC 1928, section 6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Reply {
    Succeeded = 0x00,
    GeneralFailure = 0x01,
    NotAllowed = 0x02,
    #[expect(
        dead_code,
        reason = "RFC 1928's table in full: an unreachable network is answered 0x04 too"
    )]
    NetworkUnreachable = 0x03,
    HostUnreachable = 0x04,
    ConnectionRefused = 0x05,
    TtlExpired = 0x06,
    CommandNotSupported = 0x07,
    AddressTypeNotSupported = 0x08,
}

/// The reply to a request: `code`, and the address the relay connected from (`bound`; zeros
/// when there is none).
pub(crate) fn reply(code: Reply, bound: Option<SocketAddr>) -> Vec<u8> {
    let mut out = vec![VERSION, code as u8, 0];
    match bound.unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)) {
        SocketAddr::V4(a) => {
            out.push(ATYP_V4);
            out.extend_from_slice(&a.ip().octets());
        }
        SocketAddr::V6(a) => {
            out.push(ATYP_V6);
            out.extend_from_slice(&a.ip().octets());
        }
    }
    out.extend_from_slice(&bound.map_or(0, |b| b.port()).to_be_bytes());
    out
}

/// What the driver does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Not a whole message yet: read more.
    NeedMore,
    /// Drop the first `consumed` bytes, write `answer`, and advance again.
    Answer { consumed: usize, answer: Vec<u8> },
    /// The CONNECT request: drop `consumed` bytes, decide on `target`, dial it, then write
    /// [`reply`]. Bytes after these belong to the stream.
    Connect { consumed: usize, target: Target },
    /// Write `answer` (possibly empty), then close. `why` is for the log.
    Refuse { answer: Vec<u8>, why: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Greeting,
    Auth,
    Request,
    Done,
}

/// One client's handshake.
#[derive(Debug, Clone)]
pub(crate) struct Socks5 {
    credentials: Option<Credentials>,
    state: State,
}

fn refuse(answer: Vec<u8>, why: impl Into<String>) -> Step {
    Step::Refuse {
        answer,
        why: why.into(),
    }
}

impl Socks5 {
    /// A handshake that requires `credentials` when given (RFC 1929), none otherwise.
    pub(crate) fn new(credentials: Option<Credentials>) -> Socks5 {
        Socks5 {
            credentials,
            state: State::Greeting,
        }
    }

    /// How many more bytes the current message needs at least, given the bytes received and
    /// not yet consumed (at least 1 while it is not whole): a driver that reads no more than
    /// this never takes a byte past the message, so nothing after the request is read.
    pub(crate) fn wanted(&self, input: &[u8]) -> usize {
        let at = |i: usize| input.get(i).map(|&b| usize::from(b));
        let whole = match self.state {
            State::Greeting => at(1).map_or(2, |n| 2 + n),
            State::Auth => match (at(1), at(1).and_then(|u| at(2 + u))) {
                (None, _) => 2,
                (Some(u), None) => 3 + u,
                (Some(u), Some(p)) => 3 + u + p,
            },
            State::Request => match at(3) {
                None => 5,
                Some(1) => 10,
                Some(4) => 22,
                Some(3) => at(4).map_or(5, |n| 7 + n),
                Some(_) => 4,
            },
            State::Done => 0,
        };
        whole.saturating_sub(input.len()).max(1)
    }

    /// Looks at the bytes received and not yet consumed.
    pub(crate) fn advance(&mut self, input: &[u8]) -> Step {
        let step = match self.state {
            State::Greeting => self.greeting(input),
            State::Auth => self.auth(input),
            State::Request => self.request(input),
            State::Done => refuse(Vec::new(), "advanced after the request"),
        };
        if matches!(step, Step::Refuse { .. } | Step::Connect { .. }) {
            self.state = State::Done;
        }
        step
    }

    fn greeting(&mut self, input: &[u8]) -> Step {
        let [version, count, ..] = *input else {
            return match input.first() {
                Some(&v) if v != VERSION => refuse(Vec::new(), format!("not SOCKS5 (version {v})")),
                _ => Step::NeedMore,
            };
        };
        if version != VERSION {
            return refuse(Vec::new(), format!("not SOCKS5 (version {version})"));
        }
        let len = 2 + usize::from(count);
        let Some(methods) = input.get(2..len) else {
            return Step::NeedMore;
        };
        let wanted = if self.credentials.is_some() {
            METHOD_PASSWORD
        } else {
            METHOD_NONE
        };
        if !methods.contains(&wanted) {
            return refuse(
                vec![VERSION, METHOD_UNACCEPTABLE],
                if wanted == METHOD_PASSWORD {
                    "client offers no username/password authentication"
                } else {
                    "client offers no method without authentication"
                },
            );
        }
        self.state = if wanted == METHOD_PASSWORD {
            State::Auth
        } else {
            State::Request
        };
        Step::Answer {
            consumed: len,
            answer: vec![VERSION, wanted],
        }
    }

    fn auth(&mut self, input: &[u8]) -> Step {
        let failed = vec![AUTH_VERSION, 1];
        let Some(&version) = input.first() else {
            return Step::NeedMore;
        };
        if version != AUTH_VERSION {
            return refuse(failed, format!("authentication version {version}"));
        }
        let Some(&ulen) = input.get(1) else {
            return Step::NeedMore;
        };
        let ulen = usize::from(ulen);
        let Some(&plen) = input.get(2 + ulen) else {
            return Step::NeedMore;
        };
        let len = 3 + ulen + usize::from(plen);
        if input.len() < len {
            return Step::NeedMore;
        }
        let (user, password) = (&input[2..2 + ulen], &input[3 + ulen..len]);
        let credentials = self
            .credentials
            .as_ref()
            .expect("auth only with credentials");
        if !credentials.check(user, password) {
            return refuse(
                failed,
                format!(
                    "wrong user or password (user \"{}\")",
                    String::from_utf8_lossy(user).escape_debug()
                ),
            );
        }
        self.state = State::Request;
        Step::Answer {
            consumed: len,
            answer: vec![AUTH_VERSION, 0],
        }
    }

    fn request(&mut self, input: &[u8]) -> Step {
        let [version, command, _reserved, atyp, ..] = *input else {
            return match input.first() {
                Some(&v) if v != VERSION => refuse(
                    reply(Reply::GeneralFailure, None),
                    format!("request of version {v}"),
                ),
                _ => Step::NeedMore,
            };
        };
        if version != VERSION {
            return refuse(
                reply(Reply::GeneralFailure, None),
                format!("request of version {version}"),
            );
        }
        if command != CMD_CONNECT {
            let name = match command {
                2 => "BIND".to_string(),
                3 => "UDP ASSOCIATE".to_string(),
                n => format!("command {n}"),
            };
            return refuse(
                reply(Reply::CommandNotSupported, None),
                format!("{name} is not supported (CONNECT only)"),
            );
        }
        let (host, end) = match atyp {
            ATYP_V4 => match input.get(4..8) {
                Some(b) => (Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string(), 8),
                None => return Step::NeedMore,
            },
            ATYP_V6 => match input.get(4..20) {
                Some(b) => {
                    let octets: [u8; 16] = b.try_into().expect("16 bytes");
                    (Ipv6Addr::from(octets).to_string(), 20)
                }
                None => return Step::NeedMore,
            },
            ATYP_NAME => {
                let Some(&len) = input.get(4) else {
                    return Step::NeedMore;
                };
                let end = 5 + usize::from(len);
                let Some(name) = input.get(5..end) else {
                    return Step::NeedMore;
                };
                match check_name(name) {
                    // A literal written as a name is that address (IP entries decide on it).
                    Ok(name) => match name.parse::<IpAddr>() {
                        Ok(ip) => (ip.to_string(), end),
                        Err(_) => (name, end),
                    },
                    Err(why) => return refuse(reply(Reply::GeneralFailure, None), why),
                }
            }
            other => {
                return refuse(
                    reply(Reply::AddressTypeNotSupported, None),
                    format!("address type {other}"),
                );
            }
        };
        let Some(port) = input.get(end..end + 2) else {
            return Step::NeedMore;
        };
        Step::Connect {
            consumed: end + 2,
            target: Target {
                host,
                port: u16::from_be_bytes([port[0], port[1]]),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> Option<Credentials> {
        Some(Credentials {
            user: b"u".to_vec(),
            password: b"pw".to_vec(),
        })
    }

    fn answer(consumed: usize, answer: &[u8]) -> Step {
        Step::Answer {
            consumed,
            answer: answer.to_vec(),
        }
    }

    fn connect(consumed: usize, host: &str, port: u16) -> Step {
        Step::Connect {
            consumed,
            target: Target {
                host: host.into(),
                port,
            },
        }
    }

    fn refused_with(step: Step) -> Vec<u8> {
        match step {
            Step::Refuse { answer, .. } => answer,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_connect_by_name_without_authentication_names_its_target() {
        let mut s = Socks5::new(None);
        assert_eq!(s.advance(b"\x05\x01\x00"), answer(3, b"\x05\x00"));
        let req = b"\x05\x01\x00\x03\x0bexample.com\x01\xbbGET";
        assert_eq!(s.advance(req), connect(18, "example.com", 443));
        assert_eq!(
            &req[18..],
            b"GET",
            "bytes after the request stay the stream's"
        );
    }

    #[test]
    fn ipv4_and_ipv6_requests_carry_their_literal() {
        let mut s = Socks5::new(None);
        s.advance(b"\x05\x02\x02\x00");
        assert_eq!(
            s.advance(b"\x05\x01\x00\x01\x7f\x00\x00\x01\x1f\x90"),
            connect(10, "127.0.0.1", 8080)
        );
        let mut s = Socks5::new(None);
        s.advance(b"\x05\x01\x00");
        let mut req = b"\x05\x01\x00\x04".to_vec();
        req.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        req.extend_from_slice(&[0, 80]);
        assert_eq!(s.advance(&req), connect(22, "::1", 80));
    }

    #[test]
    fn a_literal_sent_as_a_name_is_treated_as_the_address() {
        let mut s = Socks5::new(None);
        s.advance(b"\x05\x01\x00");
        assert_eq!(
            s.advance(b"\x05\x01\x00\x03\x09127.0.0.1\x00\x50"),
            connect(16, "127.0.0.1", 80)
        );
    }

    #[test]
    fn every_prefix_of_a_message_asks_for_more() {
        let greeting = b"\x05\x02\x00\x02";
        let req = b"\x05\x01\x00\x03\x03abc\x00\x50";
        for n in 0..greeting.len() {
            assert_eq!(Socks5::new(None).advance(&greeting[..n]), Step::NeedMore);
        }
        for n in 0..req.len() {
            let mut s = Socks5::new(None);
            s.advance(greeting);
            assert_eq!(s.advance(&req[..n]), Step::NeedMore, "{n}");
        }
    }

    #[test]
    fn reading_what_it_wants_never_takes_a_byte_past_a_message() {
        let conversation: &[&[u8]] = &[
            b"\x05\x02\x00\x02",
            b"\x01\x01u\x02pw",
            b"\x05\x01\x00\x03\x03abc\x00\x50",
        ];
        let mut s = Socks5::new(creds());
        for message in conversation {
            let mut buf = Vec::new();
            loop {
                let want = s.wanted(&buf);
                assert!(buf.len() + want <= message.len(), "wants past the message");
                buf.extend_from_slice(&message[buf.len()..buf.len() + want]);
                match s.advance(&buf) {
                    Step::NeedMore => continue,
                    Step::Answer { consumed, .. } | Step::Connect { consumed, .. } => {
                        assert_eq!(consumed, message.len());
                        break;
                    }
                    Step::Refuse { why, .. } => panic!("{why}"),
                }
            }
        }
    }

    #[test]
    fn bind_and_udp_associate_get_command_not_supported() {
        for cmd in [2u8, 3, 9] {
            let mut s = Socks5::new(None);
            s.advance(b"\x05\x01\x00");
            let req = [5, cmd, 0, 1, 1, 2, 3, 4, 0, 80];
            assert_eq!(refused_with(s.advance(&req))[1], 0x07, "command {cmd}");
        }
    }

    #[test]
    fn an_unknown_address_type_gets_0x08() {
        let mut s = Socks5::new(None);
        s.advance(b"\x05\x01\x00");
        assert_eq!(refused_with(s.advance(b"\x05\x01\x00\x05xx"))[1], 0x08);
    }

    #[test]
    fn a_name_with_a_nul_byte_or_of_length_zero_is_refused() {
        for req in [
            &b"\x05\x01\x00\x03\x03a\0c\x00\x50"[..],
            b"\x05\x01\x00\x03\x00\x00\x50",
        ] {
            let mut s = Socks5::new(None);
            s.advance(b"\x05\x01\x00");
            assert_eq!(refused_with(s.advance(req))[1], 0x01);
        }
    }

    #[test]
    fn a_wrong_version_is_refused_without_a_reply() {
        assert_eq!(refused_with(Socks5::new(None).advance(b"\x04\x01")), b"");
        assert_eq!(refused_with(Socks5::new(None).advance(b"G")), b"");
    }

    #[test]
    fn a_client_without_the_required_method_gets_ff() {
        assert_eq!(
            refused_with(Socks5::new(creds()).advance(b"\x05\x01\x00")),
            b"\x05\xff"
        );
        assert_eq!(
            refused_with(Socks5::new(None).advance(b"\x05\x01\x02")),
            b"\x05\xff"
        );
        assert_eq!(
            refused_with(Socks5::new(None).advance(b"\x05\x00")),
            b"\x05\xff"
        );
    }

    #[test]
    fn username_and_password_are_checked() {
        let mut s = Socks5::new(creds());
        assert_eq!(s.advance(b"\x05\x02\x00\x02"), answer(4, b"\x05\x02"));
        assert_eq!(s.advance(b"\x01\x01u\x02pw"), answer(6, b"\x01\x00"));
        assert_eq!(
            s.advance(b"\x05\x01\x00\x01\x0a\x00\x00\x01\x15\x38"),
            connect(10, "10.0.0.1", 5432)
        );
        let mut s = Socks5::new(creds());
        s.advance(b"\x05\x01\x02");
        assert_eq!(refused_with(s.advance(b"\x01\x01u\x02px")), b"\x01\x01");
        let mut s = Socks5::new(creds());
        s.advance(b"\x05\x01\x02");
        assert_eq!(refused_with(s.advance(b"\x02\x01u\x02pw")), b"\x01\x01");
    }

    #[test]
    fn replies_carry_the_bound_address() {
        assert_eq!(
            reply(Reply::Succeeded, Some("10.1.2.3:4660".parse().unwrap())),
            b"\x05\x00\x00\x01\x0a\x01\x02\x03\x12\x34"
        );
        assert_eq!(
            reply(Reply::NotAllowed, None),
            b"\x05\x02\x00\x01\0\0\0\0\0\0"
        );
        let v6 = reply(Reply::Succeeded, Some("[::1]:1".parse().unwrap()));
        assert_eq!(v6.len(), 22);
        assert_eq!(v6[3], 4);
    }
}
