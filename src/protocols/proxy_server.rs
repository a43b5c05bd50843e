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
use crate::addr::{Address, Family, Kind, Options};

/// Which protocol, with its state.
#[derive(Debug)]
enum Protocol {
    Socks5(Socks5),
    Http,
}

/// One client's proxy handshake.
#[derive(Debug)]
pub struct ProxyServer {
    proxy: Arc<Address>,
    protocol: Protocol,
    credentials: Option<Credentials>,
    /// Bytes taken and not yet consumed by a whole message.
    buf: Vec<u8>,
}

/// The `result` labels a proxy request ends with (`vsplice_proxy_requests_total`).
pub const RESULTS: &[&str] = &[
    "connected",
    "denied",
    "dial_failed",
    "auth_failed",
    "bad_request",
    "unsupported",
    "timeout",
    "closed",
];

fn fail(reason: &'static str, detail: impl Into<String>, reply: Vec<u8>) -> Step {
    Step::Fail(Failure::new(reason, detail).with_reply(reply))
}

impl ProxyServer {
    /// The handshake of proxy address `proxy` (`SOCKS5-SERVER` or `HTTP-CONNECT-SERVER`,
    /// its password loaded).
    pub fn new(proxy: Arc<Address>) -> ProxyServer {
        let credentials = match (&proxy.options.user, &proxy.options.password) {
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
                dest: p.dest.clone(),
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
                target: Some(self.target_address(&target)),
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
pub const DEFAULT_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

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
