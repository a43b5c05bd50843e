//! Who is on the other end of a socket, as allow lists ask it: the peer's address, and for a
//! UNIX peer its credentials (`SO_PEERCRED`). The allow grammar that judges a [`Peer`] is pure
//! and lives in `addr::allow`; this is the half that reads a socket.

use std::io;

use crate::addr::allow::Peer;
use crate::protocols::prelude::Origin;
use crate::sys::socket::{SockAddr, Socket};

/// Who an accepted socket's client is, for a `send-proxy` header: its peer, the local
/// address it reached, and for UNIX its credentials; `None` when the peer cannot be read.
pub(crate) fn origin_of(socket: &Socket) -> Option<Origin> {
    let source = socket.peer_addr().ok()?;
    let credentials = match source {
        SockAddr::Unix(_) => socket.peer_credentials().ok(),
        _ => None,
    };
    Some(Origin {
        source,
        destination: socket.local_addr().ok(),
        credentials,
    })
}

impl Peer {
    /// The peer of an accepted socket: its address, and for UNIX sockets its credentials.
    pub fn of(socket: &Socket) -> io::Result<Peer> {
        Ok(match socket.peer_addr()? {
            SockAddr::Unix(_) => Peer::Unix {
                uid: socket.peer_credentials().ok().map(|c| c.uid),
            },
            other => Peer::from_addr(&other),
        })
    }

    /// The peer behind an address (UNIX peers without credentials).
    pub fn from_addr(addr: &SockAddr) -> Peer {
        match addr {
            SockAddr::Inet(a) => Peer::Inet(a.ip().to_canonical()),
            SockAddr::Vsock { cid, .. } => Peer::Vsock { cid: *cid },
            SockAddr::Unix(_) => Peer::Unix { uid: None },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inet(text: &str) -> Peer {
        Peer::Inet(text.parse().unwrap())
    }

    #[test]
    fn peers_of_real_sockets() {
        use std::os::unix::net::{UnixListener, UnixStream};
        let dir = std::env::temp_dir().join(format!("vsplice-allow-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s");
        let listener = UnixListener::bind(&path).unwrap();
        let _client = UnixStream::connect(&path).unwrap();
        let (server, _) = listener.accept().unwrap();
        let server = Socket::from_owned(server.into());
        let uid = nix::unistd::geteuid().as_raw();
        assert_eq!(Peer::of(&server).unwrap(), Peer::Unix { uid: Some(uid) });
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _c = std::net::TcpStream::connect(tcp.local_addr().unwrap()).unwrap();
        let (s, _) = tcp.accept().unwrap();
        let s = Socket::from_owned(s.into());
        assert_eq!(Peer::of(&s).unwrap(), inet("127.0.0.1"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
