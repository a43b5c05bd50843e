//! What socket a listening address binds, as the kernel sees it: the resolved local address
//! ([`super::open::listen_local`]: family, bind address and port, UNIX path, vsock CID and
//! port) or the inherited descriptor, not the text it was written as. `TCP4-LISTEN:80,
//! bind=127.0.0.1,fork` and `tcp4-listen:80,fork,bind=127.0.0.1` bind the same socket; a
//! reload that meets the second where the first runs keeps the running socket.

use crate::addr::{Address, Kind};
use crate::error::Error;
use crate::sys::socket::SockAddr;

/// The socket a listening address binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindKey {
    /// A socket this process binds at this local address.
    Local(SockAddr),
    /// A listening socket inherited as this descriptor (`ACCEPT-FD`).
    Fd(i32),
}

impl BindKey {
    /// Resolves `address` (a `bind=` host name is looked up now, as opening it would).
    pub fn of(address: &Address) -> Result<BindKey, Error> {
        match address.kind {
            Kind::AcceptFd { fd } => Ok(BindKey::Fd(fd)),
            _ => super::open::listen_local(address).map(|(local, _)| BindKey::Local(local)),
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
}
