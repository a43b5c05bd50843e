//! A blocking bench connection ([`Stream`]), shared by client and server, and the few
//! helpers its loops share: how an I/O error reads in a report, parking until a deadline, and
//! writing a control line. The loops themselves: `send.rs`, `receive.rs`, and `end.rs` (one end
//! of one stream, both loops together).
//!
//! A stream never ends by the transport's half-close: several hybrid-vsock backends drop a
//! guest's SHUT_WR or turn a host's into a full shutdown. A sender just stops and reports its
//! count (the control connection carries it to the other end); a receiver stops once its
//! `Expect` holds that count and it has as many bytes, or gives up on the missing ones after
//! `MISSING_GRACE`, naming the stream.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, OFlag, fcntl};

use crate::net::endpoint::Endpoint;
use crate::sys::zerocopy;

/// A connected, blocking socket.
#[derive(Debug)]
pub(crate) struct Stream {
    pub(super) file: File,
    family: &'static str,
    /// SOCK_SEQPACKET: every write is one message, every read one whole message.
    messages: bool,
}

impl Stream {
    pub(crate) fn from_endpoint(endpoint: Endpoint) -> io::Result<Stream> {
        let label = endpoint.label().to_string();
        let messages = endpoint.is_message();
        let socket = endpoint
            .into_socket()
            .ok_or_else(|| io::Error::other("the bench needs a socket address, not STDIO"))?;
        let fd: OwnedFd = socket.into_owned();
        let flags = OFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GETFL)?);
        fcntl(&fd, FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK))?;
        let family = if label.starts_with("unix:") {
            "UNIX"
        } else if label.starts_with("vsock:") {
            "vsock"
        } else {
            "TCP"
        };
        Ok(Stream {
            file: File::from(fd),
            family,
            messages,
        })
    }

    /// Bounds every blocking read and write, so a vanished peer gives an error, not a hang.
    pub(crate) fn set_timeouts(&self, timeout: Duration) -> io::Result<()> {
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        for opt in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
            // SAFETY: the pointer and length describe `tv`, live for the call.
            crate::sys::cvt(unsafe {
                libc::setsockopt(
                    self.file.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&tv as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                )
            })?;
        }
        Ok(())
    }

    /// Bounds blocking reads only: the receiver wakes this often to see whether its count
    /// arrived over control.
    pub(super) fn set_recv_timeout(&self, timeout: Duration) -> io::Result<()> {
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: the pointer and length describe `tv`, live for the call.
        crate::sys::cvt(unsafe {
            libc::setsockopt(
                self.file.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        })?;
        Ok(())
    }

    pub(crate) fn enable_zerocopy(&self) -> io::Result<()> {
        zerocopy::enable(self.file.as_fd()).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "--zerocopy: {} sockets do not support MSG_ZEROCOPY here ({e})",
                    self.family
                ),
            )
        })
    }

    /// A SOCK_SEQPACKET connection (`--seqpacket`).
    pub(crate) fn is_message(&self) -> bool {
        self.messages
    }

    pub(crate) fn is_vsock(&self) -> bool {
        self.family == "vsock"
    }

    /// Sets the vsock buffer (SO_VM_SOCKETS_BUFFER_MAX_SIZE, then _SIZE, which the kernel
    /// clamps to the maximum) and reads back what took effect. Only for vsock sockets.
    pub(crate) fn set_vsock_buffer(&self, size: u64) -> io::Result<u64> {
        const SO_VM_SOCKETS_BUFFER_SIZE: libc::c_int = 0;
        const SO_VM_SOCKETS_BUFFER_MAX_SIZE: libc::c_int = 2;
        let fd = self.file.as_raw_fd();
        for opt in [SO_VM_SOCKETS_BUFFER_MAX_SIZE, SO_VM_SOCKETS_BUFFER_SIZE] {
            // SAFETY: the pointer and length describe `size`, a u64 as the option expects,
            // live for the call.
            crate::sys::cvt(unsafe {
                libc::setsockopt(
                    fd,
                    libc::AF_VSOCK,
                    opt,
                    (&size as *const u64).cast(),
                    std::mem::size_of::<u64>() as libc::socklen_t,
                )
            })?;
        }
        let mut got: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        // SAFETY: `got` and `len` are live for the call and describe a u64 buffer.
        crate::sys::cvt(unsafe {
            libc::getsockopt(
                fd,
                libc::AF_VSOCK,
                SO_VM_SOCKETS_BUFFER_SIZE,
                (&mut got as *mut u64).cast(),
                &mut len,
            )
        })?;
        Ok(got)
    }

    pub(crate) fn reader(&self) -> &File {
        &self.file
    }

    pub(crate) fn writer(&self) -> &File {
        &self.file
    }
}

pub(super) fn describe(e: &io::Error, what: &str) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            format!("{what} timed out (peer gone or stalled)")
        }
        _ => format!("{what} failed: {e}"),
    }
}

/// Parks this thread until `due` or until `stop` is set (whoever sets it unparks this
/// thread); `true` if `stop` ended the wait.
pub(super) fn park_until(due: Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::SeqCst) {
            return true;
        }
        let now = Instant::now();
        if now >= due {
            return false;
        }
        std::thread::park_timeout(due - now);
    }
}
