//! Opening a connect address without blocking, as a state machine.
//!
//! A [`Dial`] resolves the address (again for every retry round, so DNS changes are seen;
//! names on a resolver thread, so a slow DNS server never stalls a worker),
//! tries each target in turn, bounds each attempt by `connect-timeout`, starts a new round
//! `interval` later up to `retry` times, and for `VSOCK-UDS-CONNECT` speaks the hybrid-vsock
//! handshake (`CONNECT <port>\n`, answered by `OK <n>\n`). It never blocks: it says what to
//! wait for ([`Progress::Wait`]), and a driver waits, with poll(2) in
//! [`crate::net::blocking::dial_blocking`] or with io_uring in the workers. The handshake's
//! reply parsing is in [`crate::net::hybrid`].

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::addr::{Address, Kind};
use crate::net::endpoint::Endpoint;
use crate::net::hybrid::MAX_REPLY;
pub use crate::net::hybrid::{escape_peer_text, parse_handshake_reply};
use crate::net::open::{connect_socket, connected_endpoint};
use crate::net::resolve::{Lookup, connect_targets, needs_lookup};
use crate::sys::socket::{ConnectProgress, SockAddr, Socket};

/// How long a hybrid-vsock handshake may take when `connect-timeout` is not given.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between retry rounds when `interval` is not given (socat's default).
pub const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// Pause before asking a UNIX listener with a full backlog again.
const BUSY_PAUSE: Duration = Duration::from_millis(2);
/// Pause before trying again for a descriptor.
const NO_DESCRIPTOR_PAUSE: Duration = Duration::from_millis(20);
/// How long a dial waits for descriptors when `connect-timeout` does not say.
const NO_DESCRIPTOR_PATIENCE: Duration = Duration::from_secs(10);

/// What a waiting dial waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    Readable,
    Writable,
}

/// What happened since the last [`Dial::advance`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Start,
    /// The descriptor of the last `Wait` became ready.
    Ready,
    /// The deadline of the last `Wait` passed.
    Timeout,
}

/// What the driver should do next.
#[derive(Debug)]
pub enum Progress {
    /// Wait for `fd` (if any) to become ready, or until `deadline`; then advance again.
    Wait {
        fd: Option<RawFd>,
        interest: Interest,
        deadline: Option<Instant>,
    },
    Connected(Endpoint),
    /// Every attempt failed (the last failure).
    Failed(DialError),
}

/// Why a dial failed: the last attempt's failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialError {
    /// The host name could not be resolved (the resolver's message).
    Resolve(String),
    /// Connecting to `target` failed.
    Connect { target: SockAddr, why: String },
    /// The hybrid-vsock VMM at `path` did not connect guest port `port`.
    GuestPort {
        port: u32,
        path: String,
        why: String,
    },
    /// The address named no target.
    NoAddress,
    /// The dial was advanced after it had ended.
    Finished,
}

impl std::fmt::Display for DialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DialError::Resolve(e) => write!(f, "cannot resolve: {e}"),
            DialError::Connect { target, why } => write!(f, "connect to {target} failed: {why}"),
            DialError::GuestPort { port, path, why } => {
                write!(f, "guest port {port} refused via {path}: {why}")
            }
            DialError::NoAddress => f.write_str("no address to connect to"),
            DialError::Finished => f.write_str("dial already finished"),
        }
    }
}

impl std::error::Error for DialError {}

#[derive(Debug)]
enum Phase {
    Idle,
    Connecting {
        socket: Socket,
        target: SockAddr,
    },
    Busy {
        socket: Socket,
        target: SockAddr,
        deadline: Option<Instant>,
    },
    Backoff,
    /// A vsock connect reported writable with no error while not connected: look again after
    /// a short pause (the `checks`-th), before giving the socket up (see [`GHOST_REDIALS`]).
    Unconfirmed {
        socket: Socket,
        target: SockAddr,
        checks: u32,
    },
    /// Out of descriptors (EMFILE/ENFILE): try the same target again shortly, until the
    /// deadline, rather than fail the connection (a busy relay frees descriptors soon).
    NoDescriptors {
        target: SockAddr,
        deadline: Instant,
    },
    Handshake(Handshake),
    /// A resolver thread looks the host up (see [`crate::net::resolve`]).
    Resolving {
        lookup: Lookup,
        deadline: Option<Instant>,
    },
    Done,
}

/// A hybrid-vsock handshake in progress on a connected socket.
#[derive(Debug)]
struct Handshake {
    socket: Socket,
    target: SockAddr,
    request: Vec<u8>,
    sent: usize,
    reply: Vec<u8>,
    deadline: Instant,
}

/// The connect state machine for one connection's second address.
#[derive(Debug)]
pub struct Dial {
    address: Arc<Address>,
    targets: Vec<SockAddr>,
    next: usize,
    rounds_left: u32,
    phase: Phase,
    last_error: Option<DialError>,
    /// Fresh sockets started after a vsock connect reported writable while not connected
    /// (see [`GHOST_REDIALS`]).
    ghost_redials: u32,
}

/// How many times one dial starts a fresh socket, without counting an attempt, after a
/// vsock socket reported writable with no error while not connected. vsock's poll reports a
/// socket in TCP_CLOSE as writable, and a connecting socket can get there with no error to
/// read (seen on vsock_loopback, 6.1 and 7.2: about one connect in 50 to a listener that is
/// up). The listener answered, so a fresh connect is the right next step, not a failure.
const GHOST_REDIALS: u32 = 8;

/// How many times an unconfirmed connect is looked at again, 1 ms, 2 ms, 4 ms ... apart:
/// the listener may have accepted it (a fresh socket then leaves it behind, an empty
/// connection at the backend), so its outcome is waited for first.
const UNCONFIRMED_CHECKS: u32 = 8;

impl Dial {
    pub fn new(address: Arc<Address>) -> Dial {
        let rounds_left = address.options.retry;
        Dial {
            address,
            targets: Vec::new(),
            next: 0,
            rounds_left,
            ghost_redials: 0,
            phase: Phase::Idle,
            last_error: None,
        }
    }

    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The descriptor the last [`Progress::Wait`] named: the socket of the current phase, or
    /// the eventfd of a lookup.
    pub fn waiting_on(&self) -> Option<BorrowedFd<'_>> {
        match &self.phase {
            Phase::Connecting { socket, .. } => Some(socket.as_fd()),
            Phase::Handshake(h) => Some(h.socket.as_fd()),
            Phase::Resolving { lookup, .. } => Some(lookup.as_fd()),
            _ => None,
        }
    }

    /// A connect that reported writable, no error, and no peer: waits and looks again, then
    /// starts a fresh socket (not counted as a failed attempt), then fails the attempt.
    fn unconfirmed(&mut self, socket: Socket, target: SockAddr, checks: u32) -> Progress {
        if checks < UNCONFIRMED_CHECKS {
            self.phase = Phase::Unconfirmed {
                socket,
                target,
                checks,
            };
            return Progress::Wait {
                fd: None,
                interest: Interest::Writable,
                deadline: Some(Instant::now() + Duration::from_millis(1 << checks)),
            };
        }
        drop(socket);
        if self.ghost_redials < GHOST_REDIALS {
            self.ghost_redials += 1;
            return match self.start_target(target, None) {
                Progress::Failed(_) => self.try_next(),
                progress => progress,
            };
        }
        self.attempt_failed(&target, "writable but not connected");
        self.try_next()
    }

    fn attempt_deadline(&self) -> Option<Instant> {
        self.address
            .options
            .connect_timeout
            .map(|t| Instant::now() + t)
    }

    fn hybrid_port(&self) -> Option<(u32, String)> {
        match &self.address.kind {
            Kind::VsockUdsConnect { path, port } => Some((*port, path.display().to_string())),
            _ => None,
        }
    }

    /// Feeds an event to the machine and returns what to do next.
    pub fn advance(&mut self, event: Event) -> Progress {
        let phase = std::mem::replace(&mut self.phase, Phase::Idle);
        match (phase, event) {
            (Phase::Idle, _) => self.start_round(),
            (Phase::Backoff, _) => self.start_round(),
            (Phase::Connecting { socket, target, .. }, Event::Ready) => match socket.take_error() {
                // vsock (seen on vsock_loopback, 6.1) can report a connecting socket writable
                // with no error before it is connected: writing then fails with ENOTCONN. Such
                // an attempt failed; `retry` tries again with a fresh socket.
                Ok(None) if socket.peer_addr().is_err() => self.unconfirmed(socket, target, 0),
                Ok(None) => self.connected(socket, target),
                Ok(Some(e)) | Err(e) => {
                    self.attempt_failed(&target, &e.to_string());
                    self.try_next()
                }
            },
            (Phase::Connecting { target, .. }, _) => {
                self.attempt_failed(&target, "connect timed out");
                self.try_next()
            }
            (
                Phase::Unconfirmed {
                    socket,
                    target,
                    checks,
                },
                _,
            ) => match socket.take_error() {
                Ok(None) if socket.peer_addr().is_err() => {
                    self.unconfirmed(socket, target, checks + 1)
                }
                Ok(None) => self.connected(socket, target),
                Ok(Some(e)) | Err(e) => {
                    self.attempt_failed(&target, &e.to_string());
                    self.try_next()
                }
            },
            (Phase::NoDescriptors { target, deadline }, _) => {
                match self.start_target(target, Some(deadline)) {
                    Progress::Failed(_) => self.try_next(),
                    progress => progress,
                }
            }
            (
                Phase::Busy {
                    socket,
                    target,
                    deadline,
                },
                _,
            ) => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    self.attempt_failed(&target, "connect timed out (listener backlog full)");
                    return self.try_next();
                }
                self.connect_on(socket, target, deadline)
            }
            (Phase::Handshake(h), event) => self.handshake(h, event),
            (Phase::Resolving { lookup, deadline }, Event::Ready) => match lookup.take() {
                Some(answer) => self.round(answer),
                // Woken early: keep waiting.
                None => self.await_lookup(lookup, deadline),
            },
            (Phase::Resolving { .. }, _) => self.round(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "lookup timed out",
            ))),
            (Phase::Done, _) => Progress::Failed(DialError::Finished),
        }
    }

    /// Resolves the address afresh (a name on a resolver thread, bounded by
    /// `connect-timeout`) and tries its targets.
    fn start_round(&mut self) -> Progress {
        if needs_lookup(&self.address) {
            if let Ok(lookup) = Lookup::start(self.address.clone()) {
                let deadline = self.attempt_deadline();
                return self.await_lookup(lookup, deadline);
            }
        }
        let answer = connect_targets(&self.address);
        self.round(answer)
    }

    /// Waits for a resolver's answer (its eventfd readable), or until `deadline`.
    fn await_lookup(&mut self, lookup: Lookup, deadline: Option<Instant>) -> Progress {
        let fd = lookup.fd();
        self.phase = Phase::Resolving { lookup, deadline };
        Progress::Wait {
            fd: Some(fd),
            interest: Interest::Readable,
            deadline,
        }
    }

    /// Starts a round of attempts on the targets a lookup gave.
    fn round(&mut self, answer: io::Result<Vec<SockAddr>>) -> Progress {
        match answer {
            Ok(targets) => self.targets = targets,
            Err(e) => {
                self.targets.clear();
                self.last_error = Some(DialError::Resolve(e.to_string()));
            }
        }
        self.next = 0;
        self.try_next()
    }

    /// Records a failed attempt on `target` and returns it.
    fn attempt_failed(&mut self, target: &SockAddr, why: &str) -> Progress {
        let why = why.to_string();
        let error = match self.hybrid_port() {
            Some((port, path)) => DialError::GuestPort { port, path, why },
            None => DialError::Connect {
                target: target.clone(),
                why,
            },
        };
        self.last_error = Some(error.clone());
        Progress::Failed(error)
    }

    /// Tries the next target, or schedules the next round, or gives up.
    fn try_next(&mut self) -> Progress {
        while self.next < self.targets.len() {
            let target = self.targets[self.next].clone();
            self.next += 1;
            match self.start_target(target, None) {
                Progress::Failed(_) => continue,
                progress => return progress,
            }
        }
        if self.rounds_left > 0 {
            self.rounds_left -= 1;
            self.phase = Phase::Backoff;
            let interval = self
                .address
                .options
                .interval
                .unwrap_or(DEFAULT_RETRY_INTERVAL);
            return Progress::Wait {
                fd: None,
                interest: Interest::Readable,
                deadline: Some(Instant::now() + interval),
            };
        }
        self.phase = Phase::Done;
        Progress::Failed(self.last_error.clone().unwrap_or(DialError::NoAddress))
    }

    /// Creates a socket for `target` and starts connecting it. Out of descriptors, it waits
    /// and tries again (until `descriptor_deadline`, or a fresh one) instead of failing.
    /// `Failed` means this target failed; the caller moves on to the next.
    fn start_target(&mut self, target: SockAddr, descriptor_deadline: Option<Instant>) -> Progress {
        match connect_socket(&self.address, &target) {
            Ok(socket) => {
                let deadline = self.attempt_deadline();
                self.connect_on(socket, target, deadline)
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                let now = Instant::now();
                let patience = self
                    .address
                    .options
                    .connect_timeout
                    .unwrap_or(NO_DESCRIPTOR_PATIENCE);
                let deadline = descriptor_deadline.unwrap_or(now + patience);
                if now >= deadline {
                    return self.attempt_failed(&target, &e.to_string());
                }
                self.phase = Phase::NoDescriptors { target, deadline };
                Progress::Wait {
                    fd: None,
                    interest: Interest::Writable,
                    deadline: Some((now + NO_DESCRIPTOR_PAUSE).min(deadline)),
                }
            }
            Err(e) => self.attempt_failed(&target, &e.to_string()),
        }
    }

    /// Starts (or restarts, after a busy backlog) a connect on `socket`.
    fn connect_on(
        &mut self,
        socket: Socket,
        target: SockAddr,
        deadline: Option<Instant>,
    ) -> Progress {
        match socket.connect(&target) {
            Ok(ConnectProgress::Connected) => self.connected(socket, target),
            Ok(ConnectProgress::InProgress) => {
                let fd = socket.as_raw_fd();
                self.phase = Phase::Connecting { socket, target };
                Progress::Wait {
                    fd: Some(fd),
                    interest: Interest::Writable,
                    deadline,
                }
            }
            Ok(ConnectProgress::Busy) => {
                let retry_at = Instant::now() + BUSY_PAUSE;
                self.phase = Phase::Busy {
                    socket,
                    target,
                    deadline,
                };
                Progress::Wait {
                    fd: None,
                    interest: Interest::Writable,
                    deadline: Some(deadline.map_or(retry_at, |d| d.min(retry_at))),
                }
            }
            Err(e) => {
                self.attempt_failed(&target, &e.to_string());
                self.try_next()
            }
        }
    }

    /// The transport is connected: finish, or start the hybrid-vsock handshake.
    fn connected(&mut self, socket: Socket, target: SockAddr) -> Progress {
        if let Some((port, _)) = self.hybrid_port() {
            let deadline = Instant::now()
                + self
                    .address
                    .options
                    .connect_timeout
                    .unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT);
            let handshake = Handshake {
                socket,
                target,
                request: format!("CONNECT {port}\n").into_bytes(),
                sent: 0,
                reply: Vec::new(),
                deadline,
            };
            return self.handshake(handshake, Event::Ready);
        }
        match connected_endpoint(&self.address, socket, &target) {
            Ok(endpoint) => {
                self.phase = Phase::Done;
                Progress::Connected(endpoint)
            }
            Err(e) => {
                self.attempt_failed(&target, &e.to_string());
                self.try_next()
            }
        }
    }

    /// Drives the `CONNECT <port>` / `OK <n>` exchange. The reply is read with MSG_PEEK first
    /// so that not one byte past its newline is consumed: whatever the VMM sends after `OK`
    /// belongs to the relayed stream.
    fn handshake(&mut self, mut h: Handshake, event: Event) -> Progress {
        let fail = |this: &mut Dial, target: &SockAddr, why: String| {
            this.attempt_failed(target, &why);
            this.try_next()
        };
        if event == Event::Timeout || Instant::now() >= h.deadline {
            return fail(
                self,
                &h.target,
                "no reply to CONNECT before the timeout".into(),
            );
        }
        while h.sent < h.request.len() {
            match nix::sys::socket::send(
                h.socket.as_raw_fd(),
                &h.request[h.sent..],
                nix::sys::socket::MsgFlags::MSG_NOSIGNAL | nix::sys::socket::MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(n) => h.sent += n,
                Err(nix::Error::EAGAIN) => return self.await_handshake(h, Interest::Writable),
                Err(e) => return fail(self, &h.target, format!("sending CONNECT: {e}")),
            }
        }
        let mut peek = [0u8; MAX_REPLY];
        let room = MAX_REPLY - h.reply.len();
        let peeked = match nix::sys::socket::recv(
            h.socket.as_raw_fd(),
            &mut peek[..room],
            nix::sys::socket::MsgFlags::MSG_PEEK | nix::sys::socket::MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(0) => return fail(self, &h.target, "connection closed without a reply".into()),
            Ok(n) => n,
            Err(nix::Error::EAGAIN) => 0,
            Err(e) => return fail(self, &h.target, format!("reading the reply: {e}")),
        };
        if peeked > 0 {
            let newline = peek[..peeked].iter().position(|&b| b == b'\n');
            // Consume exactly the reply bytes: up to and including the newline, or all of
            // what was peeked when it holds no newline yet.
            let take = newline.map_or(peeked, |i| i + 1);
            let mut line = vec![0u8; take];
            match nix::unistd::read(h.socket.as_fd(), &mut line) {
                Ok(n) if n == take => {}
                Ok(n) => {
                    let why = format!("short read of the reply ({n} of {take})");
                    return fail(self, &h.target, why);
                }
                Err(e) => return fail(self, &h.target, format!("reading the reply: {e}")),
            }
            h.reply.extend_from_slice(&line);
            if newline.is_some() {
                h.reply.pop();
                return match parse_handshake_reply(&h.reply) {
                    Ok(_) => match connected_endpoint(&self.address, h.socket, &h.target) {
                        Ok(endpoint) => {
                            self.phase = Phase::Done;
                            Progress::Connected(endpoint)
                        }
                        Err(e) => fail(self, &h.target, e.to_string()),
                    },
                    Err(why) => fail(self, &h.target, why),
                };
            }
            if h.reply.len() >= MAX_REPLY {
                return fail(self, &h.target, "reply line too long".into());
            }
        }
        self.await_handshake(h, Interest::Readable)
    }

    /// Keeps the handshake until its socket is ready for `interest`, or its deadline.
    fn await_handshake(&mut self, h: Handshake, interest: Interest) -> Progress {
        let (fd, deadline) = (h.socket.as_raw_fd(), h.deadline);
        self.phase = Phase::Handshake(h);
        Progress::Wait {
            fd: Some(fd),
            interest,
            deadline: Some(deadline),
        }
    }
}
