//! Admitting an accepted socket: the one place where every listener's connections (the
//! relay command's, forking or not, and every service's, `ACCEPT-FD` included) meet their
//! allow list, get their per-connection socket options and their log label. The relay and
//! service mode both call [`admit`], so what a listener lets in cannot differ between them.
//!
//! A refused peer never reaches the second address (nothing is dialed) and its socket is
//! closed with `SO_LINGER` 0: a TCP peer reads a reset, not an end of stream it could take
//! for the backend's answer. (A UNIX or vsock peer cannot be reset; it reads end of file.)
//!
//! A hybrid vsock listener with `guest-cid` ([`hybrid_origin`]) also declares who its
//! connections are from: the socket says only "an unnamed UNIX peer" (the VMM), but the
//! listener knows the guest's CID and the port it dialed.

use crate::addr::allow::Peer;
use crate::addr::{Address, Family, Kind};
use crate::limited;
use crate::net::endpoint::Endpoint;
use crate::net::sockopt::apply_connected_options;
use crate::protocols::prelude::Origin;
use crate::sys::socket::{SockAddr, Socket};

/// The guest's own port is not told by a hybrid vsock VMM: a `send-proxy` header says
/// VMADDR_PORT_ANY (-1) for it.
pub(crate) const UNKNOWN_GUEST_PORT: u32 = u32::MAX;

/// Who the connections of a `VSOCK-UDS-LISTEN:PATH:P,guest-cid=N` listener are from: the guest
/// (CID N, its port unknown) dialing the host (CID 2) on port P. `None` for any other
/// listener, or without `guest-cid`.
pub(crate) fn hybrid_origin(listen: &Address) -> Option<Origin> {
    match (&listen.kind, listen.options.guest_cid) {
        (Kind::VsockUdsListen { port, .. }, Some(cid)) => Some(Origin {
            source: SockAddr::Vsock {
                cid,
                port: UNKNOWN_GUEST_PORT,
            },
            destination: Some(SockAddr::Vsock {
                cid: libc::VMADDR_CID_HOST,
                port: *port,
            }),
            credentials: None,
        }),
        _ => None,
    }
}

/// Checks `socket`, accepted on `listen`, against its allow list and makes it an endpoint;
/// `None`: refused (logged, and closed with a reset). `name` names the listener in logs;
/// `label` asks for the peer's address as the endpoint's label (a getpeername).
pub(crate) fn admit(listen: &Address, name: &str, socket: Socket, label: bool) -> Option<Endpoint> {
    if let Some(allow) = &listen.options.allow {
        let peer = Peer::of(&socket);
        if !peer.as_ref().is_ok_and(|p| allow.permits(p)) {
            match peer {
                // Logged at -d: refusals are what an operator looks for.
                Ok(p) => limited!(Warn, "{name}: {p} refused by the allow list"),
                Err(e) => limited!(Warn, "{name}: peer unknown ({e}): refused"),
            }
            refuse(socket);
            return None;
        }
    }
    if matches!(listen.kind, Kind::TcpListen { .. }) {
        if let Err(e) = apply_connected_options(&socket, &listen.options) {
            limited!(Warn, "{name}: socket options: {e}");
        }
    }
    let peer = label.then(|| socket.peer_addr().ok()).flatten();
    let label = peer
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_else(|| format!("client of {name}"));
    let framed = listen.options.framing.is_some();
    let endpoint = match &listen.kind {
        // A TCP listener's connections are TCP streams: no need to ask the kernel
        // (inherited listeners, ACCEPT-FD, are asked). The family is the peer address's
        // when it was looked up, else the listener's: AF_INET6 for a dual-stack listener
        // (a bind to an IPv4 host makes it AF_INET). The endpoint only tells TCP from UNIX
        // and vsock by it, which either says.
        Kind::TcpListen { family, .. } => {
            let domain = match (peer, family) {
                (Some(peer), _) => peer.family() as libc::c_int,
                (None, Family::V4) => libc::AF_INET,
                (None, Family::V6 | Family::Any) => libc::AF_INET6,
            };
            Endpoint::socket_of(socket, label, domain, libc::SOCK_STREAM)
        }
        _ => Endpoint::socket(socket, label),
    };
    Some(
        endpoint
            .with_framing(framed)
            .with_origin(hybrid_origin(listen)),
    )
}

/// Closes a refused socket so that a TCP peer reads a reset (`SO_LINGER` 0); on other
/// families the option has no such effect and the close is a plain one.
fn refuse(socket: Socket) {
    let _ = socket.reset_on_close();
    drop(socket);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hybrid_listener_with_guest_cid_declares_the_guest_dialing_the_host_port() {
        let listen = Address::parse("VSOCK-UDS-LISTEN:/run/fc.vsock:5000,guest-cid=3").unwrap();
        let origin = hybrid_origin(&listen).expect("declared");
        assert_eq!(
            origin.source,
            SockAddr::Vsock {
                cid: 3,
                port: u32::MAX
            }
        );
        assert_eq!(
            origin.destination,
            Some(SockAddr::Vsock { cid: 2, port: 5000 })
        );
        let plain = Address::parse("VSOCK-UDS-LISTEN:/run/fc.vsock:5000").unwrap();
        assert_eq!(
            hybrid_origin(&plain),
            None,
            "without guest-cid: the socket's peer"
        );
        let unix = Address::parse("UNIX-LISTEN:/run/x").unwrap();
        assert_eq!(hybrid_origin(&unix), None);
    }
}
