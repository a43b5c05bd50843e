//! A relayed connection as an explicit state enum, and the pure rule that decides, from the
//! state of its two directions, whether it goes on, starts its half-close linger (`-t`), or
//! closes.

use std::fmt;

use super::flow::{FlowError, FlowState};

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// Both directions passed end of file on.
    Done,
    /// A direction failed; the other side gets its sockets closed.
    Failed {
        direction: Direction,
        error: FlowError,
    },
    /// The second address could not be opened.
    DialFailed(String),
    /// No byte moved for `-T` seconds.
    IdleTimeout,
    /// One direction ended `-t` seconds ago and the other did not follow.
    LingerExpired,
    /// The relay is shutting down (SIGINT/SIGTERM).
    Stopped,
    /// Setting up the data path failed (no pipe or buffer could be had).
    Setup(String),
}

impl CloseReason {
    /// Whether this ending counts as a failed connection in statistics and exit codes.
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            CloseReason::Failed { .. } | CloseReason::DialFailed(_) | CloseReason::Setup(_)
        )
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Done => write!(f, "finished"),
            CloseReason::Failed { direction, error } => write!(f, "{direction}: {error}"),
            CloseReason::DialFailed(why) => write!(f, "{why}"),
            CloseReason::IdleTimeout => write!(f, "inactivity timeout (-T)"),
            CloseReason::LingerExpired => write!(f, "half-close timeout (-t)"),
            CloseReason::Stopped => write!(f, "relay stopping"),
            CloseReason::Setup(why) => write!(f, "data path setup failed: {why}"),
        }
    }
}

/// The two directions of a connection: first address to second, and back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Backward,
}

impl Direction {
    pub const BOTH: [Direction; 2] = [Direction::Forward, Direction::Backward];

    pub fn index(self) -> usize {
        match self {
            Direction::Forward => 0,
            Direction::Backward => 1,
        }
    }

    pub fn from_index(i: usize) -> Direction {
        if i == 0 {
            Direction::Forward
        } else {
            Direction::Backward
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Forward => "first->second",
            Direction::Backward => "second->first",
        })
    }
}

/// Where a connection is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnState {
    /// Waiting for the second address to connect.
    Dialing,
    /// Both ends open; bytes move in the enabled directions.
    Relaying,
    /// Ended; waiting for the kernel to return the in-flight operations.
    Closing(CloseReason),
}

/// What the connection should do after a direction changed state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    KeepGoing,
    /// One direction finished and `-t` is set: close if the other has not finished by then.
    StartLinger,
    Close(CloseReason),
}

/// Decides the connection's fate from the state of its directions (`None` = no such
/// direction). `lingering` is whether the `-t` countdown already runs; `linger` whether `-t`
/// was given.
pub fn verdict(states: [Option<FlowState>; 2], linger: bool, lingering: bool) -> Verdict {
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
    use super::super::flow::{FillPolicy, Flow, Step};
    use super::*;

    fn finished() -> Flow {
        let mut f = Flow::new(8, FillPolicy::Eager);
        f.complete(Step::Fill { max: 8 }, Ok(0));
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
    }
}
