//! What a proxy client asks for: a host (a name, or an IP literal) and a port. Both proxy
//! protocols ([`super::socks5`], [`super::http_connect`]) end their request phase with one,
//! and the destination allow list decides on it before anything is looked up or dialed.
//!
//! A name is kept as the client spelt it but checked here, once, for both protocols: 1-255
//! bytes of letters, digits, `-`, `_` and `.`, so no NUL, space, `:` or control byte a
//! client sends can reach a resolver, a log line or an allow-list comparison.

use std::fmt;
use std::net::IpAddr;

/// The longest host name accepted (SOCKS5 carries at most 255 bytes; DNS names are shorter).
pub(crate) const MAX_NAME: usize = 255;

/// A requested destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// An IP literal (without brackets) or a checked host name.
    pub host: String,
    pub port: u16,
}

impl Target {
    /// The IP address the host is, when it is a literal.
    pub(crate) fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip() {
            Some(IpAddr::V6(v6)) => write!(f, "[{v6}]:{}", self.port),
            _ => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

/// How a dial for a proxy client failed, in the classes its answer tells apart (SOCKS5
/// reply codes, HTTP status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// No resolved address was allowed by the `dest=` list.
    NotAllowed,
    /// ECONNREFUSED.
    Refused,
    /// The connect (or the lookup) ran past `connect-timeout`.
    TimedOut,
    /// The name did not resolve, or no route (EHOSTUNREACH, ENETUNREACH).
    Unreachable,
    Other,
}

/// Checks a host name a client sent: 1-255 bytes of `[A-Za-z0-9._-]`, not starting with `-`
/// or `.`. An IP literal written as a name passes too (and is then treated as that address).
pub(crate) fn check_name(name: &[u8]) -> Result<String, String> {
    if name.is_empty() {
        return Err("empty host name".into());
    }
    if name.len() > MAX_NAME {
        return Err(format!(
            "host name of {} bytes (at most {MAX_NAME})",
            name.len()
        ));
    }
    let ok = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    if let Some(bad) = name.iter().find(|&&b| !ok(b)) {
        return Err(format!("host name with byte 0x{bad:02x}"));
    }
    if matches!(name[0], b'-' | b'.') {
        return Err("host name starting with '-' or '.'".into());
    }
    Ok(String::from_utf8(name.to_vec()).expect("checked ASCII"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_nul_space_colon_or_control_bytes_are_refused() {
        for bad in [
            &b"a\0b"[..],
            b"a b",
            b"a:80",
            b"a\nb",
            b"",
            b"-a",
            b".a",
            b"\xffa",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(check_name(b"Example.COM").unwrap(), "Example.COM");
        assert_eq!(check_name(b"_srv.x-y.z").unwrap(), "_srv.x-y.z");
        assert!(check_name(&[b'a'; 255]).is_ok());
        assert!(check_name(&[b'a'; 256]).is_err());
    }

    #[test]
    fn a_v6_target_prints_in_brackets() {
        let t = Target {
            host: "::1".into(),
            port: 80,
        };
        assert_eq!(t.to_string(), "[::1]:80");
        assert_eq!(t.ip(), Some("::1".parse().unwrap()));
        let t = Target {
            host: "a.b".into(),
            port: 1,
        };
        assert_eq!(t.to_string(), "a.b:1");
        assert_eq!(t.ip(), None);
    }
}
