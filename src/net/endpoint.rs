//! An opened end of a relay: a connected socket, or standard input and output.
//!
//! An [`Endpoint`] owns its descriptors. It knows which descriptor the relay reads from and
//! which it writes to (the same socket, or fd 0 and fd 1), whether each can take part in
//! splice(2), and how to pass end of file on: `shutdown(SHUT_WR)` for a socket, closing fd 1
//! for standard output (so a reader of our stdout sees EOF).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::protocols::prelude::Origin;
use crate::sys::socket::{PeerEnd, Socket};
use crate::sys::stdio;

#[derive(Debug)]
enum Io {
    Socket(Socket),
    Stdio {
        input: Option<OwnedFd>,
        output: Option<OwnedFd>,
    },
    /// The socket lives on as an io_uring direct descriptor (see [`Endpoint::take_socket`]).
    Parked,
}

/// One opened end of a relayed connection.
#[derive(Debug)]
pub struct Endpoint {
    io: Io,
    label: String,
    /// The socket's address family (SO_DOMAIN), kept when the socket is parked.
    domain: Option<libc::c_int>,
    /// End of file was passed on to this endpoint's reader ([`Endpoint::shutdown_write`]).
    write_shut: bool,
    /// The socket's type (SO_TYPE): a SEQPACKET or datagram socket carries messages.
    sock_type: Option<libc::c_int>,
    /// A stream that carries messages, each behind a 2-byte length (`framing=len16`).
    framed: bool,
    /// A message received before the endpoint was handed over (a UDP session's first
    /// datagram), for its direction to send first.
    first_messages: std::sync::Mutex<Vec<Vec<u8>>>,
    /// Who the client is when the listener knows better than the socket's peer (the guest
    /// behind a hybrid vsock listener with `guest-cid`); `None`: the socket's peer.
    origin: Option<Origin>,
}

impl Endpoint {
    /// A socket whose family and type are asked of the kernel (SO_DOMAIN, SO_TYPE).
    pub fn socket(socket: Socket, label: String) -> Endpoint {
        let domain = socket.get_int(libc::SOL_SOCKET, libc::SO_DOMAIN).ok();
        let sock_type = socket.get_int(libc::SOL_SOCKET, libc::SO_TYPE).ok();
        Endpoint::socket_with(socket, label, domain, sock_type)
    }

    /// A socket whose family (`AF_*`) and type (`SOCK_*`) the caller knows: it made the
    /// socket, or accepted it on a listener of a known kind. Saves the two `getsockopt`
    /// calls of [`Endpoint::socket`], a tenth of a short relayed connection's system calls.
    pub fn socket_of(
        socket: Socket,
        label: String,
        domain: libc::c_int,
        sock_type: libc::c_int,
    ) -> Endpoint {
        Endpoint::socket_with(socket, label, Some(domain), Some(sock_type))
    }

    fn socket_with(
        socket: Socket,
        label: String,
        domain: Option<libc::c_int>,
        sock_type: Option<libc::c_int>,
    ) -> Endpoint {
        Endpoint {
            io: Io::Socket(socket),
            label,
            domain,
            write_shut: false,
            sock_type,
            framed: false,
            first_messages: Default::default(),
            origin: None,
        }
    }

    /// Declares who the client is, for a `send-proxy` header and the logs.
    pub fn with_origin(mut self, origin: Option<Origin>) -> Endpoint {
        self.origin = origin;
        self
    }

    /// The declared client ([`Endpoint::with_origin`]), if any.
    pub fn origin(&self) -> Option<&Origin> {
        self.origin.as_ref()
    }

    /// Carries `messages`, received before the handover, for the direction reading this end
    /// to send first, in order.
    pub fn with_first_messages(self, messages: Vec<Vec<u8>>) -> Endpoint {
        *self
            .first_messages
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = messages;
        self
    }

    /// The messages received before the handover, once.
    pub fn take_first_messages(&self) -> Vec<Vec<u8>> {
        std::mem::take(
            &mut *self
                .first_messages
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }

    /// Marks a stream endpoint as carrying messages behind 2-byte lengths (`framing=len16`).
    pub fn with_framing(mut self, framed: bool) -> Endpoint {
        self.framed = framed;
        self
    }

    /// Whether the socket keeps message boundaries (SOCK_SEQPACKET or SOCK_DGRAM).
    pub fn is_message(&self) -> bool {
        matches!(
            self.sock_type,
            Some(libc::SOCK_SEQPACKET | libc::SOCK_DGRAM)
        )
    }

    /// Whether this is a datagram socket (UDP).
    pub fn is_datagram(&self) -> bool {
        self.sock_type == Some(libc::SOCK_DGRAM)
    }

    /// Whether this stream carries messages behind 2-byte lengths (`framing=len16`).
    pub fn is_framed(&self) -> bool {
        self.framed
    }

    /// Whether this is an AF_UNIX socket.
    pub fn is_unix(&self) -> bool {
        self.domain == Some(libc::AF_UNIX)
    }

    /// Whether this is an AF_VSOCK socket (hybrid vsock is a UNIX socket, and is not).
    pub fn is_vsock(&self) -> bool {
        self.domain == Some(libc::AF_VSOCK)
    }

    /// Takes ownership of fds 0 and 1. Only one STDIO endpoint may exist in a process.
    pub fn stdio() -> io::Result<Endpoint> {
        let (input, output) = stdio::take()?;
        Ok(Endpoint {
            io: Io::Stdio {
                input: Some(input),
                output: Some(output),
            },
            label: "STDIO".to_string(),
            domain: None,
            write_shut: false,
            sock_type: None,
            framed: false,
            first_messages: Default::default(),
            origin: None,
        })
    }

    /// The descriptor bytes are read from; `None` once standard input is gone.
    pub fn read_fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.io {
            Io::Socket(s) => Some(s.as_fd()),
            Io::Stdio { input, .. } => input.as_ref().map(AsFd::as_fd),
            Io::Parked => None,
        }
    }

    /// The descriptor bytes are written to; `None` after standard output was closed.
    pub fn write_fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.io {
            Io::Socket(s) => Some(s.as_fd()),
            Io::Stdio { output, .. } => output.as_ref().map(AsFd::as_fd),
            Io::Parked => None,
        }
    }

    /// Passes end of file on to whoever reads from this endpoint.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        self.write_shut = true;
        match &mut self.io {
            Io::Socket(s) => s.shutdown_write(),
            Io::Stdio { output, .. } => {
                drop(output.take());
                Ok(())
            }
            Io::Parked => Err(io::Error::from_raw_os_error(libc::EBADF)),
        }
    }

    /// Whether this endpoint may still be written to: no end of file was passed on to it.
    pub fn write_open(&self) -> bool {
        !self.write_shut
    }

    /// How this endpoint's peer ended (see [`Socket::peer_end`]), asked after a read returned
    /// end of file; `None` where there is nothing to ask: standard input, a parked socket
    /// (no descriptor), or a socket that cannot say.
    pub fn peer_end(&self) -> Option<PeerEnd> {
        match &self.io {
            Io::Socket(s) => s.peer_end_in(self.domain).ok(),
            Io::Stdio { .. } | Io::Parked => None,
        }
    }

    /// Makes closing this endpoint reset its peer (see [`Socket::reset_on_close`]); nothing for
    /// standard input and output, or a socket parked without a descriptor.
    pub fn reset_on_close(&self) -> io::Result<()> {
        match &self.io {
            Io::Socket(s) => s.reset_on_close(),
            Io::Stdio { .. } | Io::Parked => Ok(()),
        }
    }

    /// Whether splice(2) can read from this endpoint.
    pub fn can_splice_read(&self) -> bool {
        match &self.io {
            Io::Socket(_) | Io::Parked => true,
            Io::Stdio { input, .. } => input
                .as_ref()
                .is_some_and(|fd| stdio::can_splice_from(fd.as_fd())),
        }
    }

    /// Whether splice(2) can write to this endpoint.
    pub fn can_splice_write(&self) -> bool {
        match &self.io {
            Io::Socket(_) | Io::Parked => true,
            Io::Stdio { output, .. } => output
                .as_ref()
                .is_some_and(|fd| stdio::can_splice_to(fd.as_fd())),
        }
    }

    pub fn is_socket(&self) -> bool {
        matches!(self.io, Io::Socket(_) | Io::Parked)
    }

    /// Takes the socket out, leaving the endpoint without a descriptor: the engine parks an
    /// idle connection's sockets in its io_uring fixed-file table (direct descriptors do not
    /// count against RLIMIT_NOFILE) and closes the real ones.
    pub fn take_socket(&mut self) -> Option<Socket> {
        match std::mem::replace(&mut self.io, Io::Parked) {
            Io::Socket(s) => Some(s),
            other => {
                self.io = other;
                None
            }
        }
    }

    /// The socket, while it has a descriptor: for a handshake the worker runs on it, and for
    /// asking who its ends are.
    pub fn as_socket(&self) -> Option<&Socket> {
        match &self.io {
            Io::Socket(s) => Some(s),
            Io::Stdio { .. } | Io::Parked => None,
        }
    }

    /// The socket, for callers that do their own I/O (the bench).
    pub fn into_socket(self) -> Option<Socket> {
        match self.io {
            Io::Socket(s) => Some(s),
            Io::Stdio { .. } | Io::Parked => None,
        }
    }

    /// Caps a TCP socket's receive buffer (see [`Socket::cap_tcp_receive_buffer`]); `Ok(false)`
    /// for other ends.
    pub fn cap_tcp_receive_buffer(&self, bytes: usize) -> io::Result<bool> {
        match &self.io {
            Io::Socket(s) => s.cap_tcp_receive_buffer(bytes),
            Io::Stdio { .. } | Io::Parked => Ok(false),
        }
    }

    /// A short description for logs: the peer address, or "STDIO".
    pub fn label(&self) -> &str {
        &self.label
    }
}
