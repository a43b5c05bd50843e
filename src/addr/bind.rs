//! `bind=` values: `[host][:port]` for TCP (a v6 host in brackets), a path for UNIX
//! clients, `[cid][:port]` for vsock, typed by the address they belong to.

use std::path::PathBuf;

use super::{Bind, KindTag, parse_cid, parse_port, parse_vsock_port, strip_brackets};

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
        KindTag::TcpConnect(_) | KindTag::TcpListen(_) => {
            let (host, port) = split_host_port(value);
            let port = match port {
                Some(p) => Some(parse_port(p).map_err(|e| e.to_string())?),
                None => None,
            };
            Ok(Bind::Inet {
                host: strip_brackets(host).to_string(),
                port,
            })
        }
        KindTag::UnixConnect => {
            if value.is_empty() {
                return Err("empty path".into());
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
