//! What socket a listening address binds, as the kernel sees it: the resolved local address
//! ([`super::open::listen_local`]: family, bind address and port, UNIX path, vsock CID and
//! port) or the inherited descriptor, not the text it was written as. `TCP4-LISTEN:80,
//! bind=127.0.0.1,fork` and `tcp4-listen:80,fork,bind=127.0.0.1` bind the same socket; a
//! reload that meets the second where the first runs keeps the running socket. UDP has its
//! own ports: `UDP-LISTEN:53` and `TCP-LISTEN:53` are two sockets that never collide.

use crate::addr::{Address, Kind};
use crate::error::Error;
use crate::sys::socket::SockAddr;

/// The socket a listening address binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BindKey {
    /// A socket this process binds at this local address.
    Local(SockAddr),
    /// A UDP socket this process binds at this local address (`UDP-LISTEN`).
    Datagram(SockAddr),
    /// A listening socket inherited as this descriptor (`ACCEPT-FD`).
    Fd(i32),
}

impl BindKey {
    /// Resolves `address` (a `bind=` host name is looked up now, as opening it would).
    pub(crate) fn of(address: &Address) -> Result<BindKey, Error> {
        match address.kind {
            Kind::AcceptFd { fd } => Ok(BindKey::Fd(fd)),
            Kind::UdpListen { .. } => {
                super::open::listen_local(address).map(|(local, _)| BindKey::Datagram(local))
            }
            _ => super::open::listen_local(address).map(|(local, _)| BindKey::Local(local)),
        }
    }

    /// The local address a socket this process binds is bound at (`None`: inherited).
    pub(crate) fn local(&self) -> Option<&SockAddr> {
        match self {
            BindKey::Local(local) | BindKey::Datagram(local) => Some(local),
            BindKey::Fd(_) => None,
        }
    }

    /// Whether a socket bound at `self` and one at `other` cannot both listen: the second
    /// bind would fail with "Address already in use" (or, with `reuseport`, share the port).
    /// A wildcard takes its port on every address of its family (the IPv6 wildcard, opened
    /// dual-stack, on IPv4 too); port 0 asks for a free port and meets nothing.
    pub(crate) fn collides(&self, other: &BindKey) -> bool {
        use std::net::IpAddr;
        fn covers(wide: IpAddr, ip: IpAddr) -> bool {
            wide == ip
                || match wide {
                    IpAddr::V6(w) => w.is_unspecified(),
                    IpAddr::V4(w) => w.is_unspecified() && ip.is_ipv4(),
                }
        }
        match (self, other) {
            (BindKey::Local(SockAddr::Inet(a)), BindKey::Local(SockAddr::Inet(b)))
            | (BindKey::Datagram(SockAddr::Inet(a)), BindKey::Datagram(SockAddr::Inet(b))) => {
                let (x, y) = (a.ip().to_canonical(), b.ip().to_canonical());
                a.port() != 0 && a.port() == b.port() && (covers(x, y) || covers(y, x))
            }
            (
                BindKey::Local(SockAddr::Vsock { cid: c, port: p }),
                BindKey::Local(SockAddr::Vsock { cid: d, port: q }),
            ) => {
                let any = libc::VMADDR_CID_ANY;
                *p != libc::VMADDR_PORT_ANY && p == q && (c == d || *c == any || *d == any)
            }
            (a, b) => a == b,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> BindKey {
        BindKey::of(&Address::parse(text).unwrap()).unwrap()
    }

    #[test]
    fn spelling_case_and_option_order_do_not_change_the_socket() {
        let first = key("TCP4-LISTEN:8080,bind=127.0.0.1,fork");
        for same in [
            "tcp4-listen:8080,fork,bind=127.0.0.1",
            "TCP4-L:8080,bind=127.0.0.1:8080,fork,allow=127.0.0.1/32",
            "TCP-LISTEN:8080,bind=127.0.0.1",
        ] {
            assert_eq!(key(same), first, "{same}");
        }
        for other in [
            "TCP4-LISTEN:8081,bind=127.0.0.1,fork",
            "TCP4-LISTEN:8080,bind=127.0.0.2,fork",
            "TCP4-LISTEN:8080,fork",
        ] {
            assert_ne!(key(other), first, "{other}");
        }
        assert_eq!(key("TCP-LISTEN:80"), key("tcp6-l:80,fork"));
        assert_eq!(
            key("UNIX-LISTEN:/run/a.sock"),
            key("unix-l:/run/a.sock,fork")
        );
        assert_eq!(key("VSOCK-UDS-LISTEN:/v:52"), key("UNIX-LISTEN:/v_52"));
        assert_eq!(key("VSOCK-LISTEN:5"), key("vsock-l:5,bind=-1"));
        assert_eq!(key("ACCEPT-FD:3,fork"), key("accept-fd:3"));
        assert_ne!(key("ACCEPT-FD:3"), key("ACCEPT-FD:4"));
    }

    #[test]
    fn a_wildcard_collides_with_a_specific_bind_of_its_family_on_the_same_port() {
        let collide = |a: &str, b: &str| key(a).collides(&key(b)) && key(b).collides(&key(a));
        for (a, b) in [
            (
                "TCP4-LISTEN:80,bind=127.0.0.1",
                "TCP4-LISTEN:80,bind=localhost",
            ),
            ("TCP4-LISTEN:80", "TCP4-LISTEN:80,bind=127.0.0.1"),
            ("TCP-LISTEN:80", "TCP4-LISTEN:80,bind=127.0.0.1"),
            ("TCP-LISTEN:80", "TCP6-LISTEN:80,bind=[::1]"),
            (
                "TCP6-LISTEN:80,bind=[::ffff:127.0.0.1]",
                "TCP4-LISTEN:80,bind=127.0.0.1",
            ),
            ("VSOCK-LISTEN:5", "VSOCK-LISTEN:5,bind=3"),
            ("UNIX-LISTEN:/a", "unix-l:/a,fork"),
            ("UDP-LISTEN:53", "UDP4-LISTEN:53,bind=127.0.0.1"),
        ] {
            assert!(collide(a, b), "{a} {b}");
        }
        for (a, b) in [
            (
                "TCP4-LISTEN:80,bind=127.0.0.1",
                "TCP4-LISTEN:80,bind=127.0.0.2",
            ),
            ("TCP4-LISTEN:80", "TCP6-LISTEN:80,bind=[::1]"),
            ("TCP4-LISTEN:80", "TCP4-LISTEN:81"),
            ("TCP-LISTEN:0", "TCP-LISTEN:0"),
            ("VSOCK-LISTEN:5,bind=3", "VSOCK-LISTEN:5,bind=4"),
            ("VSOCK-LISTEN:-1", "VSOCK-LISTEN:-1"),
            ("UNIX-LISTEN:/a", "UNIX-LISTEN:/b"),
            ("UDP-LISTEN:53", "TCP-LISTEN:53"),
            (
                "UDP4-LISTEN:53,bind=127.0.0.1",
                "TCP4-LISTEN:53,bind=127.0.0.1",
            ),
        ] {
            assert!(!collide(a, b), "{a} {b}");
        }
    }
}
