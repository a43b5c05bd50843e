//! The counters every worker and the acceptor share: connections live, served and failed,
//! bytes each way, parked and busy connections, and the eventfd that tells the acceptor a
//! connection closed.

use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::sys::eventfd::EventFd;

/// Counters shared by all workers and the acceptor.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Connections handed to workers and not yet closed.
    pub live: AtomicUsize,
    /// Connections that ended well / badly.
    pub served: AtomicU64,
    pub failed: AtomicU64,
    /// Bytes delivered [first->second, second->first].
    pub bytes: [AtomicU64; 2],
    /// Numbers connections for logs.
    pub next_id: AtomicU64,
    /// Notified when a connection closes, if `wake_on_close` is set.
    pub closed: EventFd,
    /// Whether the acceptor waits for closes (`max-children`, or a single connection);
    /// otherwise closes do not wake it.
    pub wake_on_close: std::sync::atomic::AtomicBool,
    /// Connections whose sockets are parked in a fixed-file table (no descriptors).
    pub parked: AtomicUsize,
    /// Connections that moved data lately, as the workers last counted them (the receive
    /// budget's divisor).
    pub busy: AtomicUsize,
}

impl Shared {
    pub(crate) fn new() -> io::Result<Shared> {
        Ok(Shared {
            live: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            bytes: [AtomicU64::new(0), AtomicU64::new(0)],
            next_id: AtomicU64::new(1),
            closed: EventFd::new()?,
            wake_on_close: std::sync::atomic::AtomicBool::new(true),
            parked: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
        })
    }
}

impl Shared {
    /// Tells the acceptor a connection closed, when it waits for that.
    pub(crate) fn notify_closed(&self) {
        if self.wake_on_close.load(Ordering::Relaxed) {
            self.closed.notify();
        }
    }
}
