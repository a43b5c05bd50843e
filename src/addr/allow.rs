//! Allow lists: which peers a listener serves. An entry is a vsock peer CID or CID range
//! (`cid:3`, `cid:10-20`), an IP network (`10.1.0.0/16`, `::1`, `fd00::/8`) for TCP peers, or
//! a user id or range (`uid:1000`, `uid:1000-1999`) for UNIX peers, read with SO_PEERCRED.
//!
//! Parsing is pure and every error names the entry. [`Allow::fits`] says whether a list can
//! ever match peers of a listening address type (a CID entry on a TCP listener is a mistake
//! caught before anything is opened); [`Allow::permits`] decides for one accepted peer. An
//! empty list is never built: "no allow list" means everyone, and is `Option<Allow>::None`.
//!
//! Grammar only: reading who is on the other end of a socket ([`Peer::of`]) lives in
//! `net::peer`, where sockets are.

use std::fmt;
use std::net::IpAddr;

use super::kind::{Bind, Family, Kind, KindTag};

/// One entry of an allow list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllowRule {
    /// vsock peers whose CID is in `first..=last`.
    Cid { first: u32, last: u32 },
    /// TCP peers inside the network `addr/prefix` (host bits of `addr` are cleared).
    Net { addr: IpAddr, prefix: u8 },
    /// UNIX peers whose process runs as a user in `first..=last`.
    Uid { first: u32, last: u32 },
}

/// Who is on the other end of an accepted connection, as far as allow lists care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Inet(IpAddr),
    Vsock {
        cid: u32,
    },
    /// A UNIX peer; `uid` is `None` when the kernel had no credentials for it.
    Unix {
        uid: Option<u32>,
    },
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Inet(ip) => write!(f, "{ip}"),
            Peer::Vsock { cid } => write!(f, "cid {cid}"),
            Peer::Unix { uid: Some(uid) } => write!(f, "uid {uid}"),
            Peer::Unix { uid: None } => write!(f, "unix peer without credentials"),
        }
    }
}

/// Parses `N` or `N-M` (inclusive, N <= M).
fn parse_range(text: &str) -> Option<(u32, u32)> {
    let (first, last) = match text.split_once('-') {
        Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()?),
        None => {
            let n = text.trim().parse().ok()?;
            (n, n)
        }
    };
    (first <= last).then_some((first, last))
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((bits & m).into())
        }
    }
}

impl AllowRule {
    /// Parses one entry. `cid` and `uid` may be followed by `:` (as in the config file) or
    /// `=` (no escaping needed on the command line); IPv6 networks may be bracketed.
    pub fn parse(entry: &str) -> Result<AllowRule, String> {
        let bad = |why: &str| format!("invalid allow entry \"{entry}\": {why}");
        let text = entry.trim();
        let lower = text.to_ascii_lowercase();
        for (key, is_cid) in [("cid", true), ("uid", false)] {
            let rest = lower
                .strip_prefix(key)
                .and_then(|r| r.strip_prefix(':').or_else(|| r.strip_prefix('=')));
            if let Some(rest) = rest {
                let (first, last) = parse_range(rest).ok_or_else(|| {
                    bad("expected a number N or a range N-M (N <= M) of 0-4294967295")
                })?;
                return Ok(if is_cid {
                    AllowRule::Cid { first, last }
                } else {
                    AllowRule::Uid { first, last }
                });
            }
        }
        let (host, prefix) = match text.split_once('/') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        };
        let host = super::param::strip_brackets(host);
        let addr: IpAddr = host.parse().map_err(|_| {
            bad("expected cid:N, cid:N-M, uid:N, uid:N-M or an IP network like 10.0.0.0/8")
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(bad(&format!("prefix length must be 0-{max}"))),
            },
        };
        // An IPv4-mapped IPv6 network is the IPv4 network it maps.
        let (addr, prefix) = match addr {
            IpAddr::V6(v6) if prefix >= 96 && v6.to_ipv4_mapped().is_some() => (
                IpAddr::V4(v6.to_ipv4_mapped().expect("mapped")),
                prefix - 96,
            ),
            _ => (addr, prefix),
        };
        Ok(AllowRule::Net {
            addr: mask(addr, prefix),
            prefix,
        })
    }

    /// Whether this entry matches `peer`.
    pub(super) fn permits_peer(&self, peer: &Peer) -> bool {
        match (self, peer) {
            (AllowRule::Cid { first, last }, Peer::Vsock { cid }) => (first..=last).contains(&cid),
            (AllowRule::Uid { first, last }, Peer::Unix { uid: Some(uid) }) => {
                (first..=last).contains(&uid)
            }
            (AllowRule::Net { addr, prefix }, Peer::Inet(ip)) => {
                let ip = ip.to_canonical();
                ip.is_ipv4() == addr.is_ipv4() && mask(ip, *prefix) == *addr
            }
            _ => false,
        }
    }

    /// What kind of peer the entry is about, for messages.
    fn family(&self) -> &'static str {
        match self {
            AllowRule::Cid { .. } => "vsock",
            AllowRule::Net { .. } => "TCP",
            AllowRule::Uid { .. } => "UNIX",
        }
    }
}

impl fmt::Display for AllowRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let range = |f: &mut fmt::Formatter<'_>, key, a: &u32, b: &u32| {
            if a == b {
                write!(f, "{key}:{a}")
            } else {
                write!(f, "{key}:{a}-{b}")
            }
        };
        match self {
            AllowRule::Cid { first, last } => range(f, "cid", first, last),
            AllowRule::Uid { first, last } => range(f, "uid", first, last),
            AllowRule::Net { addr, prefix } => write!(f, "{addr}/{prefix}"),
        }
    }
}

/// A non-empty allow list: a peer is served if any entry matches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allow {
    rules: Vec<AllowRule>,
}

impl Allow {
    /// Parses every entry; `Ok(None)` for an empty list (everyone is allowed).
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Option<Allow>, String> {
        let rules = entries
            .iter()
            .map(|e| AllowRule::parse(e.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Allow::from_rules(rules))
    }

    /// A list of already parsed rules; `None` when there are none.
    pub fn from_rules(rules: Vec<AllowRule>) -> Option<Allow> {
        (!rules.is_empty()).then_some(Allow { rules })
    }

    pub fn rules(&self) -> &[AllowRule] {
        &self.rules
    }

    /// Whether `peer` may connect.
    pub fn permits(&self, peer: &Peer) -> bool {
        self.rules.iter().any(|r| r.permits_peer(peer))
    }

    /// [`Allow::fits`], and for a TCP listener that every network is of an IP family the
    /// listener can take: IPv4 only on `TCP4-LISTEN` or a socket bound to an IPv4 address,
    /// IPv6 only on a socket bound to a (non-wildcard) IPv6 address; the wildcard of
    /// `TCP-LISTEN` and `TCP6-LISTEN` is dual-stack and takes both. A `bind=` host name is
    /// not looked up here: its family is known when the socket opens.
    pub fn fits_listener(&self, listen: &Kind, bind: Option<&Bind>) -> Result<(), String> {
        self.fits(listen.tag())?;
        let Kind::TcpListen { family, .. } = listen else {
            return Ok(());
        };
        let bound = match bind {
            Some(Bind::Inet { host, .. }) => {
                host.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
            }
            _ => None,
        };
        let (v4, v6) = match (family, bound) {
            (_, Some(IpAddr::V4(_))) | (Family::V4, _) => (true, false),
            (_, Some(IpAddr::V6(ip))) if !ip.is_unspecified() => (false, true),
            _ => (true, true),
        };
        let never = self.rules.iter().find(|r| match r {
            AllowRule::Net { addr, .. } => (addr.is_ipv4() && !v4) || (addr.is_ipv6() && !v6),
            _ => false,
        });
        match never {
            Some(rule) => {
                let (entry, takes) = if v4 {
                    ("an IPv6 network", "IPv4 peers only")
                } else {
                    ("an IPv4 network", "IPv6 peers only")
                };
                let listener = match bound {
                    Some(ip) => format!("a {} listener bound to {ip}", listen.tag().name()),
                    None => format!("a {} listener", listen.tag().name()),
                };
                Err(format!(
                    "allow entry \"{rule}\" is {entry} and never matches: {listener} takes {takes}"
                ))
            }
            None => Ok(()),
        }
    }

    /// Checks that every entry can match peers of the listening address type `tag`:
    /// CIDs for vsock listeners, networks for TCP, uids for UNIX (hybrid vsock listeners
    /// are UNIX sockets too). An inherited socket's family is unknown until run time.
    pub fn fits(&self, tag: KindTag) -> Result<(), String> {
        let wanted = match tag {
            KindTag::VsockListen => "vsock",
            KindTag::TcpListen(_) | KindTag::UdpListen(_) => "TCP",
            KindTag::UnixListen | KindTag::VsockUdsListen => "UNIX",
            KindTag::AcceptFd => return Ok(()),
            _ => {
                return Err(format!(
                    "allow is only valid on listening addresses, not {}",
                    tag.name()
                ));
            }
        };
        match self.rules.iter().find(|r| r.family() != wanted) {
            Some(rule) => Err(format!(
                "allow entry \"{rule}\" is for {} peers and never matches a {} listener (use {})",
                rule.family(),
                tag.name(),
                match wanted {
                    "vsock" => "cid:N or cid:N-M",
                    "TCP" => "an IP network like 10.0.0.0/8",
                    _ => "uid:N or uid:N-M",
                }
            )),
            None => Ok(()),
        }
    }
}

impl fmt::Display for Allow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.rules.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::Family;

    fn allow(entries: &[&str]) -> Allow {
        Allow::parse(entries).unwrap().expect("non-empty")
    }

    fn inet(text: &str) -> Peer {
        Peer::Inet(text.parse().unwrap())
    }

    #[test]
    fn entries_parse_in_both_spellings_and_print_canonically() {
        let a = allow(&[
            "cid:3",
            "CID=10-20",
            "uid:0",
            "uid=1000-1999",
            "10.1.2.3/16",
            "127.0.0.1",
            "[fd00::1]/8",
            "::ffff:192.168.0.0/112",
        ]);
        assert_eq!(
            a.to_string(),
            "cid:3, cid:10-20, uid:0, uid:1000-1999, 10.1.0.0/16, 127.0.0.1/32, fd00::/8, 192.168.0.0/16"
        );
        assert_eq!(Allow::parse::<&str>(&[]).unwrap(), None);
    }

    #[test]
    fn bad_entries_are_named_in_the_error() {
        for (entry, why) in [
            ("cid:", "expected a number"),
            ("cid:20-10", "N <= M"),
            ("cid:x", "expected a number"),
            ("uid:-1", "expected a number"),
            ("10.0.0.0/33", "prefix length must be 0-32"),
            ("::1/129", "prefix length must be 0-128"),
            ("localhost", "expected cid:N"),
            ("10.0.0.0/", "prefix length"),
        ] {
            let e = AllowRule::parse(entry).unwrap_err();
            assert!(e.contains(&format!("\"{entry}\"")), "{e}");
            assert!(e.contains(why), "{entry}: {e}");
        }
    }

    #[test]
    fn cid_ranges_match_vsock_peers_only() {
        let a = allow(&["cid:3", "cid:10-20"]);
        for (cid, ok) in [
            (3, true),
            (4, false),
            (9, false),
            (10, true),
            (20, true),
            (21, false),
        ] {
            assert_eq!(a.permits(&Peer::Vsock { cid }), ok, "cid {cid}");
        }
        assert!(!a.permits(&inet("0.0.0.3")));
        assert!(!a.permits(&Peer::Unix { uid: Some(3) }));
    }

    #[test]
    fn networks_match_v4_v6_and_mapped_peers() {
        let a = allow(&["127.0.0.0/8", "10.1.0.0/16", "fd00::/8"]);
        assert!(a.permits(&inet("127.0.0.1")));
        assert!(a.permits(&inet("127.255.0.9")));
        assert!(a.permits(&inet("::ffff:127.0.0.2")), "IPv4-mapped peer");
        assert!(a.permits(&inet("10.1.200.1")));
        assert!(!a.permits(&inet("10.2.0.1")));
        assert!(a.permits(&inet("fd12::1")));
        assert!(!a.permits(&inet("fe80::1")));
        assert!(!a.permits(&inet("::1")));
        let everyone = allow(&["0.0.0.0/0", "::/0"]);
        assert!(everyone.permits(&inet("8.8.8.8")));
        assert!(everyone.permits(&inet("2001:db8::1")));
        assert!(!everyone.permits(&Peer::Vsock { cid: 3 }));
        let host = allow(&["::1"]);
        assert!(host.permits(&inet("::1")));
        assert!(!host.permits(&inet("::2")));
    }

    #[test]
    fn uids_match_unix_peers_with_credentials() {
        let a = allow(&["uid:0", "uid:1000-1001"]);
        assert!(a.permits(&Peer::Unix { uid: Some(0) }));
        assert!(a.permits(&Peer::Unix { uid: Some(1001) }));
        assert!(!a.permits(&Peer::Unix { uid: Some(65534) }));
        assert!(!a.permits(&Peer::Unix { uid: None }));
    }

    #[test]
    fn entries_must_fit_the_listener_family() {
        let cid = allow(&["cid:3"]);
        assert!(cid.fits(KindTag::VsockListen).is_ok());
        let e = cid.fits(KindTag::TcpListen(Family::Any)).unwrap_err();
        assert!(e.contains("\"cid:3\"") && e.contains("TCP-LISTEN"), "{e}");
        assert!(allow(&["uid:0"]).fits(KindTag::VsockUdsListen).is_ok());
        assert!(allow(&["::1"]).fits(KindTag::UnixListen).is_err());
        assert!(allow(&["::1"]).fits(KindTag::AcceptFd).is_ok());
        assert!(
            allow(&["::1"])
                .fits(KindTag::TcpConnect(Family::Any))
                .is_err()
        );
    }

    #[test]
    fn the_allow_option_repeats_for_several_entries_on_the_command_line() {
        use crate::addr::Address;
        let a = Address::parse("VSOCK-LISTEN:22,fork,allow=cid:3,allow=cid=10-20").unwrap();
        assert_eq!(a.options.allow.unwrap().to_string(), "cid:3, cid:10-20");
        // The escaped form works too (a backslash escapes one character anywhere).
        let a = Address::parse(r"VSOCK-LISTEN:22,fork,allow=cid\:3").unwrap();
        assert_eq!(a.options.allow.unwrap().to_string(), "cid:3");
        let a = Address::parse("TCP-LISTEN:80,fork,allow=fd00::/8,allow=[::1]").unwrap();
        assert_eq!(a.options.allow.unwrap().to_string(), "fd00::/8, ::1/128");
        let a = Address::parse("UNIX-LISTEN:/s,fork,allow=uid=0").unwrap();
        assert_eq!(a.options.allow.unwrap().to_string(), "uid:0");
        let err = |text: &str| Address::parse(text).unwrap_err().to_string();
        assert_eq!(
            err("TCP:h:1,allow=::1"),
            "option \"allow\" is not valid for TCP"
        );
        assert_eq!(
            err("TCP-L:1,allow"),
            "option \"allow\" needs a value (allow=ENTRY)"
        );
        assert_eq!(
            err("TCP-L:1,allow=cid:3"),
            "invalid value \"cid:3\" for option \"allow\": allow entry \"cid:3\" is for vsock \
             peers and never matches a TCP-LISTEN listener (use an IP network like 10.0.0.0/8)"
        );
        assert!(err("VSOCK-L:1,allow=cid:9-1").contains("invalid allow entry \"cid:9-1\""));
    }

    #[test]
    fn accept_fd_is_a_listening_address_with_a_descriptor_number() {
        use crate::addr::{Address, Kind};
        let a = Address::parse("accept-fd:3,fork,max-children=10,allow=cid:3").unwrap();
        assert_eq!(a.kind, Kind::AcceptFd { fd: 3 });
        assert!(a.is_listener() && a.options.fork);
        let err = |text: &str| Address::parse(text).unwrap_err().to_string();
        assert_eq!(
            err("ACCEPT-FD:x"),
            "descriptor \"x\" is not a number 0-2147483647"
        );
        assert_eq!(
            err("ACCEPT-FD:-1"),
            "descriptor \"-1\" is not a number 0-2147483647"
        );
        assert_eq!(err("ACCEPT-FD"), "ACCEPT-FD needs fd");
        assert_eq!(
            err("ACCEPT-FD:3,bind=1"),
            "option \"bind\" is not valid for ACCEPT-FD"
        );
    }
}
