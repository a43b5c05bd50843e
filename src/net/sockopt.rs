//! The socket options of each address type: those set before bind/listen/connect, those
//! set on every connected TCP socket, and the local address a `bind=` option asks for.

use std::io;

use nix::sys::socket::AddressFamily;

use super::resolve::resolve_host;
use crate::addr::{Bind, Family, Options};
use crate::sys::socket::{SockAddr, Socket};

/// vsock socket options (linux/vm_sockets.h); the level is AF_VSOCK.
const SO_VM_SOCKETS_BUFFER_SIZE: libc::c_int = 0;
const SO_VM_SOCKETS_BUFFER_MAX_SIZE: libc::c_int = 2;

/// Options that must be set before bind/listen/connect.
pub(crate) fn apply_pre_options(
    socket: &Socket,
    family: AddressFamily,
    opts: &Options,
    listener: bool,
) -> io::Result<()> {
    let inet = matches!(family, AddressFamily::Inet | AddressFamily::Inet6);
    if inet {
        let reuseaddr = opts.reuseaddr.unwrap_or(listener);
        if reuseaddr {
            socket.set_int(libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
        }
        if opts.reuseport {
            socket.set_int(libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
        }
    }
    if family == AddressFamily::Vsock {
        // vsock's receive buffer is its credit window, set through its own options.
        if let Some(size) = opts.rcvbuf {
            let size = size as u64;
            socket.set_u64(libc::AF_VSOCK, SO_VM_SOCKETS_BUFFER_MAX_SIZE, size)?;
            socket.set_u64(libc::AF_VSOCK, SO_VM_SOCKETS_BUFFER_SIZE, size)?;
        }
    } else if let Some(size) = opts.rcvbuf {
        socket.set_int(libc::SOL_SOCKET, libc::SO_RCVBUF, clamp_int(size))?;
    }
    if let Some(size) = opts.sndbuf {
        socket.set_int(libc::SOL_SOCKET, libc::SO_SNDBUF, clamp_int(size))?;
    }
    Ok(())
}

fn clamp_int(n: usize) -> libc::c_int {
    n.min(libc::c_int::MAX as usize) as libc::c_int
}

/// Options that apply to a connected TCP socket (set on every accepted or connected one).
pub(crate) fn apply_connected_options(socket: &Socket, opts: &Options) -> io::Result<()> {
    if opts.nodelay {
        socket.set_int(libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
    }
    if opts.keepalive {
        socket.set_int(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
        if let Some(s) = opts.keepidle {
            socket.set_int(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, clamp_int(s as usize))?;
        }
        if let Some(s) = opts.keepintvl {
            socket.set_int(
                libc::IPPROTO_TCP,
                libc::TCP_KEEPINTVL,
                clamp_int(s as usize),
            )?;
        }
        if let Some(n) = opts.keepcnt {
            socket.set_int(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, clamp_int(n as usize))?;
        }
    }
    Ok(())
}

/// The local address a `bind=` option asks for, matched to the target's family.
pub(crate) fn bind_address(bind: &Bind, family: AddressFamily) -> io::Result<SockAddr> {
    match bind {
        Bind::Inet { host, port } => {
            let want = if family == AddressFamily::Inet6 {
                Family::V6
            } else {
                Family::V4
            };
            let addr = resolve_host(host, port.unwrap_or(0), want)?;
            Ok(SockAddr::Inet(addr[0]))
        }
        Bind::Unix(path) => Ok(SockAddr::Unix(path.clone())),
        Bind::Vsock { cid, port } => Ok(SockAddr::Vsock {
            cid: cid.unwrap_or(libc::VMADDR_CID_ANY),
            port: port.unwrap_or(libc::VMADDR_PORT_ANY),
        }),
    }
}
