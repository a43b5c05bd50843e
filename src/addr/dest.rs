//! Destination allow lists of the proxy addresses (`SOCKS5-SERVER`, `HTTP-CONNECT-SERVER`):
//! which hosts and ports a client may ask the relay to connect to. Entries (`dest=`, repeated)
//! are `HOST:PORT` or `HOST:FIRST-LAST`, where HOST is a name (`db.internal`), a wildcard
//! (`*.example.com`: any name below it, not the name itself) or an IP network (`10.0.0.0/8`,
//! `192.0.2.7`, `[fd00::]/8`).
//!
//! The decision has two steps, so that a denied request never reaches the network and DNS
//! cannot be used to reach what nobody allowed:
//!
//! - [`DestList::may_admit`], before any lookup: an IP literal must be inside a network
//!   entry; a name must match a name entry, or at least one network entry must name its
//!   port (the name may resolve into that network). Nothing else is looked up.
//! - [`DestList::admits`], for every address a name resolved to, before it is dialed: an
//!   address inside a network entry (with the port) is allowed; otherwise only a name that
//!   matched a name entry may take it, and never into the relay's own machine: loopback,
//!   unspecified, link-local (169.254.169.254, the cloud metadata service, is one), multicast,
//!   broadcast, or an address of one of the host's interfaces ([`is_internal`] and the caller's
//!   `is_own`). To reach those, an entry must name them as a network.
//!
//! Pure: the caller resolves names and reads the host's addresses.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;

use super::allow::{AllowRule, Peer};

/// The host part of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    /// A name, lower case, without a trailing dot.
    Name(String),
    /// `*.suffix`: stored as `.suffix`, lower case.
    Below(String),
    /// A network, as an allow-list entry.
    Net(AllowRule),
}

/// One `dest=` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestRule {
    host: Host,
    ports: RangeInclusive<u16>,
}

/// A non-empty destination allow list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestList {
    rules: Vec<DestRule>,
}

fn normal_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !name.starts_with(['.', '-'])
}

fn parse_ports(text: &str) -> Option<RangeInclusive<u16>> {
    let (a, b) = text.split_once('-').unwrap_or((text, text));
    let (a, b): (u16, u16) = (a.parse().ok()?, b.parse().ok()?);
    (a >= 1 && a <= b).then_some(a..=b)
}

/// Addresses a name entry never reaches: the machine itself and its link.
pub(crate) fn is_internal(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.octets()[0] == 0
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || v6.segments()[0] & 0xffc0 == 0xfe80
        }
    }
}

impl DestRule {
    /// Parses one entry; the message names it.
    pub fn parse(entry: &str) -> Result<DestRule, String> {
        let bad = |why: &str| format!("invalid dest entry \"{entry}\": {why}");
        let (host, ports) = entry
            .trim()
            .rsplit_once(':')
            .ok_or_else(|| bad("expected HOST:PORT or HOST:FIRST-LAST"))?;
        let ports = parse_ports(ports)
            .ok_or_else(|| bad("the port must be 1-65535, or a range FIRST-LAST of them"))?;
        let unbracketed = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let first = host.chars().next().unwrap_or(' ');
        let looks_ip = first.is_ascii_digit() && host.bytes().all(|b| !b.is_ascii_alphabetic())
            || host.contains(':')
            || host.starts_with('[');
        let host = if looks_ip {
            let rule = AllowRule::parse(unbracketed)
                .map_err(|_| bad("expected an IP address or network (10.0.0.0/8, [fd00::]/8)"))?;
            Host::Net(rule)
        } else if host == "*" {
            return Err(bad(
                "\"*\" alone would make an open proxy: name the domains (*.example.com)",
            ));
        } else if let Some(suffix) = host.strip_prefix("*.") {
            if !valid_name(suffix) || suffix.contains('*') {
                return Err(bad("expected *.DOMAIN"));
            }
            Host::Below(format!(".{}", normal_name(suffix)))
        } else if valid_name(host) {
            Host::Name(normal_name(host))
        } else {
            return Err(bad(
                "expected a host name, *.DOMAIN or an IP network (letters, digits, - _ . only)",
            ));
        };
        Ok(DestRule { host, ports })
    }

    fn covers_ip(&self, ip: IpAddr, port: u16) -> bool {
        match &self.host {
            Host::Net(rule) => {
                self.ports.contains(&port)
                    && AllowRule::permits_peer(rule, &Peer::Inet(ip.to_canonical()))
            }
            _ => false,
        }
    }

    fn matches_name(&self, name: &str, port: u16) -> bool {
        if !self.ports.contains(&port) {
            return false;
        }
        let name = normal_name(name);
        match &self.host {
            Host::Name(n) => *n == name,
            Host::Below(suffix) => name.len() > suffix.len() && name.ends_with(suffix.as_str()),
            Host::Net(_) => false,
        }
    }
}

impl fmt::Display for DestRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Name(n) => write!(f, "{n}")?,
            Host::Below(s) => write!(f, "*{s}")?,
            Host::Net(AllowRule::Net {
                addr: IpAddr::V6(a),
                prefix,
            }) => write!(f, "[{a}]/{prefix}")?,
            Host::Net(rule) => write!(f, "{rule}")?,
        }
        if self.ports.start() == self.ports.end() {
            write!(f, ":{}", self.ports.start())
        } else {
            write!(f, ":{}-{}", self.ports.start(), self.ports.end())
        }
    }
}

impl DestList {
    /// A list of parsed entries; `None` when there are none.
    pub fn from_rules(rules: Vec<DestRule>) -> Option<DestList> {
        (!rules.is_empty()).then_some(DestList { rules })
    }

    /// Parses every entry; `Ok(None)` for none.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Option<DestList>, String> {
        let rules = entries
            .iter()
            .map(|e| DestRule::parse(e.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(DestList::from_rules(rules))
    }

    pub fn rules(&self) -> &[DestRule] {
        &self.rules
    }

    /// Before any lookup: whether a request for `host` (a name or an IP literal) and `port`
    /// could be allowed at all. `false` ends the request without a lookup or a connect.
    pub fn may_admit(&self, host: &str, port: u16) -> bool {
        match host.parse::<IpAddr>() {
            Ok(ip) => self.rules.iter().any(|r| r.covers_ip(ip, port)),
            Err(_) => self.rules.iter().any(|r| {
                r.matches_name(host, port)
                    || matches!(r.host, Host::Net(_)) && r.ports.contains(&port)
            }),
        }
    }

    /// Whether `addr`, which the request for `host` resolved to (or is), may be dialed.
    /// `is_own` says whether an address is one of the host's own.
    pub fn admits(&self, host: &str, addr: SocketAddr, is_own: impl Fn(IpAddr) -> bool) -> bool {
        let (ip, port) = (addr.ip().to_canonical(), addr.port());
        if self.rules.iter().any(|r| r.covers_ip(ip, port)) {
            return true;
        }
        host.parse::<IpAddr>().is_err()
            && self.rules.iter().any(|r| r.matches_name(host, port))
            && !is_internal(ip)
            && !is_own(ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> DestList {
        DestList::parse(entries).unwrap().unwrap()
    }

    fn sa(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    const NOT_OWN: fn(IpAddr) -> bool = |_| false;

    #[test]
    fn entries_parse_and_print_back() {
        for (entry, shown) in [
            ("example.com:443", "example.com:443"),
            ("Example.COM.:443", "example.com:443"),
            ("*.example.com:443", "*.example.com:443"),
            ("10.0.0.0/8:5432", "10.0.0.0/8:5432"),
            ("10.1.2.3/8:5432", "10.0.0.0/8:5432"),
            ("192.0.2.7:80", "192.0.2.7/32:80"),
            ("[fd00::]/8:443", "[fd00::]/8:443"),
            ("[::1]:80", "[::1]/128:80"),
            ("::1:80", "[::1]/128:80"),
            ("api.internal:8000-8999", "api.internal:8000-8999"),
        ] {
            assert_eq!(
                DestRule::parse(entry).unwrap().to_string(),
                shown,
                "{entry}"
            );
        }
    }

    #[test]
    fn bad_entries_are_refused_with_the_entry_named() {
        for entry in [
            "example.com",
            "example.com:0",
            "example.com:70000",
            "example.com:9-8",
            "*:443",
            "*.*.com:1",
            "a b:1",
            "10.0.0.0/33:1",
            ":80",
            "ex\0ample:1",
        ] {
            let err = DestRule::parse(entry).unwrap_err();
            assert!(err.contains(&format!("\"{entry}\"")), "{err}");
        }
    }

    #[test]
    fn a_name_entry_matches_the_requested_name_and_port_only() {
        let l = list(&["example.com:443", "*.svc.test:8000-8999"]);
        assert!(l.may_admit("example.com", 443));
        assert!(l.may_admit("EXAMPLE.com.", 443));
        assert!(!l.may_admit("example.com", 80));
        assert!(!l.may_admit("www.example.com", 443));
        assert!(l.may_admit("a.svc.test", 8000));
        assert!(l.may_admit("a.b.svc.test", 8999));
        assert!(
            !l.may_admit("svc.test", 8000),
            "the wildcard is below the domain"
        );
        assert!(!l.may_admit("evilsvc.test", 8000));
        assert!(
            !l.may_admit("93.184.216.34", 443),
            "a literal needs a network entry"
        );
    }

    #[test]
    fn a_network_entry_matches_literals_and_what_names_resolve_to() {
        let l = list(&["10.0.0.0/8:5432"]);
        assert!(l.may_admit("10.9.9.9", 5432));
        assert!(!l.may_admit("11.0.0.1", 5432));
        assert!(!l.may_admit("10.9.9.9", 5433));
        assert!(
            l.may_admit("db.internal", 5432),
            "may resolve into the network"
        );
        assert!(
            !l.may_admit("db.internal", 80),
            "no entry has the port: no lookup"
        );
        assert!(l.admits("db.internal", sa("10.1.1.1:5432"), NOT_OWN));
        assert!(!l.admits("db.internal", sa("192.168.1.1:5432"), NOT_OWN));
        assert!(l.admits("10.1.1.1", sa("[::ffff:10.1.1.1]:5432"), NOT_OWN));
    }

    #[test]
    fn a_name_resolving_to_the_machine_itself_is_refused_unless_a_network_entry_names_it() {
        let l = list(&["*.example.com:80"]);
        assert!(l.admits("www.example.com", sa("93.184.216.34:80"), NOT_OWN));
        for internal in [
            "127.0.0.1:80",
            "127.9.9.9:80",
            "169.254.169.254:80",
            "0.0.0.0:80",
            "[::1]:80",
            "[::ffff:127.0.0.1]:80",
            "[fe80::1]:80",
            "224.0.0.1:80",
        ] {
            assert!(
                !l.admits("rebind.example.com", sa(internal), NOT_OWN),
                "{internal}"
            );
        }
        let own: IpAddr = "192.0.2.10".parse().unwrap();
        assert!(!l.admits("x.example.com", sa("192.0.2.10:80"), |ip| ip == own));
        let l = list(&["*.example.com:80", "127.0.0.0/8:80"]);
        assert!(l.admits("x.example.com", sa("127.0.0.1:80"), NOT_OWN));
    }

    #[test]
    fn an_ip_literal_never_passes_by_a_name_entry() {
        let l = list(&["localhost:80"]);
        assert!(!l.admits("127.0.0.1", sa("127.0.0.1:80"), NOT_OWN));
        assert!(!l.admits("localhost", sa("127.0.0.1:80"), NOT_OWN));
    }
}
