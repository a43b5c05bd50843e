//! Why a connection ended: the one reason a close carries to the logs, the counters and an
//! observer, and whether it counts as a failure.

use std::fmt;

use super::direction::Direction;
use super::lane::flow::FlowError;

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// Both directions passed end of file on.
    Done,
    /// A direction failed; the other side gets its sockets closed.
    Failed {
        direction: Direction,
        error: FlowError,
    },
    /// The second address could not be opened.
    DialFailed(String),
    /// The handshake before the dial (`accept-proxy`, ...) failed: a bad, oversized or late
    /// header; nothing was dialed. The text names the prelude and why.
    PreludeFailed(String),
    /// No byte moved for `-T` seconds.
    IdleTimeout,
    /// One direction ended `-t` seconds ago and the other did not follow.
    LingerExpired,
    /// The relay is shutting down (SIGINT/SIGTERM).
    Stopped,
}

impl CloseReason {
    /// Whether this ending counts as a failed connection in statistics and exit codes.
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            CloseReason::Failed { .. } | CloseReason::DialFailed(_) | CloseReason::PreludeFailed(_)
        )
    }

    /// Whether the relay cut streams that had not ended: a direction failed (a peer's reset,
    /// a write to a gone peer), `-T`, the cut that ends a stop, or a failed dial (the client
    /// may have sent bytes that now reach no one). Such a connection's sockets close with a
    /// reset, so no peer mistakes the truncated stream for a whole one. Only `-t` ends what
    /// the user asked to end: it closes as usual.
    pub fn truncates(&self) -> bool {
        matches!(
            self,
            CloseReason::Failed { .. }
                | CloseReason::DialFailed(_)
                | CloseReason::PreludeFailed(_)
                | CloseReason::IdleTimeout
                | CloseReason::Stopped
        )
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Done => write!(f, "finished"),
            CloseReason::Failed { direction, error } => write!(f, "{direction}: {error}"),
            CloseReason::DialFailed(why) | CloseReason::PreludeFailed(why) => write!(f, "{why}"),
            CloseReason::IdleTimeout => write!(f, "inactivity timeout (-T)"),
            CloseReason::LingerExpired => write!(f, "half-close timeout (-t)"),
            CloseReason::Stopped => write!(f, "relay stopping"),
        }
    }
}
