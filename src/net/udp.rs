//! UDP-LISTEN's sessions: one per sender address, as socat's `UDP-LISTEN` with `fork` makes
//! them, without processes.
//!
//! The listening socket receives a sender's first datagram. A session socket is then bound
//! to the same local address (`SO_REUSEADDR` on both) and connected to the sender: the kernel
//! delivers that sender's later datagrams to the connected socket (it matches more of the
//! datagram's addresses than the listener does), so the session relays like any connected
//! message socket, and the datagrams that reached the listener before it was connected travel
//! with it ([`Session::first`]). A session ends after `-T` seconds without a datagram (default
//! 60 s for UDP).

use std::collections::HashMap;
use std::io;
use std::time::{Duration, Instant};

use crate::sys::socket::{SockAddr, Socket};

/// How long after a session starts a datagram from its sender that still reaches the
/// listener is taken for one sent before the session was connected.
pub(crate) const SESSION_SETTLE: Duration = Duration::from_secs(2);

/// A relay with a UDP end closes a session after this long without a datagram, unless `-T`
/// (or a service's `idle-timeout`) says otherwise: UDP has no end of its own.
pub(crate) const UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The largest datagram: UDP's length field.
pub(crate) const DATAGRAM_MAX: usize = 65536;

/// A new session: its connected socket and the datagrams its sender sent before it was
/// connected, in order.
#[derive(Debug)]
pub(crate) struct Session {
    pub socket: Socket,
    pub first: Vec<Vec<u8>>,
}

/// Datagrams the listener took for senders whose session is not made yet, in arrival order;
/// at most [`PENDING_MAX`] (a flood past it is dropped, as UDP may).
pub(crate) type Pending = std::collections::VecDeque<(SockAddr, Vec<u8>)>;

/// The most datagrams held for sessions not made yet.
pub(crate) const PENDING_MAX: usize = 1024;

/// The senders whose sessions started recently.
#[derive(Debug, Default)]
pub(crate) struct Recent(HashMap<SockAddr, Instant>);

impl Recent {
    /// Whether `peer`'s session started less than [`SESSION_SETTLE`] before `now`; records a
    /// new one otherwise.
    pub(crate) fn settling(&mut self, peer: &SockAddr, now: Instant) -> bool {
        self.0
            .retain(|_, at| now.saturating_duration_since(*at) < SESSION_SETTLE);
        if self.0.contains_key(peer) {
            return true;
        }
        self.0.insert(peer.clone(), now);
        false
    }
}

/// Moves what the listener holds into `pending` (up to its bound), oldest first.
fn drain(listener: &Socket, pending: &mut Pending) -> io::Result<()> {
    let mut buf = vec![0u8; DATAGRAM_MAX];
    while let Some((len, peer)) = listener.recv_from(&mut buf)? {
        if pending.len() >= PENDING_MAX {
            crate::limited!(
                Warn,
                "UDP: more than {PENDING_MAX} datagrams wait for sessions: dropped one from {peer}"
            );
            continue;
        }
        pending.push_back((peer, buf[..len].to_vec()));
    }
    Ok(())
}

/// Opens the next sender's session from what `listener` (bound to `local`) received;
/// `Ok(None)` when nothing waits. Every datagram its sender sent before the session socket
/// was connected travels with it, in order, so none is lost to the handover.
pub(crate) fn next_session(
    listener: &Socket,
    local: &SockAddr,
    pending: &mut Pending,
    recent: &mut Recent,
) -> io::Result<Option<Session>> {
    session(listener, local, pending, recent, true)
}

/// Opens the session of the oldest datagram already taken from `listener`, reading nothing
/// new first; `Ok(None)` when none is held. What a listener that stops making sessions
/// calls until nothing it took is left (another owner of the socket reads on from there).
pub(crate) fn next_held_session(
    listener: &Socket,
    local: &SockAddr,
    pending: &mut Pending,
    recent: &mut Recent,
) -> io::Result<Option<Session>> {
    session(listener, local, pending, recent, false)
}

fn session(
    listener: &Socket,
    local: &SockAddr,
    pending: &mut Pending,
    recent: &mut Recent,
    read_first: bool,
) -> io::Result<Option<Session>> {
    loop {
        if pending.is_empty() && read_first {
            drain(listener, pending)?;
        }
        let Some((peer, first)) = pending.pop_front() else {
            return Ok(None);
        };
        if recent.settling(&peer, Instant::now()) {
            crate::debug!("{local}: a datagram from {peer} after its session was made: dropped");
            continue;
        }
        let socket = Socket::of_type(local.family(), nix::sys::socket::SockType::Datagram)?;
        socket.set_int(libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
        socket.bind(local)?;
        match socket.connect(&peer)? {
            crate::sys::socket::ConnectProgress::Connected => {}
            _ => return Err(io::Error::other("a UDP connect did not complete at once")),
        }
        // From here on the kernel gives this sender's datagrams to the session socket: what
        // the listener still holds from it came before, and goes first.
        drain(listener, pending)?;
        let mut firsts = vec![first];
        pending.retain(|(from, data)| {
            if *from == peer {
                firsts.push(data.clone());
                false
            } else {
                true
            }
        });
        return Ok(Some(Session {
            socket,
            first: firsts,
        }));
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sender_makes_one_session_until_it_settled() {
        let mut recent = Recent::default();
        let a = SockAddr::Inet("127.0.0.1:5000".parse().unwrap());
        let b = SockAddr::Inet("127.0.0.1:5001".parse().unwrap());
        let t = Instant::now();
        assert!(!recent.settling(&a, t));
        assert!(recent.settling(&a, t + Duration::from_millis(10)));
        assert!(!recent.settling(&b, t), "another sender is another session");
        assert!(
            !recent.settling(&a, t + SESSION_SETTLE),
            "a later session of the same sender"
        );
    }
}
