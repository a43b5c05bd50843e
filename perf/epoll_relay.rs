//! A second yardstick beside the plain relay: the same splice(2) through 1 MiB pipes, but
//! event-driven like vsplice, with one thread per core, non-blocking sockets and an
//! edge-triggered epoll instead of io_uring. It answers one question: is a gap between vsplice
//! and the plain relay (a blocking thread per direction) the cost of io_uring and vsplice's
//! own machinery, or of serving many streams from a thread per core at all? Where this relay
//! and vsplice measure alike, it is the latter (docs/performance.md).
//!
//! Usage: epoll-relay LISTEN_ADDR UPSTREAM_ADDR [THREADS], where each address is `host:port`
//! (TCP) or a path starting with `/` (UNIX); THREADS defaults to the number of CPUs. The main
//! thread accepts and dials, then hands each connection to a worker round-robin, which
//! registers it with its epoll. Runs until killed.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Mutex;

const PIPE_SIZE: usize = 1 << 20;

/// One direction: `src` -> pipe -> `dst`.
struct Direction {
    src: RawFd,
    dst: RawFd,
    pipe_r: OwnedFd,
    pipe_w: OwnedFd,
    staged: usize,
    done: bool,
}

/// What an epoll event names: a connection and which of its two sockets fired.
struct Side {
    conn: *mut Conn,
    which: usize,
}

struct Conn {
    socks: [OwnedFd; 2],
    dirs: [Direction; 2],
    sides: [Side; 2],
}

fn check(n: libc::c_int) -> io::Result<libc::c_int> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n)
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) })?;
    // SAFETY: pipe2 succeeded, so both are new descriptors nothing else owns.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: plain fcntl on a descriptor we own.
    if unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE as libc::c_int) } < 0 {
        // Over the per-user pipe quota (unprivileged, many streams): a smaller pipe skews the
        // comparison, so say so once.
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| eprintln!("epoll-relay: F_SETPIPE_SZ: {}", io::Error::last_os_error()));
    }
    Ok((r, w))
}

/// Non-blocking splice(2); Ok(None) is EAGAIN.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<Option<usize>> {
    // SAFETY: null offsets are allowed for pipes and sockets; the descriptors are open.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n >= 0 {
        return Ok(Some(n as usize));
    }
    let e = io::Error::last_os_error();
    if e.kind() == io::ErrorKind::WouldBlock {
        Ok(None)
    } else {
        Err(e)
    }
}

impl Direction {
    /// Moves bytes until the source or the destination would block (edge-triggered epoll
    /// reports the next change), the source ends (passed on as a write shutdown) or a
    /// transfer fails. Returns false on failure.
    fn pump(&mut self) -> bool {
        while !self.done {
            if self.staged > 0 {
                match splice(self.pipe_r.as_raw_fd(), self.dst, self.staged) {
                    Ok(Some(n)) => self.staged -= n,
                    Ok(None) => return true,
                    Err(_) => return false,
                }
                continue;
            }
            match splice(self.src, self.pipe_w.as_raw_fd(), PIPE_SIZE) {
                Ok(Some(0)) => {
                    // SAFETY: shutdown on an open socket.
                    unsafe { libc::shutdown(self.dst, libc::SHUT_WR) };
                    self.done = true;
                }
                Ok(Some(n)) => self.staged = n,
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
        true
    }
}

/// A worker: its epoll instance, and the connections the accepting thread hands it. The worker
/// registers them itself, so nothing but the worker touches a connection once it is handed
/// over (the accepting thread registering them raced the worker freeing a connection whose
/// first socket had already failed).
struct Worker {
    ep: OwnedFd,
    wake: OwnedFd,
    // Boxed: a Conn needs a fixed address, since its Sides (epoll's data) point into it.
    #[allow(clippy::vec_box)]
    handed: Mutex<Vec<Box<Conn>>>,
}

// SAFETY: a Conn's raw pointers point into its own box, and a handed-over box is touched only
// by the worker that takes it from `handed`.
unsafe impl Send for Conn {}

/// The `u64` of the worker's wake-up eventfd; a Side's address is never 0.
const HANDED: u64 = 0;

impl Worker {
    fn new() -> io::Result<Worker> {
        // SAFETY: epoll_create1 and eventfd take no memory arguments.
        let ep = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: as above.
        let ep = unsafe { OwnedFd::from_raw_fd(ep) };
        // SAFETY: as above.
        let wake = check(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
        // SAFETY: eventfd succeeded: a new descriptor nothing else owns.
        let wake = unsafe { OwnedFd::from_raw_fd(wake) };
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: HANDED,
        };
        // SAFETY: `ev` is a valid event; both descriptors are open.
        check(unsafe {
            libc::epoll_ctl(
                ep.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                wake.as_raw_fd(),
                &mut ev,
            )
        })?;
        Ok(Worker {
            ep,
            wake,
            handed: Mutex::new(Vec::new()),
        })
    }

    /// Hands a connection to this worker (from the accepting thread).
    fn hand(&self, conn: Box<Conn>) {
        self.handed.lock().unwrap().push(conn);
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to the eventfd.
        unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), 8) };
    }

    /// Registers the connections handed over since the last call; one that cannot be
    /// registered is dropped, which closes its sockets and so its registrations.
    fn register_handed(&self) {
        let mut count = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a live buffer.
        unsafe { libc::read(self.wake.as_raw_fd(), count.as_mut_ptr().cast(), 8) };
        let handed = std::mem::take(&mut *self.handed.lock().unwrap());
        for conn in handed {
            let conn = Box::into_raw(conn);
            let mut registered = true;
            for which in 0..2 {
                // SAFETY: `conn` is the live box just taken; only this thread touches it.
                let c = unsafe { &mut *conn };
                c.sides[which].conn = conn;
                let mut ev = libc::epoll_event {
                    events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET)
                        as u32,
                    u64: &c.sides[which] as *const Side as u64,
                };
                // SAFETY: `ev` is a valid event; the descriptors are open.
                let added = unsafe {
                    libc::epoll_ctl(
                        self.ep.as_raw_fd(),
                        libc::EPOLL_CTL_ADD,
                        c.socks[which].as_raw_fd(),
                        &mut ev,
                    )
                };
                registered &= added == 0;
            }
            if !registered {
                eprintln!("epoll-relay: {}", io::Error::last_os_error());
                // SAFETY: from Box::into_raw above, freed once; no event names it yet (events
                // come from the next epoll_wait, after its sockets are closed here).
                drop(unsafe { Box::from_raw(conn) });
            }
        }
    }

    /// The epoll loop: it owns the connections registered here and frees each once both
    /// directions are over (or one failed).
    fn run(&self) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        let mut over: Vec<*mut Conn> = Vec::new();
        loop {
            // SAFETY: `events` has room for the count passed.
            let n = unsafe {
                libc::epoll_wait(
                    self.ep.as_raw_fd(),
                    events.as_mut_ptr(),
                    events.len() as i32,
                    -1,
                )
            };
            for ev in events.iter().take(n.max(0) as usize) {
                if ev.u64 == HANDED {
                    self.register_handed();
                    continue;
                }
                let side = ev.u64 as *const Side;
                // SAFETY: every other registered `u64` points at a Side inside a live Conn: a
                // Conn is freed only after this batch, once its sockets are closed, so no
                // later batch names it.
                let (conn, which) = unsafe { ((*side).conn, (*side).which) };
                // SAFETY: as above; only this worker touches the Conn.
                let c = unsafe { &mut *conn };
                if c.dirs[0].done && c.dirs[1].done {
                    continue; // already over in this batch
                }
                // The socket that fired is the source of one direction and the destination
                // of the other.
                let ok = c.dirs[which].pump() && c.dirs[1 - which].pump();
                if !ok || (c.dirs[0].done && c.dirs[1].done) {
                    c.dirs[0].done = true;
                    c.dirs[1].done = true;
                    over.push(conn);
                }
            }
            for conn in over.drain(..) {
                // SAFETY: the pointer came from Box::into_raw and is freed once (marked over
                // above, skipped thereafter); dropping it closes its sockets and pipes.
                drop(unsafe { Box::from_raw(conn) });
            }
        }
    }
}

fn new_conn(client: OwnedFd, upstream: OwnedFd) -> io::Result<Box<Conn>> {
    let socks = [client, upstream];
    for s in &socks {
        // SAFETY: plain fcntl on a descriptor we own.
        check(unsafe { libc::fcntl(s.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) })?;
    }
    let (r0, w0) = pipe()?;
    let (r1, w1) = pipe()?;
    let (a, b) = (socks[0].as_raw_fd(), socks[1].as_raw_fd());
    let dir = |src, dst, pipe_r, pipe_w| Direction {
        src,
        dst,
        pipe_r,
        pipe_w,
        staged: 0,
        done: false,
    };
    let side = |which| Side {
        conn: std::ptr::null_mut(),
        which,
    };
    Ok(Box::new(Conn {
        socks,
        dirs: [dir(a, b, r0, w0), dir(b, a, r1, w1)],
        sides: [side(0), side(1)],
    }))
}

fn connect(addr: &str) -> io::Result<OwnedFd> {
    Ok(if addr.starts_with('/') {
        UnixStream::connect(addr)?.into()
    } else {
        TcpStream::connect(addr)?.into()
    })
}

fn main() {
    // SAFETY: ignoring SIGPIPE installs no handler code.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let args: Vec<String> = std::env::args().collect();
    let (listen, upstream, threads) = match args.as_slice() {
        [_, l, u] => (l, u, None),
        [_, l, u, t] => (l, u, t.parse::<usize>().ok().filter(|&t| t > 0)),
        _ => {
            eprintln!("usage: epoll-relay LISTEN_ADDR UPSTREAM_ADDR [THREADS]");
            std::process::exit(2);
        }
    };
    let threads = threads
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1);
    let workers: Vec<&'static Worker> = (0..threads)
        .map(|_| {
            let worker: &'static Worker = Box::leak(Box::new(Worker::new().expect("epoll")));
            std::thread::spawn(move || worker.run());
            worker
        })
        .collect();
    let accept: Box<dyn FnMut() -> io::Result<OwnedFd>> = if listen.starts_with('/') {
        let _ = std::fs::remove_file(listen);
        let l = UnixListener::bind(listen).expect("bind");
        // SAFETY: listen() again on a listening socket only widens its backlog (vsplice's).
        unsafe { libc::listen(l.as_raw_fd(), 1024) };
        Box::new(move || l.accept().map(|(s, _)| s.into()))
    } else {
        let l = TcpListener::bind(listen).expect("bind");
        // SAFETY: as above.
        unsafe { libc::listen(l.as_raw_fd(), 1024) };
        Box::new(move || l.accept().map(|(s, _)| s.into()))
    };
    let mut accept = accept;
    eprintln!("listening on {listen} with {threads} threads");
    for n in 0usize.. {
        let client = match accept() {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and the like: say so and let the workers close some.
                eprintln!("epoll-relay: accept: {e}");
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
        };
        let Ok(up) = connect(upstream) else { continue };
        match new_conn(client, up) {
            Ok(conn) => workers[n % threads].hand(conn),
            Err(e) => eprintln!("epoll-relay: {e}"),
        }
    }
}
