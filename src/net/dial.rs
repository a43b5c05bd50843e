//! Opening a connect address without blocking, as a state machine.
//!
//! A [`Dial`] resolves the address (again for every retry round, so DNS changes are seen;
//! names on a resolver thread, so a slow DNS server never stalls a worker),
//! tries each target in turn, bounds each attempt by `connect-timeout`, starts a new round
//! `interval` later up to `retry` times, and for `VSOCK-UDS-CONNECT` speaks the hybrid-vsock
//! handshake (`CONNECT <port>\n`, answered by `OK <n>\n`), then writes the connection's
//! preamble if it has one (a `send-proxy` header) as the first bytes, whole, within the same
//! bound as the handshake. It never blocks: it says what to
//! wait for ([`Progress::Wait`]), and a driver waits, with poll(2) in
//! `crate::net::blocking::dial_blocking` or with io_uring in the workers. The handshake's
//! reply parsing is in `crate::net::hybrid`.
//!
//! The rooms: this file is the machine (its phases, rounds, retries and deadlines);
//! `dial/outcome.rs` the words between it and a driver (event, progress, the typed
//! [`DialError`]); `dial/handshake.rs` the bytes written and read on a connected socket
//! before it is handed over.

mod handshake;
mod outcome;

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::addr::{Address, Kind};
pub use crate::net::hybrid::parse_handshake_reply;
use crate::net::open::{connect_socket, connected_endpoint};
use crate::net::own::OwnAddresses;
use crate::net::resolve::{Lookup, connect_targets, needs_lookup};
pub use crate::protocols::target::FailureClass;
use crate::sys::socket::{ConnectProgress, SockAddr, Socket};
use handshake::{Handshake, Step};
pub use outcome::{DialError, Event, Interest, Progress};

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
    /// Writing the preamble on a connected socket.
    Preamble(Handshake),
    /// A resolver thread looks the host up (see [`crate::net::resolve`]).
    Resolving {
        lookup: Lookup,
        deadline: Option<Instant>,
    },
    Done,
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
    /// Written whole before the connection counts as connected (`send-proxy`).
    preamble: Vec<u8>,
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
            preamble: Vec::new(),
        }
    }

    /// Bytes to write first on the connected socket, before it is handed over (a PROXY
    /// protocol header). Written again on a fresh socket if that attempt fails.
    pub fn set_preamble(&mut self, bytes: Vec<u8>) {
        self.preamble = bytes;
    }

    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The descriptor the last [`Progress::Wait`] named: the socket of the current phase, or
    /// the eventfd of a lookup.
    pub fn waiting_on(&self) -> Option<BorrowedFd<'_>> {
        match &self.phase {
            Phase::Connecting { socket, .. } => Some(socket.as_fd()),
            Phase::Handshake(h) | Phase::Preamble(h) => Some(h.socket.as_fd()),
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
            (Phase::Preamble(h), event) => self.write_preamble(h, event),
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
            Ok(targets) => {
                self.targets = targets;
                self.keep_allowed_targets();
            }
            Err(e) => {
                self.targets.clear();
                self.last_error = Some(DialError::Resolve(e.to_string()));
            }
        }
        self.next = 0;
        self.try_next()
    }

    /// A proxy's dial (its address carries the `dest=` list): drops every resolved address
    /// the list does not allow, before anything connects; with none left the dial fails as
    /// not allowed.
    fn keep_allowed_targets(&mut self) {
        let (Some(dest), Kind::TcpConnect { host, .. }) =
            (&self.address.options.proxy.dest, &self.address.kind)
        else {
            return;
        };
        let own = OwnAddresses::default();
        let before = std::mem::take(&mut self.targets);
        self.targets = before
            .iter()
            .filter(|t| match t {
                SockAddr::Inet(a) => dest.admits(host, *a, |ip| own.contains(ip)),
                _ => false,
            })
            .cloned()
            .collect();
        if self.targets.is_empty() {
            let addresses: Vec<String> = before.iter().map(|t| t.to_string()).collect();
            self.last_error = Some(DialError::NotAllowed {
                host: host.clone(),
                addresses: addresses.join(", "),
            });
        }
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
            let request = format!("CONNECT {port}\n").into_bytes();
            let handshake = Handshake::new(socket, target, request, deadline);
            return self.handshake(handshake, Event::Ready);
        }
        self.transport_ready(socket, target)
    }

    /// The stream is the backend's: write the preamble, then hand the socket over.
    fn transport_ready(&mut self, socket: Socket, target: SockAddr) -> Progress {
        if !self.preamble.is_empty() {
            let deadline = Instant::now()
                + self
                    .address
                    .options
                    .connect_timeout
                    .unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT);
            let h = Handshake::new(socket, target, self.preamble.clone(), deadline);
            return self.write_preamble(h, Event::Ready);
        }
        self.hand_over(socket, target)
    }

    /// Writes the preamble whole (bounded by the handshake deadline), then hands over.
    fn write_preamble(&mut self, mut h: Handshake, event: Event) -> Progress {
        if event == Event::Timeout || Instant::now() >= h.deadline {
            self.attempt_failed(&h.target, "PROXY header not written before the timeout");
            return self.try_next();
        }
        match h.write_preamble() {
            Step::Done => self.hand_over(h.socket, h.target),
            Step::Wait(interest) => {
                let (fd, deadline) = (h.fd(), h.deadline);
                self.phase = Phase::Preamble(h);
                Progress::Wait {
                    fd: Some(fd),
                    interest,
                    deadline: Some(deadline),
                }
            }
            Step::Failed(why) => {
                self.attempt_failed(&h.target, &why);
                self.try_next()
            }
        }
    }

    fn hand_over(&mut self, socket: Socket, target: SockAddr) -> Progress {
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

    /// Steps the hybrid-vsock handshake (bounded by its deadline); accepted, the stream is
    /// the backend's.
    fn handshake(&mut self, mut h: Handshake, event: Event) -> Progress {
        if event == Event::Timeout || Instant::now() >= h.deadline {
            self.attempt_failed(&h.target, "no reply to CONNECT before the timeout");
            return self.try_next();
        }
        match h.exchange() {
            Step::Done => self.transport_ready(h.socket, h.target),
            Step::Wait(interest) => self.await_handshake(h, interest),
            Step::Failed(why) => {
                self.attempt_failed(&h.target, &why);
                self.try_next()
            }
        }
    }

    /// Keeps the handshake until its socket is ready for `interest`, or its deadline.
    fn await_handshake(&mut self, h: Handshake, interest: Interest) -> Progress {
        let (fd, deadline) = (h.fd(), h.deadline);
        self.phase = Phase::Handshake(h);
        Progress::Wait {
            fd: Some(fd),
            interest,
            deadline: Some(deadline),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::blocking::dial_blocking;

    fn proxied(host: &str, port: u16, dest: &[&str]) -> Arc<Address> {
        let mut address = Address::parse(&format!("TCP:{host}:{port}")).unwrap();
        address.options.proxy.dest = crate::addr::dest::DestList::parse(dest).unwrap();
        Arc::new(address)
    }

    #[test]
    fn a_name_entry_never_dials_the_loopback_its_name_resolves_to() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let err = dial_blocking(proxied("localhost", port, &[&format!("localhost:{port}")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("which no dest= entry allows"), "{err}");
        assert!(listener.accept().is_err(), "the listener saw a connection");
        let mut dial = Dial::new(proxied("localhost", port, &[&format!("localhost:{port}")]));
        let failed = loop {
            match dial.advance(Event::Ready) {
                Progress::Failed(e) => break e,
                Progress::Wait { .. } => std::thread::sleep(Duration::from_millis(5)),
                Progress::Connected(_) => panic!("connected"),
            }
        };
        assert_eq!(failed.class(), FailureClass::NotAllowed);
        // A network entry naming loopback lets the same name through.
        dial_blocking(proxied(
            "localhost",
            port,
            &[&format!("127.0.0.0/8:{port}")],
        ))
        .expect("127.0.0.0/8 is named");
    }
}
