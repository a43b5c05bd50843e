//! A non-blocking eventfd: the wake-up a worker's io_uring sees when another thread hands it
//! work, and the acceptor's "a connection slot is free" signal.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use nix::sys::eventfd::{EfdFlags, EventFd as NixEventFd};

use super::from_nix;

/// A counter the kernel can poll; `notify` adds one, `drain` reads and resets it.
#[derive(Debug)]
pub(crate) struct EventFd(NixEventFd);

impl EventFd {
    pub(crate) fn new() -> io::Result<EventFd> {
        NixEventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
            .map(EventFd)
            .map_err(from_nix)
    }

    /// Wakes whoever polls this eventfd. Never blocks: a saturated counter is still readable.
    pub(crate) fn notify(&self) {
        let _ = self.0.write(1);
    }

    /// Resets the counter, returning how many notifications were pending.
    pub(crate) fn drain(&self) -> u64 {
        self.0.read().unwrap_or(0)
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}
