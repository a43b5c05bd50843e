//! Fixtures for the engine's unit tests: connected socket pairs as endpoints, and the
//! worker-side parts a lane runs against (a ring that is never waited on, an empty registry,
//! a pipe pool).

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use super::config::RelayOptions;
use super::conn::{Conn, Phase, Relaying};
use crate::net::endpoint::Endpoint;
use crate::sys::socket::Socket;

/// An endpoint on a non-blocking UNIX stream socket, and its peer.
pub(super) fn unix_endpoint() -> (Endpoint, UnixStream) {
    let (ours, peer) = UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let socket = Socket::from_owned(OwnedFd::from(ours));
    (Endpoint::socket(socket, "unix".into()), peer)
}

/// An endpoint on a non-blocking loopback TCP socket, and its peer.
pub(super) fn tcp_endpoint() -> (Endpoint, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (ours, _) = listener.accept().unwrap();
    ours.set_nonblocking(true).unwrap();
    let socket = Socket::from_owned(OwnedFd::from(ours));
    (Endpoint::socket(socket, "tcp".into()), peer)
}

/// The default relay options on `mode`.
pub(super) fn options(mode: super::Mode) -> Arc<RelayOptions> {
    Arc::new(RelayOptions {
        mode,
        ..RelayOptions::default()
    })
}

/// A relaying connection between two endpoints, without lanes.
pub(super) fn relaying_conn(first: Endpoint, second: Endpoint, options: Arc<RelayOptions>) -> Conn {
    Conn::new(
        1,
        1,
        options,
        first,
        Some(second),
        Phase::Relaying(Relaying::default()),
    )
}

/// Writes `data` to a peer.
pub(super) fn send(peer: &mut impl Write, data: &[u8]) {
    peer.write_all(data).unwrap();
}
