//! Whether a source's end of file is a clean end (the peer's FIN, passed on as a half-close)
//! or a reset (the connection is cut, so the other side must get a reset, never a FIN first):
//! a pure rule over what the source socket reports once its read returned 0.
//!
//! A read returns 0 after a FIN, but also after a reset whose error another call took first:
//! the kernel hands a reset's error (ECONNRESET) to one call only, and with the two
//! directions of a connection on one socket, the other direction's write often takes it. The
//! socket still tells them apart: a pending error, or, for TCP, its state: TCP_CLOSE_WAIT
//! after a FIN, TCP_CLOSE after a reset. After our own FIN went out, a clean close also ends
//! in TCP_CLOSE, so there the state says nothing and only a pending error counts. UNIX and
//! vsock peers cannot reset (their sockets have no RST): only a pending error counts there.

use crate::sys::socket::{PeerEnd, TcpState};

/// How a source ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EndOfFile {
    /// The peer finished sending: pass end of file on.
    Clean,
    /// The peer's connection failed (the error number): cut the other side with a reset.
    Reset(i32),
}

/// Classifies an end of file from what the source socket reports (`None`: nothing to ask,
/// such as standard input) and whether our write side of that socket is still open.
pub(crate) fn classify(peer: Option<PeerEnd>, our_write_open: bool) -> EndOfFile {
    let Some(peer) = peer else {
        return EndOfFile::Clean;
    };
    if let Some(errno) = peer.error {
        return EndOfFile::Reset(errno);
    }
    match peer.tcp_state {
        Some(TcpState::Closed) if our_write_open => EndOfFile::Reset(libc::ECONNRESET),
        _ => EndOfFile::Clean,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(state: TcpState) -> Option<PeerEnd> {
        Some(PeerEnd {
            error: None,
            tcp_state: Some(state),
        })
    }

    #[test]
    fn a_fin_is_a_clean_end() {
        assert_eq!(classify(tcp(TcpState::CloseWait), true), EndOfFile::Clean);
    }

    #[test]
    fn a_closed_tcp_socket_we_still_write_to_was_reset_even_when_its_error_was_taken() {
        assert_eq!(
            classify(tcp(TcpState::Closed), true),
            EndOfFile::Reset(libc::ECONNRESET)
        );
    }

    #[test]
    fn after_our_own_fin_a_closed_socket_is_a_clean_close() {
        assert_eq!(classify(tcp(TcpState::Closed), false), EndOfFile::Clean);
        assert_eq!(classify(tcp(TcpState::Other(11)), false), EndOfFile::Clean);
    }

    #[test]
    fn a_pending_error_is_a_reset_in_any_family() {
        let unix = Some(PeerEnd {
            error: Some(libc::ECONNRESET),
            tcp_state: None,
        });
        assert_eq!(classify(unix, true), EndOfFile::Reset(libc::ECONNRESET));
        let after_fin = Some(PeerEnd {
            error: Some(libc::EPIPE),
            tcp_state: Some(TcpState::Closed),
        });
        assert_eq!(classify(after_fin, false), EndOfFile::Reset(libc::EPIPE));
    }

    #[test]
    fn unix_vsock_and_stdin_ends_without_an_error_are_clean() {
        let unix = Some(PeerEnd {
            error: None,
            tcp_state: None,
        });
        assert_eq!(classify(unix, true), EndOfFile::Clean);
        assert_eq!(classify(None, true), EndOfFile::Clean);
    }
}
