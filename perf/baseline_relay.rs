//! The obvious hand-written zero-copy relay, kept as the yardstick vsplice must beat:
//! blocking sockets, two threads per connection, each moving one direction with splice(2)
//! through its own 1 MiB pipe, and shutdown(SHUT_WR) when its source ends.
//!
//! Usage: baseline-relay LISTEN_ADDR UPSTREAM_ADDR, where each is `host:port` (TCP) or a
//! path starting with `/` (UNIX). Runs until killed.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};

const PIPE_SIZE: libc::c_int = 1 << 20;

enum Sock {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Sock {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Sock::Tcp(s) => s.as_fd(),
            Sock::Unix(s) => s.as_fd(),
        }
    }
    fn try_clone(&self) -> io::Result<Sock> {
        Ok(match self {
            Sock::Tcp(s) => Sock::Tcp(s.try_clone()?),
            Sock::Unix(s) => Sock::Unix(s.try_clone()?),
        })
    }
    fn connect(addr: &str) -> io::Result<Sock> {
        if addr.starts_with('/') {
            UnixStream::connect(addr).map(Sock::Unix)
        } else {
            TcpStream::connect(addr).map(Sock::Tcp)
        }
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both are new descriptors nothing else owns.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: plain fcntl on a descriptor we own.
    unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
    Ok((r, w))
}

fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    // SAFETY: null offsets are allowed for pipes and sockets; the descriptors are open.
    let n = unsafe {
        libc::splice(
            from.as_raw_fd(),
            std::ptr::null_mut(),
            to.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// One direction: source -> pipe -> destination until end of file, then half-close.
fn pump(src: Sock, dst: Sock) {
    let Ok((pr, pw)) = pipe() else { return };
    loop {
        let n = match splice(src.fd(), pw.as_fd(), PIPE_SIZE as usize) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut left = n;
        while left > 0 {
            match splice(pr.as_fd(), dst.fd(), left) {
                Ok(0) | Err(_) => return,
                Ok(k) => left -= k,
            }
        }
    }
    // SAFETY: shutdown on an open socket.
    unsafe { libc::shutdown(dst.fd().as_raw_fd(), libc::SHUT_WR) };
}

fn serve(client: Sock, upstream: &str) {
    let Ok(server) = Sock::connect(upstream) else {
        return;
    };
    let (c2, s2) = match (client.try_clone(), server.try_clone()) {
        (Ok(c), Ok(s)) => (c, s),
        _ => return,
    };
    let t = std::thread::spawn(move || pump(c2, s2));
    pump(server, client);
    let _ = t.join();
}

/// The same listen backlog vsplice uses, so bursts of connections compare fairly.
fn widen_backlog(fd: BorrowedFd<'_>) {
    // SAFETY: listen() again on a listening socket only changes its backlog.
    unsafe { libc::listen(fd.as_raw_fd(), 1024) };
}

fn main() {
    // SAFETY: ignoring SIGPIPE installs no handler code.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let args: Vec<String> = std::env::args().collect();
    let (listen, upstream) = match args.as_slice() {
        [_, l, u] => (l.clone(), u.clone()),
        _ => {
            eprintln!("usage: baseline-relay LISTEN_ADDR UPSTREAM_ADDR");
            std::process::exit(2);
        }
    };
    if listen.starts_with('/') {
        let _ = std::fs::remove_file(&listen);
        let l = UnixListener::bind(&listen).expect("bind");
        widen_backlog(l.as_fd());
        eprintln!("listening on {listen}");
        for c in l.incoming().flatten() {
            let up = upstream.clone();
            std::thread::spawn(move || serve(Sock::Unix(c), &up));
        }
    } else {
        let l = TcpListener::bind(&listen).expect("bind");
        widen_backlog(l.as_fd());
        eprintln!("listening on {listen}");
        for c in l.incoming().flatten() {
            let up = upstream.clone();
            std::thread::spawn(move || serve(Sock::Tcp(c), &up));
        }
    }
}
