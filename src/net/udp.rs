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
use std::os::fd::AsFd;
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
        hold(pending, peer, &buf[..len]);
    }
    Ok(())
}

/// Holds `data` from `from` for its session, unless [`PENDING_MAX`] are held already (then
/// it is dropped, as UDP may).
fn hold(pending: &mut Pending, from: SockAddr, data: &[u8]) {
    if pending.len() >= PENDING_MAX {
        crate::limited!(
            Warn,
            "UDP: more than {PENDING_MAX} datagrams wait for sessions: dropped one from {from}"
        );
        return;
    }
    pending.push_back((from, data.to_vec()));
}

/// Empties what a just-connected session socket had queued: the datagrams of its own `peer`
/// are returned in order; any other sender's go to the end of `pending` (up to its bound).
fn take_queued(socket: &Socket, peer: &SockAddr, pending: &mut Pending) -> Vec<Vec<u8>> {
    let mut own = Vec::new();
    let mut buf = vec![0u8; DATAGRAM_MAX];
    // An error here (an ICMP error queued already) is the session's to meet when it reads.
    while let Ok(Some((len, from))) = socket.recv_from(&mut buf) {
        if from == *peer {
            own.push(buf[..len].to_vec());
        } else {
            hold(pending, from, &buf[..len]);
        }
    }
    own
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
        // Between bind and connect the new socket was bound and not connected, so the kernel
        // may have queued on it what other new senders sent (it matches them as well as the
        // listener does), and a datagram whose lookup found it just before the connect may
        // still come: from the filter on, only this sender's are queued, and what came before
        // goes back to the pending queue for its own session, never into this one's.
        if let SockAddr::Inet(to) = &peer {
            crate::sys::sockfilter::accept_only_from(socket.as_fd(), *to)?;
        }
        let queued = take_queued(&socket, &peer, pending);
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
        firsts.extend(queued);
        return Ok(Some(Session {
            socket,
            first: firsts,
        }));
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    /// A sender on loopback and its address.
    fn sender() -> (std::net::UdpSocket, SockAddr) {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = SockAddr::Inet(socket.local_addr().unwrap());
        (socket, addr)
    }

    #[test]
    fn a_session_socket_hands_another_senders_datagrams_back_and_keeps_its_own_in_order() {
        // A session socket bound and not yet connected received datagrams of two senders.
        let session = Socket::of_type(
            nix::sys::socket::AddressFamily::Inet,
            nix::sys::socket::SockType::Datagram,
        )
        .unwrap();
        session
            .bind(&SockAddr::Inet("127.0.0.1:0".parse().unwrap()))
            .unwrap();
        let SockAddr::Inet(at) = session.local_addr().unwrap() else {
            unreachable!("bound to IPv4")
        };
        let (a, a_addr) = sender();
        let (b, b_addr) = sender();
        for (from, data) in [(&b, b"b0"), (&a, b"a1"), (&b, b"b1"), (&a, b"a2")] {
            from.send_to(data, at).unwrap();
        }
        assert!(matches!(
            session.connect(&a_addr).unwrap(),
            crate::sys::socket::ConnectProgress::Connected
        ));
        std::thread::sleep(Duration::from_millis(20));
        let mut pending = Pending::new();
        pending.push_back((a_addr.clone(), b"older".to_vec()));
        let own = take_queued(&session, &a_addr, &mut pending);
        assert_eq!(own, vec![b"a1".to_vec(), b"a2".to_vec()]);
        let rest: Vec<_> = pending.into_iter().collect();
        assert_eq!(
            rest,
            vec![
                (a_addr, b"older".to_vec()),
                (b_addr.clone(), b"b0".to_vec()),
                (b_addr, b"b1".to_vec())
            ],
            "the other sender's datagrams wait for its own session, in order"
        );
    }

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
