//! The values of the `bind=` option, typed by the address family they apply to: `host[:port]`
//! for TCP (the host checked to be something a resolver could look up, so a typo is blamed on
//! the option rather than on the whole address when the socket opens), a path for UNIX
//! sockets, `[cid][:port]` for vsock.

use std::path::PathBuf;

use super::kind::{Bind, KindTag};
use super::param::{parse_cid, parse_port, parse_vsock_port, strip_brackets};

/// Splits `bind=` values of the form `[host][:port]`, where host may be `[v6]`.
fn split_host_port(text: &str) -> (&str, Option<&str>) {
    if text.starts_with('[') {
        if let Some(end) = text.find(']') {
            let host = &text[..=end];
            let rest = &text[end + 1..];
            return (host, rest.strip_prefix(':'));
        }
    }
    match text.rsplit_once(':') {
        // More than one colon without brackets: a bare IPv6 address, no port.
        Some((host, _)) if host.contains(':') => (text, None),
        Some((host, port)) => (host, Some(port)),
        None => (text, None),
    }
}

pub(super) fn parse_bind(tag: KindTag, value: &str) -> Result<Bind, String> {
    match tag {
        KindTag::TcpConnect(_)
        | KindTag::TcpListen(_)
        | KindTag::UdpConnect(_)
        | KindTag::UdpListen(_) => {
            let (host, port) = split_host_port(value);
            let port = match port {
                Some(p) => Some(parse_port(p).map_err(|e| e.to_string())?),
                None => None,
            };
            let host = strip_brackets(host);
            if !is_host_syntax(host) {
                return Err(format!("\"{host}\" is not an IP address or host name"));
            }
            Ok(Bind::Inet {
                host: host.to_string(),
                port,
            })
        }
        KindTag::UnixConnect => {
            if value.is_empty() {
                return Err("empty path".into());
            }
            if value.contains('\0') {
                return Err("a socket path cannot hold a NUL byte".into());
            }
            Ok(Bind::Unix(PathBuf::from(value)))
        }
        _ => {
            let (cid, port) = match value.split_once(':') {
                Some((c, p)) => (c, Some(p)),
                None => (value, None),
            };
            let cid = if cid.is_empty() {
                None
            } else {
                Some(parse_cid(cid).map_err(|e| e.to_string())?)
            };
            let port = match port {
                Some(p) => Some(parse_vsock_port(p).map_err(|e| e.to_string())?),
                None => None,
            };
            Ok(Bind::Vsock { cid, port })
        }
    }
}

/// Whether `host` could be looked up at all: an IP address, or a name made of letters,
/// digits, `-`, `_` and dots (labels of 1-63 bytes, 253 in all). Anything else would only fail
/// later, when the socket is opened, in a message about the whole address.
fn is_host_syntax(host: &str) -> bool {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}
