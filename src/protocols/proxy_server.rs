//! The proxy addresses' prelude: [`ProxyServer`] runs a SOCKS5 ([`super::socks5`]) or HTTP
//! CONNECT ([`super::http_connect`]) handshake on the accepted socket, checks the requested
//! destination against the address's `dest=` list before anything is looked up, and yields the
//! dial target: a `TCP:` address that carries the list on, so the dial drops every resolved
//! address the list does not allow ([`crate::addr::dest`]). The answer to the request (SOCKS5
//! reply, HTTP status) is built from how that dial ended.
//!
//! Pure, like every prelude: it sees the bytes the driver peeked and says how many it took.
//! SOCKS5 asks for exactly what its current message still needs, so it never takes a byte past
//! the request; HTTP buffers its head (at most 8 KiB) and takes only the head's bytes of the
//! last peek. Failures carry the protocol's answer where it has one (0x07 for BIND, 400, 403,
//! 407) and a fixed reason, the metrics' `result` label.

use std::sync::Arc;

use super::auth::Credentials;
use super::http_connect::{self, Parsed, Status};
use super::prelude::{DialEnd, Failure, Outcome, Prelude, Step};
use super::socks5::{self, Reply, Socks5};
use super::target::{FailureClass, Target};
use crate::addr::{Address, Family, Kind, Options, ProxyOptions};

/// Which protocol, with its state.
#[derive(Debug)]
enum Protocol {
    Socks5(Socks5),
    Http,
}

/// One client's proxy handshake.
#[derive(Debug)]
pub(crate) struct ProxyServer {
    proxy: Arc<Address>,
    protocol: Protocol,
    credentials: Option<Credentials>,
    /// Bytes taken and not yet consumed by a whole message.
    buf: Vec<u8>,
}

/// The `result` labels a proxy request ends with (`vsplice_proxy_requests_total`).
pub(crate) const RESULTS: &[&str] = &[
    "connected",
    "denied",
    "dial_failed",
    "auth_failed",
    "bad_request",
    "unsupported",
    "timeout",
    "closed",
];

/// The `result` label of a request that prelude `prelude` ended with `result` (a failure's
/// reason or the dial's outcome); `None` for preludes that are not proxies.
pub(crate) fn result_label(prelude: &str, result: &str) -> Option<&'static str> {
    if !matches!(prelude, "socks5" | "http-connect") {
        return None;
    }
    Some(match RESULTS.iter().find(|r| **r == result) {
        Some(r) => r,
        None if result.ends_with("error") => "closed",
        None => "bad_request",
    })
}

fn fail(reason: &'static str, detail: impl Into<String>, reply: Vec<u8>) -> Step {
    Step::Fail(Failure::new(reason, detail).with_reply(reply))
}

impl ProxyServer {
    /// The handshake of proxy address `proxy` (`SOCKS5-SERVER` or `HTTP-CONNECT-SERVER`,
    /// its password loaded).
    pub(crate) fn new(proxy: Arc<Address>) -> ProxyServer {
        let credentials = match (&proxy.options.proxy.user, &proxy.options.proxy.password) {
            (Some(user), Some(password)) => Some(Credentials {
                user: user.as_bytes().to_vec(),
                password: password.0.clone(),
            }),
            _ => None,
        };
        let protocol = match proxy.kind {
            Kind::HttpConnectServer => Protocol::Http,
            _ => Protocol::Socks5(Socks5::new(credentials.clone())),
        };
        ProxyServer {
            proxy,
            protocol,
            credentials,
            buf: Vec::new(),
        }
    }

    /// The dial for `target`: `TCP:host:port`, resolved per request, each address tried in
    /// turn within `connect-timeout`, carrying the `dest=` list so the dial drops what it
    /// does not allow.
    fn target_address(&self, target: &Target) -> Address {
        let p = &self.proxy.options;
        Address {
            text: format!("TCP:{target}"),
            kind: Kind::TcpConnect {
                host: target.host.clone(),
                port: target.port,
                family: Family::Any,
            },
            options: Options {
                connect_timeout: Some(p.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT)),
                rcvbuf: p.rcvbuf,
                sndbuf: p.sndbuf,
                proxy: Box::new(ProxyOptions {
                    dest: p.proxy.dest.clone(),
                    ..ProxyOptions::default()
                }),
                ..Options::default()
            },
        }
    }

    /// A request was read: refused unless the list may allow it (no lookup, no connect
    /// otherwise), else the dial target.
    fn request(&self, used: usize, target: Target, denied: Vec<u8>) -> Step {
        let dest = self
            .proxy
            .options
            .proxy
            .dest
            .as_ref()
            .expect("a proxy has a dest list");
        if !dest.may_admit(&target.host, target.port) {
            return fail(
                "denied",
                format!("{target}: no dest= entry allows it"),
                denied,
            );
        }
        Step::Done {
            used,
            outcome: Outcome {
                origin: None,
                target: Some(Box::new(self.target_address(&target))),
            },
        }
    }

    fn feed_socks5(&mut self, bytes: &[u8]) -> Step {
        let Protocol::Socks5(machine) = &mut self.protocol else {
            unreachable!("called for SOCKS5 only")
        };
        self.buf.extend_from_slice(bytes);
        match machine.advance(&self.buf) {
            socks5::Step::NeedMore => Step::More,
            socks5::Step::Answer { consumed, answer } => {
                self.buf.drain(..consumed.min(self.buf.len()));
                Step::Reply(answer)
            }
            socks5::Step::Connect { consumed, target } => {
                // What this peek held past the request stays in the socket.
                let before = self.buf.len() - bytes.len();
                let used = consumed.saturating_sub(before).min(bytes.len());
                self.buf.clear();
                self.request(used, target, socks5::reply(Reply::NotAllowed, None))
            }
            socks5::Step::Refuse { answer, why } => {
                let reason = match answer.as_slice() {
                    [1, 1] => "auth_failed",
                    [5, 0xFF] => "unsupported",
                    [5, code, ..] if *code == Reply::CommandNotSupported as u8 => "unsupported",
                    [5, code, ..] if *code == Reply::AddressTypeNotSupported as u8 => "unsupported",
                    _ => "bad_request",
                };
                fail(reason, format!("SOCKS5: {why}"), answer)
            }
        }
    }

    fn feed_http(&mut self, bytes: &[u8]) -> Step {
        self.buf.extend_from_slice(bytes);
        match http_connect::parse(&self.buf, self.credentials.as_ref()) {
            Parsed::NeedMore => Step::More,
            Parsed::Connect { consumed, target } => {
                let before = self.buf.len() - bytes.len();
                let used = consumed.saturating_sub(before).min(bytes.len());
                self.buf.clear();
                self.request(used, target, http_connect::response(Status::Forbidden))
            }
            Parsed::Refuse { status, why } => {
                let reason = match status {
                    Status::AuthRequired => "auth_failed",
                    _ => "bad_request",
                };
                fail(
                    reason,
                    format!("HTTP CONNECT: {why}"),
                    http_connect::response(status),
                )
            }
        }
    }
}

/// How long a proxy's dial may take per address when `connect-timeout` is not given.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Prelude for ProxyServer {
    fn name(&self) -> &'static str {
        match self.protocol {
            Protocol::Socks5(_) => "socks5",
            Protocol::Http => "http-connect",
        }
    }

    fn want(&self) -> usize {
        match &self.protocol {
            Protocol::Socks5(machine) => machine.wanted(&self.buf),
            Protocol::Http => http_connect::MAX_HEAD.saturating_sub(self.buf.len()).max(1),
        }
    }

    fn feed(&mut self, bytes: &[u8]) -> Step {
        match self.protocol {
            Protocol::Socks5(_) => self.feed_socks5(bytes),
            Protocol::Http => self.feed_http(bytes),
        }
    }

    fn dialed(&mut self, end: DialEnd<'_>) -> Vec<u8> {
        match (&self.protocol, end) {
            (Protocol::Socks5(_), DialEnd::Connected { local }) => {
                let bound = local.and_then(|l| match l {
                    crate::sys::socket::SockAddr::Inet(a) => Some(*a),
                    _ => None,
                });
                socks5::reply(Reply::Succeeded, bound)
            }
            (Protocol::Http, DialEnd::Connected { .. }) => {
                http_connect::response(Status::Established)
            }
            (Protocol::Socks5(_), DialEnd::Failed { class, .. }) => socks5::reply(
                match class {
                    FailureClass::NotAllowed => Reply::NotAllowed,
                    FailureClass::Refused => Reply::ConnectionRefused,
                    FailureClass::TimedOut => Reply::TtlExpired,
                    FailureClass::Unreachable => Reply::HostUnreachable,
                    FailureClass::Other => Reply::GeneralFailure,
                },
                None,
            ),
            (Protocol::Http, DialEnd::Failed { class, .. }) => {
                http_connect::response(match class {
                    FailureClass::NotAllowed => Status::Forbidden,
                    FailureClass::TimedOut => Status::GatewayTimeout,
                    _ => Status::BadGateway,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy(text: &str) -> ProxyServer {
        ProxyServer::new(Arc::new(Address::parse(text).unwrap()))
    }

    fn failed(step: Step) -> Failure {
        match step {
            Step::Fail(f) => f,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn a_socks5_request_becomes_a_tcp_dial_that_carries_the_dest_list() {
        let mut p = proxy("SOCKS5-SERVER,dest=*.example.com:443,connect-timeout=2");
        assert_eq!(p.want(), 2);
        assert!(matches!(p.feed(b"\x05\x01"), Step::More));
        assert_eq!(p.want(), 1);
        assert!(matches!(p.feed(b"\x00"), Step::Reply(r) if r == b"\x05\x00"));
        let req = b"\x05\x01\x00\x03\x0fwww.example.com\x01\xbb";
        let Step::Done { used, outcome } = p.feed(req) else {
            panic!("no target")
        };
        assert_eq!(used, req.len());
        let target = outcome.target.unwrap();
        assert_eq!(target.text, "TCP:www.example.com:443");
        assert_eq!(
            target.options.connect_timeout,
            Some(std::time::Duration::from_secs(2))
        );
        assert!(
            target.options.proxy.dest.is_some(),
            "the dial filters what it resolves"
        );
    }

    #[test]
    fn a_denied_destination_is_answered_without_a_lookup() {
        let mut p = proxy("SOCKS5-SERVER,dest=*.example.com:443");
        p.feed(b"\x05\x01\x00");
        let f = failed(p.feed(b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x16"));
        assert_eq!((f.reason, f.reply[1]), ("denied", 0x02));
        let mut p = proxy("HTTP-CONNECT-SERVER,dest=*.example.com:443");
        let f = failed(p.feed(b"CONNECT example.com:443 HTTP/1.1\r\n\r\n"));
        assert_eq!(f.reason, "denied");
        assert!(f.reply.starts_with(b"HTTP/1.1 403 "));
    }

    #[test]
    fn an_http_head_split_over_peeks_leaves_the_tunnel_bytes_in_the_socket() {
        let mut p = proxy("HTTP-CONNECT-SERVER,dest=a.example:80");
        assert!(matches!(p.feed(b"CONNECT a.example:80 HT"), Step::More));
        let Step::Done { used, .. } = p.feed(b"TP/1.1\r\n\r\nEARLY") else {
            panic!()
        };
        assert_eq!(used, b"TP/1.1\r\n\r\n".len());
    }

    #[test]
    fn failed_dials_are_answered_with_the_matching_code() {
        for (class, socks, http) in [
            (FailureClass::NotAllowed, 0x02, 403),
            (FailureClass::Unreachable, 0x04, 502),
            (FailureClass::Refused, 0x05, 502),
            (FailureClass::TimedOut, 0x06, 504),
            (FailureClass::Other, 0x01, 502),
        ] {
            let end = || DialEnd::Failed { why: "x", class };
            assert_eq!(proxy("SOCKS5-SERVER,dest=a.b:1").dialed(end())[1], socks);
            let answer = proxy("HTTP-CONNECT-SERVER,dest=a.b:1").dialed(end());
            assert!(answer.starts_with(format!("HTTP/1.1 {http} ").as_bytes()));
        }
        let bound = crate::sys::socket::SockAddr::Inet("10.0.0.1:4000".parse().unwrap());
        let ok = proxy("SOCKS5-SERVER,dest=a.b:1").dialed(DialEnd::Connected {
            local: Some(&bound),
        });
        assert_eq!(ok, b"\x05\x00\x00\x01\x0a\x00\x00\x01\x0f\xa0");
    }

    #[test]
    fn bind_and_a_wrong_password_have_their_own_results() {
        let mut p = proxy("SOCKS5-SERVER,dest=a.b:1");
        p.feed(b"\x05\x01\x00");
        let f = failed(p.feed(b"\x05\x02\x00\x01\x01\x02\x03\x04\x00\x50"));
        assert_eq!((f.reason, f.reply[1]), ("unsupported", 0x07));
        let mut addr = Address::parse("SOCKS5-SERVER,dest=a.b:1,user=u,password-file=/x").unwrap();
        addr.options.proxy.password = Some(crate::addr::Secret(b"pw".to_vec()));
        let mut p = ProxyServer::new(Arc::new(addr));
        assert!(matches!(p.feed(b"\x05\x01\x02"), Step::Reply(_)));
        let f = failed(p.feed(b"\x01\x01u\x02px"));
        assert_eq!(
            (f.reason, f.reply.as_slice()),
            ("auth_failed", &b"\x01\x01"[..])
        );
        assert!(RESULTS.contains(&f.reason));
    }
}
