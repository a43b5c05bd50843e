//! What a [`super::Dial`] and its driver say to each other: the event the driver feeds in
//! ([`Event`]), what the machine asks for next ([`Progress`], waiting with an [`Interest`]),
//! and why a dial failed ([`DialError`], with the [`FailureClass`] a metric or a proxy's
//! reply reports).

use std::os::fd::RawFd;
use std::time::Instant;

use crate::net::endpoint::Endpoint;
use crate::protocols::target::FailureClass;
use crate::sys::socket::SockAddr;

/// What a waiting dial waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    Readable,
    Writable,
}

/// What happened since the last [`Dial::advance`](super::Dial::advance).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Start,
    /// The descriptor of the last `Wait` became ready.
    Ready,
    /// The deadline of the last `Wait` passed.
    Timeout,
}

/// What the driver should do next.
#[derive(Debug)]
pub enum Progress {
    /// Wait for `fd` (if any) to become ready, or until `deadline`; then advance again.
    Wait {
        fd: Option<RawFd>,
        interest: Interest,
        deadline: Option<Instant>,
    },
    Connected(Endpoint),
    /// Every attempt failed (the last failure).
    Failed(DialError),
}

/// Why a dial failed: the last attempt's failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialError {
    /// The host name could not be resolved (the resolver's message).
    Resolve(String),
    /// Connecting to `target` failed.
    Connect { target: SockAddr, why: String },
    /// The hybrid-vsock VMM at `path` did not connect guest port `port`.
    GuestPort {
        port: u32,
        path: String,
        why: String,
    },
    /// The address named no target.
    NoAddress,
    /// The name resolved only to addresses the proxy's `dest=` list does not allow.
    NotAllowed { host: String, addresses: String },
    /// The dial was advanced after it had ended.
    Finished,
}

impl std::fmt::Display for DialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DialError::Resolve(e) => write!(f, "cannot resolve: {e}"),
            DialError::Connect { target, why } => write!(f, "connect to {target} failed: {why}"),
            DialError::GuestPort { port, path, why } => {
                write!(f, "guest port {port} refused via {path}: {why}")
            }
            DialError::NoAddress => f.write_str("no address to connect to"),
            DialError::NotAllowed { host, addresses } => {
                write!(
                    f,
                    "{host} resolved to {addresses}, which no dest= entry allows"
                )
            }
            DialError::Finished => f.write_str("dial already finished"),
        }
    }
}

impl std::error::Error for DialError {}

impl DialError {
    /// The class of the failure, from the last attempt's OS error.
    pub fn class(&self) -> FailureClass {
        let why = match self {
            DialError::NotAllowed { .. } => return FailureClass::NotAllowed,
            DialError::Resolve(why) if why.contains("timed out") => {
                return FailureClass::TimedOut;
            }
            DialError::Resolve(_) => return FailureClass::Unreachable,
            DialError::Connect { why, .. } | DialError::GuestPort { why, .. } => why,
            DialError::NoAddress | DialError::Finished => return FailureClass::Other,
        };
        let code = why
            .rsplit_once("(os error ")
            .and_then(|(_, rest)| rest.strip_suffix(')'))
            .and_then(|n| n.parse::<i32>().ok());
        match code {
            Some(libc::ECONNREFUSED) => FailureClass::Refused,
            Some(libc::ETIMEDOUT) => FailureClass::TimedOut,
            Some(libc::EHOSTUNREACH | libc::ENETUNREACH) => FailureClass::Unreachable,
            None if why.contains("timed out") => FailureClass::TimedOut,
            _ => FailureClass::Other,
        }
    }
}
