//! A relayed connection: its two ends, its phase (prelude, dialing, relaying, closing)
//! carrying the data of that phase, and the pure rule that decides, from the state of its two
//! directions, whether it goes on, starts its half-close linger (`-t`), or closes.
//!
//! The worker owns connections in a slab; everything else reaches a connection's parts
//! through [`Conn::lane_parts`], which splits it into disjoint borrows (one direction's lane,
//! its two ends, the in-flight set), so a data path works on `&mut` parts of one connection
//! without looking it up again.

use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::close::CloseReason;
use super::config::RelayOptions;
use super::direction::{Direction, PerDir};
use super::ends::Ends;
use super::job::{PreludeJob, Second};
use super::lane::Lane;
use super::lane::flow::FlowState;
use super::registry::ParkPair;
use super::token::Op;
use crate::debug;
use crate::net::dial::Dial;
use crate::net::endpoint::Endpoint;
use crate::protocols::prelude::{Origin, Prelude};

/// Dial bookkeeping while the second address connects.
#[derive(Debug)]
pub(crate) struct Dialing {
    pub dial: Dial,
    /// Incremented per wait, so a timer of an earlier wait is recognised as stale.
    pub epoch: u32,
    /// The wait's deadline passed while its poll was in flight; the poll is being cancelled.
    pub timed_out: bool,
    /// The prelude that ran before this dial: it is told how the dial ended and may have a
    /// reply for the client (`None`: no prelude).
    pub prelude: Option<Box<dyn Prelude>>,
    /// How long that reply may take to write.
    pub reply_timeout: Duration,
}

impl Dialing {
    pub(crate) fn new(dial: Dial) -> Dialing {
        Dialing {
            dial,
            epoch: 0,
            timed_out: false,
            prelude: None,
            reply_timeout: Duration::ZERO,
        }
    }
}

/// What a prelude does now: reads the client's bytes, or writes a reply to it.
#[derive(Debug)]
pub(crate) enum PreludeStage {
    Reading,
    /// Writing `bytes[sent..]`; then reading on (`relay_after` false) or relaying.
    Writing {
        bytes: Vec<u8>,
        sent: usize,
        relay_after: bool,
    },
}

/// A handshake running on the first end before the second is opened (see
/// `protocols::prelude` and the worker's `prelude.rs`).
#[derive(Debug)]
pub(crate) struct Preluding {
    pub job: PreludeJob,
    pub stage: PreludeStage,
    /// When the stage must be over (`proxy-timeout` from its start).
    pub deadline: Instant,
    /// The second end to open once the prelude is done; `None` once it is open.
    pub second: Option<Second>,
}

/// Both ends open: the directions' data paths.
#[derive(Debug, Default)]
pub(crate) struct Relaying {
    /// `None`: a direction that does not run.
    pub lanes: PerDir<Option<Lane>>,
    /// One direction ended and the `-t` countdown runs.
    pub lingering: bool,
    /// The fixed-file slots holding the sockets once the connection is parked.
    pub parked: Option<ParkPair>,
}

/// Where a connection is in its life; each phase carries what only it has.
#[derive(Debug)]
pub(crate) enum Phase {
    /// Running a handshake on the first end before the second is opened.
    Prelude(Box<Preluding>),
    /// Waiting for the second address to connect.
    Dialing(Dialing),
    /// Both ends open; bytes move in the enabled directions.
    Relaying(Relaying),
    /// Ended; waiting for the kernel to return the in-flight operations. Keeps the lanes
    /// (their pipes and buffers may still be in use) until then.
    Closing {
        reason: CloseReason,
        relaying: Relaying,
        /// The dial of a connection closed while dialing: its socket may be polled still.
        #[expect(
            dead_code,
            reason = "held, never read: the dial's socket stays open until its in-flight poll returns"
        )]
        dialing: Option<Box<Dialing>>,
    },
}

/// A relayed connection.
#[derive(Debug)]
pub(crate) struct Conn {
    /// Distinguishes this connection from earlier ones of the same slab key.
    pub serial: u64,
    /// Number for logs.
    pub id: u64,
    pub options: Arc<RelayOptions>,
    pub first: Endpoint,
    pub second: Option<Endpoint>,
    pub phase: Phase,
    /// Bits of [`Op::bit`] for every request in flight.
    pub inflight: u16,
    pub started: Instant,
    pub last_active: Instant,
    /// The receive buffer its TCP sockets were fixed at, if the receive budget capped them.
    pub receive_cap: Option<usize>,
    /// Who the first end's client is, as a prelude declared it (`accept-proxy`); `None`:
    /// the socket's own peer.
    pub origin: Option<Origin>,
}

/// One direction of a relaying connection, split into disjoint borrows.
pub(crate) struct LaneParts<'a> {
    pub lane: &'a mut Lane,
    pub ends: Ends<'a>,
    pub inflight: &'a mut u16,
    pub last_active: &'a mut Instant,
    pub options: &'a RelayOptions,
    pub id: u64,
}

impl Conn {
    pub(crate) fn new(
        serial: u64,
        id: u64,
        options: Arc<RelayOptions>,
        first: Endpoint,
        second: Option<Endpoint>,
        phase: Phase,
    ) -> Conn {
        let now = Instant::now();
        Conn {
            serial,
            id,
            options,
            first,
            second,
            phase,
            inflight: 0,
            started: now,
            last_active: now,
            receive_cap: None,
            origin: None,
        }
    }

    pub(crate) fn is_relaying(&self) -> bool {
        matches!(self.phase, Phase::Relaying(_))
    }

    pub(crate) fn is_closing(&self) -> bool {
        matches!(self.phase, Phase::Closing { .. })
    }

    pub(crate) fn relaying(&self) -> Option<&Relaying> {
        match &self.phase {
            Phase::Relaying(r) => Some(r),
            _ => None,
        }
    }

    pub(crate) fn preluding_mut(&mut self) -> Option<&mut Preluding> {
        match &mut self.phase {
            Phase::Prelude(p) => Some(p),
            _ => None,
        }
    }

    pub(crate) fn dialing_mut(&mut self) -> Option<&mut Dialing> {
        match &mut self.phase {
            Phase::Dialing(d) => Some(d),
            _ => None,
        }
    }

    /// The end direction `dir` reads from and the one it writes to.
    pub(crate) fn source_and_sink(&self, dir: Direction) -> (Option<&Endpoint>, Option<&Endpoint>) {
        match dir {
            Direction::Forward => (Some(&self.first), self.second.as_ref()),
            Direction::Backward => (self.second.as_ref(), Some(&self.first)),
        }
    }

    /// Direction `dir`'s lane and ends, while relaying.
    pub(crate) fn lane_parts<'a>(
        &'a mut self,
        dir: Direction,
        devnull: BorrowedFd<'a>,
    ) -> Option<LaneParts<'a>> {
        let Conn {
            id,
            options,
            first,
            second,
            phase,
            inflight,
            last_active,
            ..
        } = self;
        let Phase::Relaying(relaying) = phase else {
            return None;
        };
        let lane = relaying.lanes[dir].as_mut()?;
        let fixed = relaying.parked.as_ref().map(|pair| {
            let [a, b] = pair.slots();
            match dir {
                Direction::Forward => [a, b],
                Direction::Backward => [b, a],
            }
        });
        let (source, sink) = match dir {
            Direction::Forward => (Some(&*first), second.as_mut()),
            Direction::Backward => (second.as_ref(), Some(first)),
        };
        let ends = Ends::new(source, sink, fixed, lane.discard(), devnull);
        Some(LaneParts {
            lane,
            ends,
            inflight,
            last_active,
            options,
            id: *id,
        })
    }

    /// Ends the connection's life with `reason`; false when it was closing already.
    pub(crate) fn begin_close(&mut self, reason: CloseReason) -> bool {
        if self.is_closing() {
            return false;
        }
        let (relaying, dialing) =
            match std::mem::replace(&mut self.phase, Phase::Relaying(Relaying::default())) {
                Phase::Relaying(r) => (r, None),
                Phase::Prelude(_) => (Relaying::default(), None),
                Phase::Dialing(d) => (Relaying::default(), Some(Box::new(d))),
                Phase::Closing { .. } => unreachable!("checked above"),
            };
        self.phase = Phase::Closing {
            reason,
            relaying,
            dialing,
        };
        true
    }

    /// Whether the connection can be parked: relaying, idle for `idle`, both ends sockets,
    /// both directions on pipes holding nothing and doing nothing but wait for their source.
    pub(crate) fn parkable(&self, now: Instant, idle: Duration) -> bool {
        let waits_only =
            Op::Readable(Direction::Forward).bit() | Op::Readable(Direction::Backward).bit();
        let Phase::Relaying(relaying) = &self.phase else {
            return false;
        };
        relaying.parked.is_none()
            && self.inflight & !waits_only == 0
            && now.saturating_duration_since(self.last_active) >= idle
            && self.first.is_socket()
            && self.second.as_ref().is_some_and(Endpoint::is_socket)
            && relaying
                .lanes
                .values()
                .all(|lane| lane.as_ref().is_none_or(Lane::parkable))
    }

    /// Brings the receive buffers of the connection's TCP sockets in line with the worker's
    /// cap (see [`super::rcvbudget::target`]), except where the user set `rcvbuf` on that
    /// address. A parked connection's sockets have no descriptors: they keep what they had.
    pub(crate) fn apply_receive_cap(&mut self, cap: Option<usize>) {
        let Some(bytes) = super::rcvbudget::target(self.receive_cap, cap) else {
            return;
        };
        let ends = [Some(&self.first), self.second.as_ref()];
        for (end, user_set) in ends.into_iter().zip(self.options.user_rcvbuf) {
            let Some(end) = end.filter(|_| !user_set) else {
                continue;
            };
            if let Err(e) = end.cap_tcp_receive_buffer(bytes) {
                debug!("conn {}: cannot cap the receive buffer: {e}", self.id);
            }
        }
        self.receive_cap = Some(bytes);
    }

    /// The connection for logs: its ends, and the declared origin of a client behind a proxy
    /// (`SOURCE via PROXY`).
    pub(crate) fn label(&self) -> String {
        let first = match &self.origin {
            Some(origin) => format!("{} via {}", origin.source, self.first.label()),
            None => self.first.label().to_string(),
        };
        match &self.second {
            Some(s) => format!("{first} <-> {}", s.label()),
            None => first,
        }
    }
}

/// What the connection should do after a direction changed state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    KeepGoing,
    /// One direction finished and `-t` is set: close if the other has not finished by then.
    StartLinger,
    Close(CloseReason),
}

/// Decides the connection's fate from the state of its directions (`None` = no such
/// direction). `lingering` is whether the `-t` countdown already runs; `linger` whether `-t`
/// was given.
pub(crate) fn verdict(states: [Option<FlowState>; 2], linger: bool, lingering: bool) -> Verdict {
    for (i, state) in states.iter().enumerate() {
        if let Some(FlowState::Failed(error)) = state {
            return Verdict::Close(CloseReason::Failed {
                direction: Direction::from_index(i),
                error: *error,
            });
        }
    }
    let enabled = states.iter().flatten().count();
    let finished = states
        .iter()
        .flatten()
        .filter(|s| **s == FlowState::Finished)
        .count();
    if finished == enabled {
        Verdict::Close(CloseReason::Done)
    } else if finished > 0 && linger && !lingering {
        Verdict::StartLinger
    } else {
        Verdict::KeepGoing
    }
}

#[cfg(test)]
mod tests {
    use super::super::lane::flow::{FillPolicy, Flow, Step};
    use super::*;

    fn finished() -> Flow {
        let mut f = Flow::new(8, FillPolicy::Eager);
        f.complete(Step::Fill { max: 8 }, Ok(0));
        f.confirm_end(super::super::lane::end::EndOfFile::Clean);
        f.complete(Step::ShutdownWrite, Ok(0));
        f
    }

    fn failed(errno: i32) -> Flow {
        let mut f = Flow::new(8, FillPolicy::Eager);
        f.complete(Step::Fill { max: 8 }, Err(errno));
        f
    }

    #[test]
    fn open_flows_keep_going() {
        let a = Flow::new(8, FillPolicy::Eager);
        let b = Flow::new(8, FillPolicy::Eager);
        assert_eq!(
            verdict([Some(a.state()), Some(b.state())], false, false),
            Verdict::KeepGoing
        );
    }

    #[test]
    fn half_close_keeps_the_other_direction_flowing() {
        let a = finished();
        let b = Flow::new(8, FillPolicy::Eager);
        assert_eq!(
            verdict([Some(a.state()), Some(b.state())], false, false),
            Verdict::KeepGoing
        );
        assert_eq!(
            verdict([Some(a.state()), Some(b.state())], true, false),
            Verdict::StartLinger
        );
        assert_eq!(
            verdict([Some(a.state()), Some(b.state())], true, true),
            Verdict::KeepGoing
        );
    }

    #[test]
    fn both_finished_closes_cleanly() {
        let a = finished();
        let b = finished();
        assert_eq!(
            verdict([Some(a.state()), Some(b.state())], false, false),
            Verdict::Close(CloseReason::Done)
        );
    }

    #[test]
    fn one_way_relays_close_when_their_direction_ends() {
        let a = finished();
        assert_eq!(
            verdict([Some(a.state()), None], true, false),
            Verdict::Close(CloseReason::Done)
        );
        let b = Flow::new(8, FillPolicy::Eager);
        assert_eq!(
            verdict([None, Some(b.state())], false, false),
            Verdict::KeepGoing
        );
    }

    #[test]
    fn a_failure_closes_and_names_the_direction() {
        let a = Flow::new(8, FillPolicy::Eager);
        let b = failed(libc::ECONNRESET);
        let v = verdict([Some(a.state()), Some(b.state())], false, false);
        let Verdict::Close(reason) = v else {
            panic!("expected close, got {v:?}")
        };
        assert!(reason.is_failure());
        assert!(
            reason
                .to_string()
                .starts_with("second->first: read failed: Connection reset"),
            "{reason}"
        );
    }

    #[test]
    fn close_reason_messages() {
        assert_eq!(CloseReason::Done.to_string(), "finished");
        assert_eq!(
            CloseReason::IdleTimeout.to_string(),
            "inactivity timeout (-T)"
        );
        assert_eq!(
            CloseReason::LingerExpired.to_string(),
            "half-close timeout (-t)"
        );
        assert!(!CloseReason::Stopped.is_failure());
        assert!(CloseReason::DialFailed("x".into()).is_failure());
        assert!(
            CloseReason::DialFailed("x".into()).truncates(),
            "a failed dial resets the client: its bytes reach no one"
        );
        assert!(!CloseReason::Done.truncates());
        assert!(!CloseReason::LingerExpired.truncates());
    }

    #[test]
    fn a_closing_connection_keeps_its_lanes_and_closes_once() {
        use super::super::Mode;
        use super::super::testing::{options, relaying_conn, unix_endpoint};
        let (first, _a) = unix_endpoint();
        let (second, _b) = unix_endpoint();
        let mut conn = relaying_conn(first, second, options(Mode::Copy));
        if let Phase::Relaying(r) = &mut conn.phase {
            r.lanes[Direction::Forward] = Some(Lane::Staged(super::super::lane::StagedLane::new(
                Flow::new(8, FillPolicy::Eager),
                super::super::lane::Staging::Copy(super::super::lane::CopyBuffer::new(8)),
                true,
                false,
            )));
        }
        let devnull = std::fs::File::open("/dev/null").unwrap();
        {
            use std::os::fd::AsFd;
            let parts = conn
                .lane_parts(Direction::Forward, devnull.as_fd())
                .unwrap();
            assert!(parts.ends.discard());
            assert!(
                parts.ends.destination().is_some(),
                "a discarding lane writes to /dev/null"
            );
            assert!(
                conn.lane_parts(Direction::Backward, devnull.as_fd())
                    .is_none()
            );
        }
        assert!(conn.begin_close(CloseReason::IdleTimeout));
        assert!(
            !conn.begin_close(CloseReason::Done),
            "a connection closes once"
        );
        let Phase::Closing {
            reason, relaying, ..
        } = &conn.phase
        else {
            panic!("closing")
        };
        assert_eq!(*reason, CloseReason::IdleTimeout);
        assert!(
            relaying.lanes[Direction::Forward].is_some(),
            "the lanes stay until the kernel has returned every request"
        );
        use std::os::fd::AsFd;
        assert!(
            conn.lane_parts(Direction::Forward, devnull.as_fd())
                .is_none()
        );
    }
}
