//! Turning parsed addresses into sockets: listeners (with their per-connection options) and
//! sockets to connect, with their options ([`super::sockopt`]) and bind addresses.
//!
//! Names are looked up ([`super::resolve`]) at open time and again for every connection and
//! retry round, so a relay never keeps using an address that DNS has since changed.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use nix::sys::socket::AddressFamily;

use super::admit::admit;
use super::resolve::resolve_host;
use super::sockopt::{apply_connected_options, apply_pre_options, bind_address};
use super::udp::{Pending, Recent, Session, next_held_session, next_session};
use crate::addr::{Address, Bind, Family, Kind, SocketType};
use crate::error::Error;
use crate::net::endpoint::Endpoint;
use crate::sys::socket::{SockAddr, Socket};

/// Backlog when none is given. socat uses 5; a relay that serves bursts of connections needs
/// more (vsock has no SYN retry, so a full backlog refuses the connection outright).
pub(crate) const DEFAULT_BACKLOG: u32 = 1024;

/// A fresh socket for connecting `address` to `target`, with its pre-connect options and bind.
pub(crate) fn connect_socket(address: &Address, target: &SockAddr) -> io::Result<Socket> {
    let family = target.family();
    let socket = Socket::of_type(family, sock_type(address))?;
    apply_pre_options(&socket, family, &address.options, false)?;
    if let Some(bind) = &address.options.bind {
        socket.bind(&bind_address(bind, family)?)?;
    }
    Ok(socket)
}

/// Wraps a connected socket as an endpoint, with its post-connect options.
pub(crate) fn connected_endpoint(
    address: &Address,
    socket: Socket,
    target: &SockAddr,
) -> io::Result<Endpoint> {
    if matches!(address.kind, Kind::TcpConnect { .. }) {
        apply_connected_options(&socket, &address.options)?;
    }
    let framed = address.options.framing.is_some();
    // `connect_socket` made it of the target's family and the address's type.
    let (domain, ty) = (
        target.family() as libc::c_int,
        sock_type(address) as libc::c_int,
    );
    Ok(Endpoint::socket_of(socket, target.to_string(), domain, ty).with_framing(framed))
}

/// The receive buffer of a UDP-LISTEN socket (where the process may set it).
const UDP_LISTEN_RCVBUF: libc::c_int = 4 << 20;

/// The socket type of an address: a datagram socket for UDP, otherwise what its options ask
/// for (`socktype=`; a stream without).
fn sock_type(address: &Address) -> nix::sys::socket::SockType {
    use nix::sys::socket::SockType;
    if address.kind.tag().is_udp() {
        return SockType::Datagram;
    }
    match address.options.socktype {
        Some(SocketType::Seqpacket) => SockType::SeqPacket,
        Some(SocketType::Stream) | None => SockType::Stream,
    }
}

/// A listening socket and what it needs to clean up.
#[derive(Debug)]
pub struct Listener {
    socket: Socket,
    address: Address,
    local: SockAddr,
    /// The UNIX socket file this listener created, with its device and inode, removed on
    /// drop if that file is still the one at the path.
    socket_file: Option<(PathBuf, FileId)>,
    /// Label accepted connections with their peer address (a getpeername per connection).
    peer_labels: bool,
    /// UDP-LISTEN: the senders whose sessions started recently, and datagrams taken for
    /// sessions not made yet.
    recent: std::cell::RefCell<(Recent, Pending)>,
}

/// A file's identity: device and inode, as lstat(2) gives them.
type FileId = (u64, u64);

/// The identity of the socket file at `path`, if a socket is there.
fn socket_file_id(path: &std::path::Path) -> Option<FileId> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::symlink_metadata(path).ok()?;
    meta.file_type()
        .is_socket()
        .then(|| (meta.dev(), meta.ino()))
}

/// What stands at a UNIX-LISTEN path when it is not a socket (bind would only say "Address
/// already in use"); `None` when nothing is there or a socket is (a stale socket file keeps
/// the kernel's message).
fn not_a_socket(path: &std::path::Path) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    let kind = std::fs::symlink_metadata(path).ok()?.file_type();
    if kind.is_socket() {
        None
    } else if kind.is_file() {
        Some("a regular file")
    } else if kind.is_dir() {
        Some("a directory")
    } else if kind.is_symlink() {
        Some("a symbolic link")
    } else {
        Some("a special file")
    }
}

/// Where a listening address binds, resolved as [`Listener::open`] binds it (a `bind=` host
/// looked up now, the unspecified address of the family without one, the full path of a
/// hybrid vsock listener), and the socket file it creates, if any.
pub(crate) fn listen_local(address: &Address) -> Result<(SockAddr, Option<PathBuf>), Error> {
    let opts = &address.options;
    Ok(match &address.kind {
        Kind::TcpListen { port, family } | Kind::UdpListen { port, family } => {
            let local = match &opts.bind {
                Some(Bind::Inet { port: Some(p), .. }) if p != port => {
                    return Err(Error::Usage(format!(
                        "{}: bind port {p} differs from the listening port {port}",
                        address.text
                    )));
                }
                Some(Bind::Inet { host, .. }) => resolve_host(host, *port, *family)
                    .map(|a| SockAddr::Inet(a[0]))
                    .map_err(|source| Error::Resolve {
                        address: address.text.clone(),
                        source,
                    })?,
                _ => {
                    let ip = match family {
                        Family::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                        Family::V6 | Family::Any => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                    };
                    SockAddr::Inet(SocketAddr::new(ip, *port))
                }
            };
            (local, None)
        }
        Kind::UnixListen { path } => (SockAddr::Unix(path.clone()), Some(path.clone())),
        Kind::VsockUdsListen { path, port } => {
            let full = PathBuf::from(format!("{}_{}", path.display(), port));
            (SockAddr::Unix(full.clone()), Some(full))
        }
        Kind::VsockListen { port } => {
            let cid = match &opts.bind {
                Some(Bind::Vsock { cid: Some(c), .. }) => *c,
                _ => libc::VMADDR_CID_ANY,
            };
            (SockAddr::Vsock { cid, port: *port }, None)
        }
        _ => {
            return Err(Error::Usage(format!(
                "{} is not a listening address",
                address.text
            )));
        }
    })
}

impl Listener {
    /// Binds and listens. Errors name the address and the OS error.
    pub fn open(address: &Address) -> Result<Listener, Error> {
        let opts = &address.options;
        let (local, socket_file) = listen_local(address)?;
        let fail = |source: io::Error| Error::Listen {
            address: address.text.clone(),
            local: local.to_string(),
            source,
        };
        if let (Some(path), false) = (&socket_file, opts.unlink_early) {
            if let Some(what) = not_a_socket(path) {
                return Err(fail(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} is {what}, not a socket (remove it, or add unlink-early)",
                        path.display()
                    ),
                )));
            }
        }
        if let (Some(path), true) = (&socket_file, opts.unlink_early) {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(fail(e)),
            }
        }
        let (socket, local) = match Self::bind_listen(&local, address) {
            Ok(s) => (s, local),
            // A machine without IPv6 still serves the dual-stack default over IPv4.
            Err(e)
                if e.raw_os_error() == Some(libc::EAFNOSUPPORT)
                    && matches!(
                        address.kind,
                        Kind::TcpListen {
                            family: Family::Any,
                            ..
                        } | Kind::UdpListen {
                            family: Family::Any,
                            ..
                        }
                    )
                    && opts.bind.is_none() =>
            {
                let port = match local {
                    SockAddr::Inet(a) => a.port(),
                    _ => 0,
                };
                let v4 = SockAddr::Inet(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
                (Self::bind_listen(&v4, address).map_err(fail)?, v4)
            }
            Err(e) => return Err(fail(e)),
        };
        let local = socket.local_addr().unwrap_or(local);
        // Recorded right after bind: at exit the path is removed only if it still names this
        // file, not one another program put there after ours was removed.
        let socket_file = socket_file.and_then(|path| socket_file_id(&path).map(|id| (path, id)));
        Ok(Listener {
            socket,
            address: address.clone(),
            local,
            socket_file,
            peer_labels: true,
            recent: Default::default(),
        })
    }

    /// A listener on a socket another process opened for `address` and handed over (a binary
    /// upgrade): it removes the socket file at exit as the opener would have, if the path
    /// still names this socket.
    pub fn adopt(socket: Socket, address: &Address) -> Result<Listener, Error> {
        let (local, socket_file) = match address.kind {
            // Bound by whoever passed it: its address is the socket's own.
            Kind::AcceptFd { .. } => (
                socket
                    .local_addr()
                    .map_err(|e| Error::io(format!("{}: getsockname", address.text), e))?,
                None,
            ),
            _ => listen_local(address)?,
        };
        let local = socket.local_addr().unwrap_or(local);
        let socket_file = socket_file.and_then(|path| socket_file_id(&path).map(|id| (path, id)));
        Ok(Listener {
            socket,
            address: address.clone(),
            local,
            socket_file,
            peer_labels: true,
            recent: Default::default(),
        })
    }

    fn bind_listen(local: &SockAddr, address: &Address) -> io::Result<Socket> {
        let opts = &address.options;
        let family = local.family();
        let socket = Socket::of_type(family, sock_type(address))?;
        apply_pre_options(&socket, family, opts, true)?;
        if family == AddressFamily::Inet6 {
            // Dual stack for the unspecified address, so TCP-LISTEN serves IPv4 too.
            if let SockAddr::Inet(a) = local {
                if a.ip().is_unspecified() {
                    let _ = socket.set_int(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0);
                }
            }
        }
        socket.bind(local)?;
        if address.kind.tag().is_udp() {
            // Every sender's first datagrams queue here until its session is made: a larger
            // queue than the default, where the process may (SO_RCVBUFFORCE), unless the
            // address sets its own. No listen(2): sessions are made per sender (net::udp).
            if opts.rcvbuf.is_none() {
                let _ = socket.set_int(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, UDP_LISTEN_RCVBUF);
            }
            return Ok(socket);
        }
        let backlog = opts.backlog.unwrap_or(DEFAULT_BACKLOG);
        socket.listen(backlog.min(i32::MAX as u32) as i32)?;
        Ok(socket)
    }

    /// Accepts one pending connection that its allow list admits ([`super::admit`]) as an
    /// endpoint; `Ok(None)` when none is pending. Refused peers are closed on the way.
    pub fn accept(&self) -> io::Result<Option<Endpoint>> {
        if self.address.kind.tag().is_udp() {
            return self.accept_datagram();
        }
        loop {
            let Some(socket) = self.socket.accept()? else {
                return Ok(None);
            };
            let name = &self.address.text;
            if let Some(endpoint) = admit(&self.address, name, socket, self.peer_labels) {
                return Ok(Some(endpoint));
            }
        }
    }

    /// UDP-LISTEN: the next sender's session, its first datagram carried along (see
    /// [`super::udp`]).
    fn accept_datagram(&self) -> io::Result<Option<Endpoint>> {
        loop {
            let Some(session) = self.next_session()? else {
                return Ok(None);
            };
            let name = &self.address.text;
            if let Some(endpoint) = admit(&self.address, name, session.socket, self.peer_labels) {
                return Ok(Some(endpoint.with_first_messages(session.first)));
            }
        }
    }

    /// UDP-LISTEN: the next sender's session, not yet admitted (its owner checks the allow
    /// list it serves now); `Ok(None)` when no datagram waits.
    pub(crate) fn next_session(&self) -> io::Result<Option<Session>> {
        let mut state = self.recent.borrow_mut();
        let (recent, pending) = &mut *state;
        next_session(&self.socket, &self.local, pending, recent)
    }

    /// UDP-LISTEN: the session of a datagram this listener already took, reading nothing
    /// new; `Ok(None)` when it holds none. Called until `None` by an owner that stops making
    /// sessions, so no datagram it took is dropped.
    pub(crate) fn next_held_session(&self) -> io::Result<Option<Session>> {
        let mut state = self.recent.borrow_mut();
        let (recent, pending) = &mut *state;
        next_held_session(&self.socket, &self.local, pending, recent)
    }

    /// Whether accepted connections are labelled with their peer address. Off saves a
    /// system call per connection when nothing will print the label.
    pub fn set_peer_labels(&mut self, on: bool) {
        self.peer_labels = on;
    }

    pub fn local_addr(&self) -> &SockAddr {
        &self.local
    }

    pub fn address(&self) -> &Address {
        &self.address
    }

    pub fn socket(&self) -> &Socket {
        &self.socket
    }
}

/// Set once this process has handed its listening sockets to another (a binary upgrade):
/// their socket files are the new process's now, and none is removed here.
static SOCKET_FILES_HANDED_OVER: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Leaves every listener's socket file in place from now on: another process serves on
/// these sockets (a binary upgrade handed them over).
pub(crate) fn keep_socket_files() {
    SOCKET_FILES_HANDED_OVER.store(true, std::sync::atomic::Ordering::SeqCst);
}

impl Drop for Listener {
    fn drop(&mut self) {
        if SOCKET_FILES_HANDED_OVER.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        if let Some((path, id)) = &self.socket_file {
            // unlink(2) cannot be told which inode to remove: a swap in the instant between
            // this check and the unlink would still lose its file; any time before is safe.
            if socket_file_id(path) == Some(*id) {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::resolve::connect_targets;

    #[test]
    fn tcp_listener_is_dual_stack_and_reports_its_port() {
        let addr = Address::parse("TCP-LISTEN:0").unwrap();
        let l = Listener::open(&addr).unwrap();
        let SockAddr::Inet(local) = l.local_addr() else {
            panic!("inet listener")
        };
        assert_ne!(local.port(), 0);
    }

    #[test]
    fn listen_in_use_names_address_and_error() {
        let first =
            Listener::open(&Address::parse("TCP4-LISTEN:0,bind=127.0.0.1").unwrap()).unwrap();
        let SockAddr::Inet(local) = first.local_addr() else {
            panic!()
        };
        let text = format!("TCP4-LISTEN:{},bind=127.0.0.1,reuseaddr=0", local.port());
        let err = Listener::open(&Address::parse(&text).unwrap()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!(
                "{text}: cannot listen on 127.0.0.1:{}",
                local.port()
            )),
            "{msg}"
        );
        assert!(msg.contains("Address already in use"), "{msg}");
    }

    #[test]
    fn a_regular_file_at_a_unix_listen_path_is_named_as_such() {
        let dir = std::env::temp_dir().join(format!("vsplice-notsock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("data.txt");
        std::fs::write(&path, b"keep me").unwrap();
        let text = format!("UNIX-LISTEN:{}", path.display());
        let err = match Listener::open(&Address::parse(&text).unwrap()) {
            Ok(_) => panic!("a regular file is not a socket"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("is a regular file, not a socket"), "{err}");
        assert!(!err.contains("Address already in use"), "{err}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"keep me",
            "the file is left alone"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unix_listener_removes_its_file_and_honours_unlink_early() {
        let dir = std::env::temp_dir().join(format!("vsplice-open-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("l.sock");
        let text = format!("UNIX-LISTEN:{}", path.display());
        {
            let _l = Listener::open(&Address::parse(&text).unwrap()).unwrap();
            assert!(path.exists());
        }
        assert!(!path.exists(), "socket file removed on drop");
        // A stale socket file (its listener gone) keeps the kernel's message.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let err = Listener::open(&Address::parse(&text).unwrap()).unwrap_err();
        assert!(err.to_string().contains("Address already in use"), "{err}");
        let _l = Listener::open(&Address::parse(&format!("{text},unlink-early")).unwrap()).unwrap();
        drop(_l);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_unix_listener_leaves_alone_what_replaced_its_socket_file() {
        let dir = std::env::temp_dir().join(format!("vsplice-replaced-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("l.sock");
        let text = format!("UNIX-LISTEN:{}", path.display());
        let l = Listener::open(&Address::parse(&text).unwrap()).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"not vsplice's").unwrap();
        drop(l);
        assert_eq!(std::fs::read(&path).unwrap(), b"not vsplice's");
        std::fs::remove_file(&path).unwrap();
        // Another program's socket at the path is left alone too.
        let l = Listener::open(&Address::parse(&text).unwrap()).unwrap();
        std::fs::remove_file(&path).unwrap();
        let theirs = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(l);
        assert!(path.exists(), "their socket file stays");
        drop(std::os::unix::net::UnixStream::connect(&path).unwrap());
        drop(theirs);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn dns_failure_is_an_io_error() {
        let addr = Address::parse("TCP:no-such-host.invalid:80").unwrap();
        assert!(connect_targets(&addr).is_err());
        let addr = Address::parse("TCP4:[::1]:80").unwrap();
        let err = connect_targets(&addr).unwrap_err();
        assert!(err.to_string().contains("no V4 address"), "{err}");
    }
}
