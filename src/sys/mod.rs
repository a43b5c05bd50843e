//! Every raw system call vsplice makes outside io_uring, behind safe RAII wrappers.
//!
//! One module per kernel object: [`socket`] (non-blocking stream sockets of the three
//! families), `pipe` (a pipe that owns and closes both ends, plus `splice`), `eventfd`,
//! `signal` (signalfd and the process signal setup), `bufring` (memory shared with
//! io_uring for provided buffers), `mapping` (the staging buffers' own memory), `stdio`,
//! `message` (whole messages on SEQPACKET and datagram sockets),
//! `limits` (RLIMIT_NOFILE, pipe quotas), [`systemd`] (sd_notify, socket activation),
//! `handover` (listening sockets passed to a new binary at an upgrade), and `tsc` (the
//! CPU's time-stamp counter, not a system call: a clock read where the kernel's is one).
//! Descriptors are `OwnedFd` from the moment the
//! kernel returns them, so no error path leaks one. Nothing outside this module and the
//! io_uring worker calls `libc` directly.

pub(crate) mod bufring;
pub(crate) mod eventfd;
pub(crate) mod handover;
pub(crate) mod limits;
pub(crate) mod mapping;
pub(crate) mod message;
pub(crate) mod pipe;
pub(crate) mod signal;
pub mod socket;
pub(crate) mod sockfilter;
pub(crate) mod stdio;
pub mod systemd;
pub(crate) mod tsc;
pub(crate) mod zerocopy;

use std::io;

/// Turns a `-1`-on-error libc return value into an `io::Result`.
pub(crate) fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Turns a nix error into the std error type the rest of vsplice uses.
pub(crate) fn from_nix(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}
