//! The worker's side of a prelude (see [`crate::protocols::prelude`]): a handshake on the
//! accepted socket before the second address is opened (`accept-proxy`; a SOCKS5 or HTTP
//! CONNECT server).
//!
//! The worker peeks at the socket (at most what the machine wants, at most
//! [`MAX_SHOW`] bytes), shows the bytes to the machine, and reads away exactly the bytes it
//! took, so whatever the client sent after the handshake stays in the socket for the relay.
//! It writes the replies the machine asks for, polls the socket through the ring when it
//! must wait, and bounds the whole stage by one deadline (`proxy-timeout`). When the
//! machine is done, the declared origin is checked against `allow-source`, kept on the
//! connection (logs, a `send-proxy` on the dial) and the second end is opened: the job's, or
//! the machine's dial target. A failure (bad bytes, the deadline, the client gone) closes
//! the connection with a reset and a log line; nothing is dialed.

use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::time::Duration;

use io_uring::{opcode, types};
use nix::sys::socket::MsgFlags;

use super::Worker;
use crate::addr::ProxyVersion;
use crate::addr::allow::Peer;
use crate::engine::close::CloseReason;
use crate::engine::conn::{Conn, Dialing, Phase, PreludeStage, Preluding, Relaying};
use crate::engine::job::{PreludeJob, Second};
use crate::engine::ring::ConnOps;
use crate::engine::timers::{Timer, TimerKind};
use crate::engine::token::Op;
use crate::info;
use crate::net::dial::Dial;
use crate::net::dial::Event as DialEvent;
use crate::net::peer::origin_of;
use crate::protocols::prelude::{DialEnd, Failure, MAX_SHOW, Outcome, Prelude, Step};
use crate::protocols::proxy_protocol::{self, Extras};
use crate::protocols::target::FailureClass;
use crate::sys::socket::Socket;

/// Where one round of driving a prelude left it.
#[allow(clippy::large_enum_variant)]
enum Drive {
    /// Poll the socket for reading (`false`) or writing (`true`), then drive again.
    Wait {
        write: bool,
    },
    /// The machine is done reading: open the second end.
    Done(Outcome),
    /// The reply after the dial is written: relay.
    Answered,
    Failed(Failure),
}

/// Runs the machine on `socket` until it must wait, is done, or fails.
fn drive(p: &mut Preluding, socket: &Socket) -> Drive {
    let fd = socket.as_raw_fd();
    let mut shown = [0u8; MAX_SHOW];
    loop {
        match &mut p.stage {
            PreludeStage::Reading => {
                let want = p.job.machine.want().clamp(1, MAX_SHOW);
                let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
                let n = match nix::sys::socket::recv(fd, &mut shown[..want], flags) {
                    Ok(0) => {
                        return Drive::Failed(Failure::new(
                            "closed",
                            "the client closed before its header was whole",
                        ));
                    }
                    Ok(n) => n,
                    Err(nix::Error::EAGAIN) => return Drive::Wait { write: false },
                    Err(nix::Error::EINTR) => continue,
                    Err(e) => return Drive::Failed(Failure::new("read-error", e.to_string())),
                };
                let (take, next) = match p.job.machine.feed(&shown[..n]) {
                    Step::More => (n, None),
                    Step::Reply(bytes) => (
                        n,
                        Some(PreludeStage::Writing {
                            bytes,
                            sent: 0,
                            relay_after: false,
                        }),
                    ),
                    Step::Done { used, outcome } => {
                        if let Err(f) = consume(socket, used.min(n)) {
                            return Drive::Failed(f);
                        }
                        return Drive::Done(outcome);
                    }
                    Step::Fail(failure) => return Drive::Failed(failure),
                };
                if let Err(f) = consume(socket, take) {
                    return Drive::Failed(f);
                }
                if let Some(stage) = next {
                    p.stage = stage;
                }
            }
            PreludeStage::Writing {
                bytes,
                sent,
                relay_after,
            } => {
                while *sent < bytes.len() {
                    let flags = MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT;
                    match nix::sys::socket::send(fd, &bytes[*sent..], flags) {
                        Ok(n) => *sent += n,
                        Err(nix::Error::EAGAIN) => return Drive::Wait { write: true },
                        Err(nix::Error::EINTR) => {}
                        Err(e) => {
                            return Drive::Failed(Failure::new("write-error", e.to_string()));
                        }
                    }
                }
                if *relay_after {
                    return Drive::Answered;
                }
                p.stage = PreludeStage::Reading;
            }
        }
    }
}

/// Reads away the `n` bytes the machine took (they were peeked, so they are there).
fn consume(socket: &Socket, n: usize) -> Result<(), Failure> {
    let mut sink = [0u8; MAX_SHOW];
    let mut left = n.min(MAX_SHOW);
    while left > 0 {
        match nix::unistd::read(socket.as_fd(), &mut sink[..left]) {
            Ok(0) => return Err(Failure::new("closed", "the client closed mid-header")),
            Ok(got) => left -= got,
            Err(nix::Error::EINTR) => {}
            Err(e) => return Err(Failure::new("read-error", e.to_string())),
        }
    }
    Ok(())
}

impl Worker {
    /// Starts `job` on connection `key` (its first end open), to open `second` afterwards.
    pub(super) fn start_prelude(&mut self, key: usize, job: PreludeJob, second: Second) {
        let conn = &mut self.conns[key];
        let deadline = self.now + job.timeout;
        conn.phase = Phase::Prelude(Box::new(Preluding {
            job,
            stage: PreludeStage::Reading,
            deadline,
            second: Some(second),
        }));
        self.arm_prelude_timer(key, deadline);
        self.advance_prelude(key);
    }

    fn arm_prelude_timer(&mut self, key: usize, at: std::time::Instant) {
        let serial = self.conns[key].serial;
        self.timers.push(Timer {
            at,
            key,
            serial,
            kind: TimerKind::Prelude,
        });
    }

    /// Drives connection `key`'s prelude after its socket became ready (or at its start).
    pub(super) fn advance_prelude(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let Phase::Prelude(p) = &mut conn.phase else {
            return;
        };
        let Some(socket) = conn.first.as_socket() else {
            let failure = Failure::new("read-error", "the first end is not a socket");
            return self.prelude_failed(key, failure);
        };
        match drive(p, socket) {
            Drive::Wait { write } => {
                let events = if write { libc::POLLOUT } else { libc::POLLIN };
                let fd = types::Fd(socket.as_raw_fd());
                let sqe = opcode::PollAdd::new(fd, events as u32).build();
                ConnOps::new(&mut self.ring, key, &mut conn.inflight).push(Op::Prelude, sqe);
            }
            Drive::Failed(failure) => self.prelude_failed(key, failure),
            Drive::Done(outcome) => self.prelude_done(key, outcome),
            Drive::Answered => self.start_relay(key),
        }
    }

    /// The prelude's deadline timer fired: a stage still running past it fails.
    pub(super) fn on_prelude_timer(&mut self, key: usize) {
        let now = self.now;
        let Some(p) = self.conns.get_mut(key).and_then(|c| c.preluding_mut()) else {
            return;
        };
        if now < p.deadline {
            return;
        }
        let detail = match p.stage {
            PreludeStage::Reading => {
                format!("no whole header within {:?} (proxy-timeout)", p.job.timeout)
            }
            PreludeStage::Writing { .. } => {
                format!("reply not written within {:?}", p.job.timeout)
            }
        };
        self.prelude_failed(key, Failure::new("timeout", detail));
    }

    /// Ends connection `key` for a failed prelude: counted, logged, reset; nothing dialed.
    fn prelude_failed(&mut self, key: usize, failure: Failure) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        let (name, reading) = match &conn.phase {
            Phase::Prelude(p) => (p.job.machine.name(), p.second.is_some()),
            _ => ("prelude", false),
        };
        if let Some(observer) = &conn.options.observer {
            observer.prelude_failed(name, failure.reason);
            if reading {
                observer.prelude_ended(name, failure.reason);
            }
        }
        send_once(conn.first.as_socket(), &failure.reply);
        let why = format!("{name}: {} ({})", failure.detail, failure.reason);
        self.close(key, CloseReason::PreludeFailed(why));
    }

    /// The machine is done: checks the declared origin, keeps it, opens the second end.
    fn prelude_done(&mut self, key: usize, outcome: Outcome) {
        let conn = &mut self.conns[key];
        let Phase::Prelude(p) = &conn.phase else {
            return;
        };
        let name = p.job.machine.name();
        if let Some(allow) = &p.job.allow_source {
            let peer = match &outcome.origin {
                Some(origin) => Some(match (&origin.source, origin.credentials) {
                    (crate::sys::socket::SockAddr::Unix(_), Some(c)) => {
                        Peer::Unix { uid: Some(c.uid) }
                    }
                    (source, _) => Peer::from_addr(source),
                }),
                None => conn.first.as_socket().and_then(|s| Peer::of(s).ok()),
            };
            if !peer.is_some_and(|peer| allow.permits(&peer)) {
                let who = match &outcome.origin {
                    Some(o) => format!("declared source {}", o.source),
                    None => "the proxy itself (no source declared)".to_string(),
                };
                let failure =
                    Failure::new("source-denied", format!("{who} refused by allow-source"));
                return self.prelude_failed(key, failure);
            }
        }
        let Phase::Prelude(p) =
            std::mem::replace(&mut conn.phase, Phase::Relaying(Relaying::default()))
        else {
            unreachable!("checked above")
        };
        let Preluding { job, second, .. } = *p;
        match &outcome.origin {
            Some(origin) => info!("conn {}: {name}: client {}", conn.id, origin.source),
            // A proxy's request names where it goes (logged with the dial), not who it is from.
            None if outcome.target.is_some() => {}
            None => info!("conn {}: {name}: no client declared", conn.id),
        }
        conn.origin = outcome.origin;
        let second = match (outcome.target, second) {
            (Some(target), _) => Second::Dial(Arc::from(target)),
            (None, Some(second)) => second,
            (None, None) => unreachable!("a reading prelude holds its second end"),
        };
        self.open_second(key, second, Some(job.machine), job.timeout);
    }

    /// Opens connection `key`'s second end: dials it, or takes the ready one and relays. A
    /// prelude that ran before is told how that went, and its reply is written first.
    pub(super) fn open_second(
        &mut self,
        key: usize,
        second: Second,
        prelude: Option<Box<dyn Prelude>>,
        reply_timeout: Duration,
    ) {
        let conn = &mut self.conns[key];
        match second {
            Second::Ready(endpoint) => {
                conn.second = Some(endpoint);
                self.answer_and_relay(key, prelude, reply_timeout);
            }
            Second::Dial(address) => {
                info!(
                    "conn {}: accepted {}, connecting {}",
                    conn.id,
                    conn.label(),
                    address.text
                );
                let mut dial = Dial::new(address.clone());
                if let Some(version) = address.options.send_proxy {
                    dial.set_preamble(proxy_header(
                        conn,
                        version,
                        address.options.proxy_crc,
                        address.options.proxy_unique_id,
                    ));
                }
                let mut dialing = Dialing::new(dial);
                dialing.prelude = prelude;
                dialing.reply_timeout = reply_timeout;
                conn.phase = Phase::Dialing(dialing);
                self.advance_dial(key, DialEvent::Start);
            }
        }
    }

    /// The second end is open: writes the prelude's reply (if it has one), then relays.
    pub(super) fn answer_and_relay(
        &mut self,
        key: usize,
        prelude: Option<Box<dyn Prelude>>,
        reply_timeout: Duration,
    ) {
        let Some(mut machine) = prelude else {
            return self.start_relay(key);
        };
        let conn = &mut self.conns[key];
        if let Some(observer) = &conn.options.observer {
            observer.prelude_ended(machine.name(), "connected");
        }
        let local = conn
            .second
            .as_ref()
            .and_then(|s| s.as_socket())
            .and_then(|s| s.local_addr().ok());
        let bytes = machine.dialed(DialEnd::Connected {
            local: local.as_ref(),
        });
        if bytes.is_empty() {
            return self.start_relay(key);
        }
        let deadline = self.now + reply_timeout;
        conn.phase = Phase::Prelude(Box::new(Preluding {
            job: PreludeJob {
                machine,
                timeout: reply_timeout,
                allow_source: None,
            },
            stage: PreludeStage::Writing {
                bytes,
                sent: 0,
                relay_after: true,
            },
            deadline,
            second: None,
        }));
        self.arm_prelude_timer(key, deadline);
        self.advance_prelude(key);
    }
}

/// The `send-proxy` header for connection `conn`: its declared origin (`accept-proxy` in
/// front: a chain keeps the first client), else its first end's own peer.
fn proxy_header(conn: &Conn, version: ProxyVersion, crc: bool, unique: bool) -> Vec<u8> {
    let origin = conn
        .origin
        .clone()
        .or_else(|| conn.first.as_socket().and_then(origin_of));
    let unique_id = unique.then(|| {
        let id = unique_id(conn.id);
        info!("conn {}: PROXY unique id {id}", conn.id);
        id.into_bytes()
    });
    let extras = Extras { crc, unique_id };
    proxy_protocol::encode(version, origin.as_ref(), &extras)
}

/// A connection's unique id for `proxy-unique-id`: a random number drawn once per process
/// (the seed of std's hash keys, which the OS supplies) and the connection's number.
fn unique_id(conn: u64) -> String {
    use std::hash::{BuildHasher, Hasher};
    static PROCESS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let process = PROCESS.get_or_init(|| {
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
    });
    format!("vsplice-{process:016x}-{conn}")
}

/// Tells a prelude that its dial failed and writes what it answers, as far as the socket
/// takes it at once (the connection is reset right after).
pub(super) fn answer_failed_dial(
    machine: &mut dyn Prelude,
    first: Option<&Socket>,
    why: &str,
    class: FailureClass,
) {
    let bytes = machine.dialed(DialEnd::Failed { why, class });
    send_once(first, &bytes);
}

/// Writes `bytes` to the client as far as its socket takes them at once (a last answer before
/// the connection closes; a few hundred bytes always fit an empty send buffer).
fn send_once(first: Option<&Socket>, bytes: &[u8]) {
    if let (false, Some(socket)) = (bytes.is_empty(), first) {
        let flags = MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT;
        let _ = nix::sys::socket::send(socket.as_raw_fd(), bytes, flags);
    }
}

#[cfg(test)]
#[path = "prelude_tests.rs"]
mod tests;
