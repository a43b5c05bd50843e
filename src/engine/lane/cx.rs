//! What a lane may use while it runs ([`Cx`]: its connection's ends and submissions, the
//! worker's registry and pipe pool, the loop's clock) and how a pump ended ([`Pumped`]).

use std::time::Instant;

use super::super::config::RelayOptions;
use super::super::direction::Direction;
use super::super::ends::Ends;
use super::super::registry::Registry;
use super::super::ring::ConnOps;
use super::end;
use super::splice::PipePool;

/// What a lane may use while it runs: its connection's ends and submissions, and the
/// worker's registry and pipe pool.
pub(crate) struct Cx<'a> {
    pub ops: ConnOps<'a>,
    pub ends: Ends<'a>,
    pub registry: &'a mut Registry,
    pub pipes: &'a mut PipePool,
    pub last_active: &'a mut Instant,
    /// The worker loop's clock (read once a turn).
    pub now: Instant,
    pub options: &'a RelayOptions,
    /// The connection's number, for logs.
    pub id: u64,
    pub dir: Direction,
    /// Transfers the lane may make before it yields its turn.
    pub turn: u32,
}

impl Cx<'_> {
    /// How the direction's source ended, once a read returned 0 (see [`end::classify`]);
    /// a reset is logged here, for both data paths.
    pub(crate) fn source_end(&self) -> end::EndOfFile {
        let end = self.ends.source_end();
        if end != end::EndOfFile::Clean {
            crate::debug!(
                "conn {}: {}: the source's end of file is a reset",
                self.id,
                self.dir
            );
        }
        end
    }

    /// Records that bytes moved now (inactivity timeout, parking, receive budget).
    pub(crate) fn moved(&mut self, outcome: Result<usize, i32>) {
        if matches!(outcome, Ok(n) if n > 0) {
            *self.last_active = self.now;
        }
    }
}

/// How a pump ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pumped {
    /// Waits for a completion.
    Waiting,
    /// Used up its turn with work left: run it again after the others.
    Yield,
    /// Finished or failed: the connection decides whether it goes on.
    Ended,
    /// Could not take a pipe (the process or the system is out of descriptors): nothing was
    /// lost; run it again after a pause, as dials wait for descriptors. Also: no room under
    /// the staging cap for a copy buffer or a buffer group.
    NoDescriptors,
    /// Waits for a completion, holding buffers it gives back if nothing comes: run it again
    /// after this long (a ring-path direction that drained).
    RecheckAfter(std::time::Duration),
}
