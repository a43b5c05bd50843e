//! The server side of an HTTP CONNECT tunnel (`CONNECT host:port HTTP/1.1`) up to the
//! request, as a pure function of the bytes received: [`parse`] reads the request head with
//! `httparse`, checks the method, the authority form of the target and, when the address
//! requires it, `Proxy-Authorization: Basic`; [`response`] builds the answer once the dial
//! has an outcome.
//!
//! The head is bounded ([`MAX_HEAD`], 8 KiB, and 64 header lines): a client that has not
//! finished its head within that many bytes gets 400. Bytes after the head's blank line
//! belong to the tunnel and are never consumed. Everything that is not a well-formed CONNECT
//! gets 400, so the only answers are 200, 400, 403, 407, 502 and 504.

use base64::Engine as _;

use super::auth::Credentials;
use super::target::{Target, check_name};

/// The longest request head accepted, blank line included.
pub(crate) const MAX_HEAD: usize = 8 * 1024;
/// The most header lines a head may have.
const MAX_HEADERS: usize = 64;

/// The answers a proxy gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Established,
    BadRequest,
    Forbidden,
    AuthRequired,
    BadGateway,
    GatewayTimeout,
}

impl Status {
    pub(crate) fn code(self) -> u16 {
        match self {
            Status::Established => 200,
            Status::BadRequest => 400,
            Status::Forbidden => 403,
            Status::AuthRequired => 407,
            Status::BadGateway => 502,
            Status::GatewayTimeout => 504,
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Status::Established => "Connection established",
            Status::BadRequest => "Bad Request",
            Status::Forbidden => "Forbidden",
            Status::AuthRequired => "Proxy Authentication Required",
            Status::BadGateway => "Bad Gateway",
            Status::GatewayTimeout => "Gateway Timeout",
        }
    }
}

/// The response head for `status`. Anything but 200 closes the connection.
pub(crate) fn response(status: Status) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {} {}\r\n", status.code(), status.reason());
    match status {
        Status::Established => {}
        Status::AuthRequired => out.push_str(
            "Proxy-Authenticate: Basic realm=\"vsplice\"\r\nContent-Length: 0\r\nConnection: close\r\n",
        ),
        _ => out.push_str("Content-Length: 0\r\nConnection: close\r\n"),
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// What the bytes received so far say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// The head has not ended yet: read more.
    NeedMore,
    /// A CONNECT for `target`; its head was `consumed` bytes.
    Connect { consumed: usize, target: Target },
    /// Answer `status` and close; `why` is for the log.
    Refuse { status: Status, why: String },
}

fn bad(why: impl Into<String>) -> Parsed {
    Parsed::Refuse {
        status: Status::BadRequest,
        why: why.into(),
    }
}

/// Parses `host:port` or `[v6]:port`.
fn authority(text: &str) -> Result<Target, String> {
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| "CONNECT target without a port".to_string())?;
    let port: u16 = port
        .parse()
        .map_err(|_| "CONNECT target with a bad port".to_string())?;
    let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6
            .parse::<std::net::Ipv6Addr>()
            .map_err(|_| "CONNECT target with a bad IPv6 address".to_string())?
            .to_string(),
        None => {
            let name = check_name(host.as_bytes())?;
            match name.parse::<std::net::Ipv4Addr>() {
                Ok(ip) => ip.to_string(),
                Err(_) => name,
            }
        }
    };
    Ok(Target { host, port })
}

/// Whether `value` is `Basic base64(user:password)` for `credentials`.
fn authorized(value: &[u8], credentials: &Credentials) -> bool {
    let text = String::from_utf8_lossy(value);
    let mut words = text.split_ascii_whitespace();
    let (Some(scheme), Some(token), None) = (words.next(), words.next(), words.next()) else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return false;
    }
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(token) else {
        return false;
    };
    let Some(colon) = decoded.iter().position(|&b| b == b':') else {
        return false;
    };
    credentials.check(&decoded[..colon], &decoded[colon + 1..])
}

/// Looks at the bytes received and not yet consumed.
pub(crate) fn parse(input: &[u8], credentials: Option<&Credentials>) -> Parsed {
    let window = &input[..input.len().min(MAX_HEAD)];
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let consumed = match request.parse(window) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if input.len() >= MAX_HEAD => {
            return bad(format!("request head longer than {MAX_HEAD} bytes"));
        }
        Ok(httparse::Status::Partial) => return Parsed::NeedMore,
        Err(e) => return bad(format!("malformed request: {e}")),
    };
    let method = request.method.unwrap_or("");
    if method != "CONNECT" {
        return bad(format!(
            "method \"{}\" (only CONNECT)",
            method.escape_debug()
        ));
    }
    let target = match authority(request.path.unwrap_or("")) {
        Ok(t) => t,
        Err(why) => return bad(why),
    };
    if let Some(credentials) = credentials {
        let ok = request.headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case("proxy-authorization") && authorized(h.value, credentials)
        });
        if !ok {
            return Parsed::Refuse {
                status: Status::AuthRequired,
                why: "no valid Proxy-Authorization".into(),
            };
        }
    }
    Parsed::Connect { consumed, target }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> Credentials {
        Credentials {
            user: b"u".to_vec(),
            password: b"p:w".to_vec(),
        }
    }

    fn status_of(p: Parsed) -> u16 {
        match p {
            Parsed::Refuse { status, .. } => status.code(),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_connect_names_its_target_and_leaves_the_tunnel_bytes() {
        let req = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n\x16\x03";
        assert_eq!(
            parse(req, None),
            Parsed::Connect {
                consumed: req.len() - 2,
                target: Target {
                    host: "example.com".into(),
                    port: 443
                }
            }
        );
    }

    #[test]
    fn ipv6_and_ipv4_targets_are_literals() {
        let Parsed::Connect { target, .. } = parse(b"CONNECT [::1]:80 HTTP/1.1\r\n\r\n", None)
        else {
            panic!()
        };
        assert_eq!((target.host.as_str(), target.port), ("::1", 80));
        let Parsed::Connect { target, .. } = parse(b"CONNECT 10.0.0.1:5432 HTTP/1.0\r\n\r\n", None)
        else {
            panic!()
        };
        assert_eq!(target.ip(), Some("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn every_prefix_of_a_head_asks_for_more() {
        let req = b"CONNECT a.b:1 HTTP/1.1\r\nX: y\r\n\r\n";
        for n in 0..req.len() {
            assert_eq!(parse(&req[..n], None), Parsed::NeedMore, "{n}");
        }
    }

    #[test]
    fn anything_but_a_well_formed_connect_is_a_400() {
        for req in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"CONNECT example.com HTTP/1.1\r\n\r\n",
            b"CONNECT example.com:99999 HTTP/1.1\r\n\r\n",
            b"CONNECT ex\x00ample.com:1 HTTP/1.1\r\n\r\n",
            b"CONNECT [zz]:1 HTTP/1.1\r\n\r\n",
            b"CONNECT a:1 HTTP/9\r\n\r\n",
            b"\x05\x01\x00",
        ] {
            assert_eq!(status_of(parse(req, None)), 400, "{req:?}");
        }
    }

    #[test]
    fn a_head_past_8_kib_is_a_400() {
        let mut req = b"CONNECT a.b:1 HTTP/1.1\r\nX: ".to_vec();
        req.resize(MAX_HEAD, b'y');
        assert_eq!(status_of(parse(&req, None)), 400);
        req.truncate(MAX_HEAD - 1);
        assert_eq!(parse(&req, None), Parsed::NeedMore);
    }

    #[test]
    fn proxy_authorization_basic_is_checked() {
        let good = "CONNECT a.b:1 HTTP/1.1\r\nProxy-Authorization: Basic dTpwOnc=\r\n\r\n";
        assert!(matches!(
            parse(good.as_bytes(), Some(&creds())),
            Parsed::Connect { .. }
        ));
        for req in [
            "CONNECT a.b:1 HTTP/1.1\r\n\r\n",
            "CONNECT a.b:1 HTTP/1.1\r\nProxy-Authorization: Basic dTpwOng=\r\n\r\n",
            "CONNECT a.b:1 HTTP/1.1\r\nProxy-Authorization: Bearer dTpwOnc=\r\n\r\n",
            "CONNECT a.b:1 HTTP/1.1\r\nProxy-Authorization: Basic !!\r\n\r\n",
        ] {
            assert_eq!(
                status_of(parse(req.as_bytes(), Some(&creds()))),
                407,
                "{req}"
            );
        }
    }

    #[test]
    fn responses_are_complete_heads() {
        assert_eq!(
            response(Status::Established),
            b"HTTP/1.1 200 Connection established\r\n\r\n"
        );
        let r = String::from_utf8(response(Status::AuthRequired)).unwrap();
        assert!(r.starts_with("HTTP/1.1 407 ") && r.contains("Proxy-Authenticate: Basic"));
        assert!(r.ends_with("\r\n\r\n"));
        for s in [
            Status::Forbidden,
            Status::BadGateway,
            Status::GatewayTimeout,
        ] {
            let r = String::from_utf8(response(s)).unwrap();
            assert!(r.starts_with(&format!("HTTP/1.1 {} ", s.code())), "{r}");
        }
    }
}
