//! Non-blocking stream sockets of the three families vsplice relays between: TCP (IPv4 and
//! IPv6), UNIX and AF_VSOCK.
//!
//! [`Socket`] owns its descriptor and is always created `SOCK_NONBLOCK | SOCK_CLOEXEC`;
//! accepted sockets are too. Connecting is split into [`Socket::connect`] (start) and
//! [`Socket::take_error`] (finish after writability), so the io_uring workers can wait for it
//! without blocking, and [`connect_blocking`] wraps both for the few callers that may wait.

use std::fmt;
use std::io;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::socket::{
    self as ns, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, SockaddrIn6, SockaddrLike,
    SockaddrStorage, UnixAddr, VsockAddr,
};

use super::{cvt, from_nix};

/// A socket address of any family vsplice speaks.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SockAddr {
    Inet(SocketAddr),
    Unix(PathBuf),
    Vsock { cid: u32, port: u32 },
}

impl SockAddr {
    pub fn family(&self) -> AddressFamily {
        match self {
            SockAddr::Inet(SocketAddr::V4(_)) => AddressFamily::Inet,
            SockAddr::Inet(SocketAddr::V6(_)) => AddressFamily::Inet6,
            SockAddr::Unix(_) => AddressFamily::Unix,
            SockAddr::Vsock { .. } => AddressFamily::Vsock,
        }
    }

    /// Runs `f` with this address in the kernel's representation.
    fn with_raw<R>(&self, f: impl FnOnce(&dyn SockaddrLike) -> R) -> io::Result<R> {
        Ok(match self {
            SockAddr::Inet(SocketAddr::V4(a)) => f(&SockaddrIn::from(*a)),
            SockAddr::Inet(SocketAddr::V6(a)) => f(&SockaddrIn6::from(*a)),
            SockAddr::Unix(path) => f(&UnixAddr::new(path.as_path()).map_err(from_nix)?),
            SockAddr::Vsock { cid, port } => f(&VsockAddr::new(*cid, *port)),
        })
    }

    fn from_storage(ss: &SockaddrStorage) -> Option<SockAddr> {
        if let Some(a) = ss.as_sockaddr_in() {
            return Some(SockAddr::Inet(SocketAddr::V4(SocketAddrV4::from(*a))));
        }
        if let Some(a) = ss.as_sockaddr_in6() {
            let v6 = SocketAddrV6::from(*a);
            // A dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d; show them as IPv4.
            return Some(SockAddr::Inet(match v6.ip().to_ipv4_mapped() {
                Some(v4) => SocketAddr::new(v4.into(), v6.port()),
                None => SocketAddr::V6(v6),
            }));
        }
        if let Some(a) = ss.as_vsock_addr() {
            return Some(SockAddr::Vsock {
                cid: a.cid(),
                port: a.port(),
            });
        }
        if let Some(a) = ss.as_unix_addr() {
            return Some(SockAddr::Unix(
                a.path().map(Path::to_path_buf).unwrap_or_default(),
            ));
        }
        None
    }
}

impl fmt::Display for SockAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SockAddr::Inet(a) => write!(f, "{a}"),
            SockAddr::Unix(p) if p.as_os_str().is_empty() => write!(f, "unix:(unnamed)"),
            SockAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            SockAddr::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
        }
    }
}

/// How far a non-blocking connect got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectProgress {
    /// Connected already (UNIX sockets usually are).
    Connected,
    /// Wait for writability, then call [`Socket::take_error`].
    InProgress,
    /// The listener's backlog is full (UNIX sockets say EAGAIN): try again a little later.
    Busy,
}

/// The TCP states that tell how a peer ended (include/net/tcp_states.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpState {
    /// TCP_CLOSE: the connection is gone. With our own write side still open, only a reset
    /// (or a timeout) gets it here; after our FIN it is also where a clean close ends.
    Closed,
    /// TCP_CLOSE_WAIT: the peer's FIN came, and we may still send.
    CloseWait,
    /// Any other state, by its kernel number.
    Other(u8),
}

impl TcpState {
    pub fn from_raw(state: u8) -> TcpState {
        match state {
            7 => TcpState::Closed,
            8 => TcpState::CloseWait,
            other => TcpState::Other(other),
        }
    }
}

/// What a socket says about its peer's end (see [`Socket::peer_end`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerEnd {
    /// The pending error (SO_ERROR), if any.
    pub error: Option<i32>,
    /// The TCP state; `None` for UNIX and vsock sockets, which have no reset to tell.
    pub tcp_state: Option<TcpState>,
}

/// An owned, non-blocking stream socket.
#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
}

impl Socket {
    /// Creates a non-blocking, close-on-exec stream socket.
    pub fn new(family: AddressFamily) -> io::Result<Socket> {
        Socket::of_type(family, SockType::Stream)
    }

    /// Creates a non-blocking, close-on-exec socket of type `ty` (a stream, a SEQPACKET
    /// connection, a datagram socket).
    pub fn of_type(family: AddressFamily, ty: SockType) -> io::Result<Socket> {
        let fd = ns::socket(
            family,
            ty,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(from_nix)?;
        Ok(Socket { fd })
    }

    /// Wraps a descriptor that is already a connected stream socket.
    pub fn from_owned(fd: OwnedFd) -> Socket {
        Socket { fd }
    }

    pub fn bind(&self, addr: &SockAddr) -> io::Result<()> {
        addr.with_raw(|raw| ns::bind(self.fd.as_raw_fd(), raw))?
            .map_err(from_nix)
    }

    pub fn listen(&self, backlog: i32) -> io::Result<()> {
        let backlog = Backlog::new(backlog.max(1)).unwrap_or(Backlog::MAXCONN);
        ns::listen(&self.fd, backlog).map_err(from_nix)
    }

    /// Accepts one pending connection; `Ok(None)` when there is none right now.
    pub fn accept(&self) -> io::Result<Option<Socket>> {
        match ns::accept4(&self.fd, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC) {
            Ok(fd) => Ok(Some(Socket { fd })),
            Err(nix::Error::EAGAIN) => Ok(None),
            Err(e) => Err(from_nix(e)),
        }
    }

    /// Starts connecting to `addr` without blocking.
    pub fn connect(&self, addr: &SockAddr) -> io::Result<ConnectProgress> {
        match addr.with_raw(|raw| ns::connect(self.fd.as_raw_fd(), raw))? {
            Ok(()) => Ok(ConnectProgress::Connected),
            Err(nix::Error::EINPROGRESS) => Ok(ConnectProgress::InProgress),
            Err(nix::Error::EAGAIN) if addr.family() == AddressFamily::Unix => {
                Ok(ConnectProgress::Busy)
            }
            Err(e) => Err(from_nix(e)),
        }
    }

    /// The pending socket error (SO_ERROR), which finishes a non-blocking connect.
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        let code = ns::getsockopt(&self.fd, ns::sockopt::SocketError).map_err(from_nix)?;
        Ok((code != 0).then(|| io::Error::from_raw_os_error(code)))
    }

    /// What the socket says about how its peer ended, asked after a read returned end of
    /// file: the pending error (SO_ERROR; reading it clears it) and, for TCP, the state from
    /// TCP_INFO. Either a FIN or a reset makes a read return 0 once the reset's error was
    /// taken (by a write of the other direction, say); only these tell them apart.
    pub fn peer_end(&self) -> io::Result<PeerEnd> {
        self.peer_end_in(None)
    }

    /// As [`Socket::peer_end`], for a socket of the address family `domain` when the caller
    /// knows it (one `getsockopt` fewer); `None` asks the kernel (SO_DOMAIN).
    pub fn peer_end_in(&self, domain: Option<libc::c_int>) -> io::Result<PeerEnd> {
        let error = self.get_int(libc::SOL_SOCKET, libc::SO_ERROR)?;
        let domain = match domain {
            Some(d) => d,
            None => self.get_int(libc::SOL_SOCKET, libc::SO_DOMAIN)?,
        };
        let tcp_state = if domain == libc::AF_INET || domain == libc::AF_INET6 {
            Some(TcpState::from_raw(self.tcp_info()?.tcpi_state))
        } else {
            None
        };
        Ok(PeerEnd {
            error: (error != 0).then_some(error),
            tcp_state,
        })
    }

    /// TCP_INFO of a TCP socket.
    fn tcp_info(&self) -> io::Result<libc::tcp_info> {
        // SAFETY: tcp_info is plain old data; all zeroes is a valid value.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: `info` and `len` are live locals; the kernel writes at most `len` bytes
        // (fewer on an older kernel, which leaves the rest zero).
        cvt(unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            )
        })?;
        Ok(info)
    }

    /// Makes the coming close abort the connection (SO_LINGER with a zero timeout): a TCP peer
    /// gets a reset (ECONNRESET) instead of a FIN, so it cannot take a truncated stream for a
    /// whole one. UNIX and vsock sockets have no reset; there the option changes nothing.
    pub fn reset_on_close(&self) -> io::Result<()> {
        let abort = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        ns::setsockopt(&self.fd, ns::sockopt::Linger, &abort).map_err(from_nix)
    }

    /// Half-closes: the peer reads end of file, and we can still receive.
    pub fn shutdown_write(&self) -> io::Result<()> {
        match ns::shutdown(self.fd.as_raw_fd(), ns::Shutdown::Write) {
            // The peer is already gone; there is nothing left to tell it.
            Ok(()) | Err(nix::Error::ENOTCONN) => Ok(()),
            Err(e) => Err(from_nix(e)),
        }
    }

    pub fn local_addr(&self) -> io::Result<SockAddr> {
        let ss: SockaddrStorage = ns::getsockname(self.fd.as_raw_fd()).map_err(from_nix)?;
        SockAddr::from_storage(&ss).ok_or_else(|| io::Error::other("unknown address family"))
    }

    pub fn peer_addr(&self) -> io::Result<SockAddr> {
        let ss: SockaddrStorage = ns::getpeername(self.fd.as_raw_fd()).map_err(from_nix)?;
        SockAddr::from_storage(&ss).ok_or_else(|| io::Error::other("unknown address family"))
    }

    /// Sets an integer socket option.
    pub fn set_int(
        &self,
        level: libc::c_int,
        name: libc::c_int,
        value: libc::c_int,
    ) -> io::Result<()> {
        // SAFETY: the pointer and length describe `value`, a live c_int, for the whole call;
        // the kernel copies it and keeps no reference.
        cvt(unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        })
        .map(drop)
    }

    /// Reads an integer socket option.
    pub fn get_int(&self, level: libc::c_int, name: libc::c_int) -> io::Result<libc::c_int> {
        get_int_option(self.fd.as_fd(), level, name)
    }

    /// Sets a socket option whose value is a u64 (vsock buffer sizes and timeouts).
    pub fn set_u64(&self, level: libc::c_int, name: libc::c_int, value: u64) -> io::Result<()> {
        // SAFETY: as in `set_int`, for a live u64.
        cvt(unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (&value as *const u64).cast(),
                std::mem::size_of::<u64>() as libc::socklen_t,
            )
        })
        .map(drop)
    }

    /// Fixes a TCP socket's receive buffer (the kernel's `sk_rcvbuf`) at about `bytes`,
    /// which also turns receive autotuning off. Sockets of other families are left alone
    /// (`Ok(false)`): vsock and UNIX queues do not count against TCP's memory limits.
    pub fn cap_tcp_receive_buffer(&self, bytes: usize) -> io::Result<bool> {
        let domain = self.get_int(libc::SOL_SOCKET, libc::SO_DOMAIN)?;
        if domain != libc::AF_INET && domain != libc::AF_INET6 {
            return Ok(false);
        }
        // The kernel doubles the value it is given (bookkeeping overhead). SO_RCVBUFFORCE
        // passes net.core.rmem_max when the process may (CAP_NET_ADMIN).
        let value = libc::c_int::try_from(bytes / 2).unwrap_or(libc::c_int::MAX);
        match self.set_int(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, value) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                self.set_int(libc::SOL_SOCKET, libc::SO_RCVBUF, value)?
            }
            other => other?,
        }
        Ok(true)
    }

    /// Receives one datagram without waiting: its length and sender; `Ok(None)` when none
    /// is queued. `buf` should hold the largest datagram (64 KiB): a longer one is cut.
    pub fn recv_from(&self, buf: &mut [u8]) -> io::Result<Option<(usize, SockAddr)>> {
        match ns::recvfrom::<SockaddrStorage>(self.fd.as_raw_fd(), buf) {
            Ok((n, Some(from))) => Ok(SockAddr::from_storage(&from).map(|a| (n, a))),
            Ok((_, None)) => Ok(None),
            Err(nix::Error::EAGAIN) => Ok(None),
            Err(e) => Err(from_nix(e)),
        }
    }

    pub fn into_owned(self) -> OwnedFd {
        self.fd
    }
}

impl AsFd for Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Waits until `fd` reports one of `events`, or `deadline` passes.
fn wait_for(
    fd: BorrowedFd<'_>,
    events: nix::poll::PollFlags,
    deadline: Option<Instant>,
) -> io::Result<bool> {
    use nix::poll::{PollFd, PollTimeout, poll};
    loop {
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(false);
                }
                PollTimeout::try_from(left.as_millis().max(1).min(i32::MAX as u128) as i32)
                    .unwrap_or(PollTimeout::MAX)
            }
        };
        let mut fds = [PollFd::new(fd, events)];
        match poll(&mut fds, timeout) {
            Ok(0) => continue,
            Ok(_) => return Ok(true),
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(from_nix(e)),
        }
    }
}

/// Reads an integer socket option of any descriptor (one not yet known to be a socket:
/// ENOTSOCK then), without taking or duplicating it.
pub fn get_int_option(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are live locals the kernel writes at most `len` bytes to;
    // `fd` is borrowed, so it stays open for the call.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    Ok(value)
}

/// Connects `socket` to `addr`, waiting at most `timeout` (or for ever). The socket stays
/// non-blocking. A UNIX listener with a full backlog is retried until the deadline.
pub fn connect_blocking(
    socket: &Socket,
    addr: &SockAddr,
    timeout: Option<Duration>,
) -> io::Result<()> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "connect timed out");
    loop {
        match socket.connect(addr)? {
            ConnectProgress::Connected => return Ok(()),
            ConnectProgress::InProgress => {
                if !wait_for(socket.as_fd(), nix::poll::PollFlags::POLLOUT, deadline)? {
                    return Err(timed_out());
                }
                return match socket.take_error()? {
                    None => Ok(()),
                    Some(e) => Err(e),
                };
            }
            ConnectProgress::Busy => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(timed_out());
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
}

/// Waits until `fd` is writable (or `deadline` passes); used by blocking helpers.
pub fn wait_writable(fd: BorrowedFd<'_>, deadline: Option<Instant>) -> io::Result<bool> {
    wait_for(fd, nix::poll::PollFlags::POLLOUT, deadline)
}

/// Waits until `fd` is readable (or `deadline` passes); used by blocking helpers.
pub fn wait_readable(fd: BorrowedFd<'_>, deadline: Option<Instant>) -> io::Result<bool> {
    wait_for(fd, nix::poll::PollFlags::POLLIN, deadline)
}

/// The credentials of a UNIX socket's peer process, as the kernel recorded them at connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCredentials {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

impl Socket {
    /// The peer's credentials (SO_PEERCRED); UNIX sockets only.
    pub fn peer_credentials(&self) -> io::Result<PeerCredentials> {
        let c = ns::getsockopt(&self.fd, ns::sockopt::PeerCredentials).map_err(from_nix)?;
        Ok(PeerCredentials {
            pid: c.pid(),
            uid: c.uid(),
            gid: c.gid(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_listen_connect_accept_shutdown() {
        let listener = Socket::new(AddressFamily::Inet).unwrap();
        listener
            .bind(&SockAddr::Inet("127.0.0.1:0".parse().unwrap()))
            .unwrap();
        listener.listen(16).unwrap();
        let addr = listener.local_addr().unwrap();
        let client = Socket::new(AddressFamily::Inet).unwrap();
        connect_blocking(&client, &addr, Some(Duration::from_secs(5))).unwrap();
        wait_readable(listener.as_fd(), None).unwrap();
        let server = listener.accept().unwrap().expect("pending connection");
        assert_eq!(server.peer_addr().unwrap(), client.local_addr().unwrap());
        client.shutdown_write().unwrap();
        wait_readable(server.as_fd(), None).unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(
            nix::unistd::read(server.as_fd(), &mut buf).unwrap(),
            0,
            "peer sees end of file after shutdown_write"
        );
        assert!(listener.accept().unwrap().is_none());
    }

    #[test]
    fn peer_end_tells_a_reset_from_a_fin_after_the_error_was_taken() {
        fn pair() -> (Socket, std::net::TcpStream) {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (ours, _) = listener.accept().unwrap();
            (Socket::from_owned(OwnedFd::from(ours)), peer)
        }
        let (ours, peer) = pair();
        peer.shutdown(std::net::Shutdown::Write).unwrap();
        wait_readable(ours.as_fd(), None).unwrap();
        assert_eq!(
            ours.peer_end().unwrap(),
            PeerEnd {
                error: None,
                tcp_state: Some(TcpState::CloseWait)
            },
            "a FIN"
        );
        let (ours, peer) = pair();
        let abort = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        ns::setsockopt(&peer, ns::sockopt::Linger, &abort).unwrap();
        drop(peer);
        wait_readable(ours.as_fd(), None).unwrap();
        let end = ours.peer_end().unwrap();
        assert_eq!(
            end,
            PeerEnd {
                error: Some(libc::ECONNRESET),
                tcp_state: Some(TcpState::Closed)
            },
            "a reset"
        );
        assert_eq!(
            ours.peer_end().unwrap().tcp_state,
            Some(TcpState::Closed),
            "the error is taken now; the state still says reset"
        );
        assert_eq!(
            ours.peer_end_in(Some(libc::AF_INET)).unwrap().tcp_state,
            Some(TcpState::Closed),
            "the family given, not asked: the same answer"
        );
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let unix = Socket::from_owned(OwnedFd::from(a));
        assert_eq!(unix.peer_end().unwrap().tcp_state, None);
    }

    #[test]
    fn refused_connect_reports_the_os_error() {
        let probe = Socket::new(AddressFamily::Inet).unwrap();
        probe
            .bind(&SockAddr::Inet("127.0.0.1:0".parse().unwrap()))
            .unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let client = Socket::new(AddressFamily::Inet).unwrap();
        let err = connect_blocking(&client, &addr, Some(Duration::from_secs(5))).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ECONNREFUSED));
    }

    #[test]
    fn display_forms() {
        assert_eq!(
            SockAddr::Vsock { cid: 3, port: 5201 }.to_string(),
            "vsock:3:5201"
        );
        assert_eq!(SockAddr::Unix("/run/x".into()).to_string(), "unix:/run/x");
    }
}
