//! One direction of a relayed connection (source socket -> staging -> destination socket) as a
//! pure state machine.
//!
//! The machine decides *what* to do next ([`Flow::next`] returns a [`Step`]); a driver does it
//! (an inline non-blocking `splice(2)`, an io_uring SPLICE, or an io_uring read/write into a
//! registered buffer) and reports the result with [`Flow::complete`]. Nothing here touches a
//! descriptor, so every rule (partial transfers, EOF passed on as a write shutdown, waiting
//! for readiness, failure) is unit-tested without a ring. The staging area is a pipe or a
//! buffer; the machine only tracks how many bytes sit in it.

use std::fmt;

use super::end::EndOfFile;

/// What the driver should do next for this direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Move up to `max` bytes from the source into the (empty) staging area.
    Fill { max: usize },
    /// Move the `len` staged bytes to the destination.
    Drain { len: usize },
    /// The source had nothing: wait until it is readable, then call [`Flow::readable`].
    WaitReadable,
    /// The destination is full: wait until it is writable, then call [`Flow::writable`].
    WaitWritable,
    /// The source read end of file and everything was delivered: ask the source socket
    /// whether it ended cleanly or was reset, then call [`Flow::confirm_end`].
    ConfirmEnd,
    /// The source ended cleanly and everything was delivered: shut down the destination's
    /// write side.
    ShutdownWrite,
    /// End of stream passed on; nothing more to do.
    Finished,
    /// A transfer failed (the error is the flow state's, `FlowState::Failed`).
    Failed,
}

/// Which operation of a direction failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowOp {
    Read,
    Write,
    Shutdown,
}

/// A failed direction: the operation and the OS error number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowError {
    pub op: FlowOp,
    pub errno: i32,
}

impl fmt::Display for FlowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.op {
            FlowOp::Read => "read",
            FlowOp::Write => "write",
            FlowOp::Shutdown => "shutdown",
        };
        write!(
            f,
            "{op} failed: {}",
            std::io::Error::from_raw_os_error(self.errno)
        )
    }
}

/// What a direction does after a fill that returned less than it asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FillPolicy {
    /// Wait for readiness after any short fill: fewest system calls, but data that arrives
    /// while the staged bytes go out waits for a wake-up.
    Lazy,
    /// Always fill again until the source says EAGAIN: the most throughput, one failing
    /// system call per burst.
    Eager,
    /// Fill again after a short fill of at least `TRICKLE` bytes (or 1/16 of a smaller
    /// staging area): a stream is flowing; wait for readiness after a smaller one (a
    /// trickle). The default.
    Adaptive,
}

/// Short fills below this many bytes count as a trickle under [`FillPolicy::Adaptive`]. A
/// page: interactive messages stay below it, while the chunks of a stream that shares the
/// bandwidth with many others stay above it even when they are far below the pipe's size
/// (with 16 to 256 busy streams on 2 cores, a threshold of 1/16 of a 1 MiB pipe sent most of
/// them through a readiness round trip per chunk; perf/results/2026-11-26-2core-scale-many-streams.md).
pub(crate) const TRICKLE: usize = 4096;

impl FillPolicy {
    fn idle_below(self, capacity: usize) -> usize {
        match self {
            FillPolicy::Lazy => usize::MAX,
            FillPolicy::Eager => 0,
            FillPolicy::Adaptive => (capacity / 16).clamp(1, TRICKLE),
        }
    }
}

/// The lifecycle of a direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlowState {
    /// The source may still produce bytes.
    Open,
    /// The source reached end of file; staged bytes still go out, then the shutdown.
    SourceEnded,
    /// End of file has been passed on to the destination.
    Finished,
    Failed(FlowError),
}

/// One direction's bookkeeping.
#[derive(Debug, Clone)]
pub(crate) struct Flow {
    state: FlowState,
    capacity: usize,
    staged: usize,
    source_idle: bool,
    sink_full: bool,
    /// When a fill returns less than asked, the source is taken to be empty (wait for
    /// readiness) if the fill was also smaller than this; a larger short fill is followed by
    /// another fill at once, which picks up what arrived meanwhile (see [`FillPolicy`]).
    idle_below: usize,
    delivered: u64,
    /// The source's end of file was found clean ([`Flow::confirm_end`]).
    end_confirmed: bool,
}

impl Flow {
    /// A new direction whose staging area holds `capacity` bytes.
    pub(crate) fn new(capacity: usize, policy: FillPolicy) -> Flow {
        assert!(capacity > 0, "staging capacity must be positive");
        Flow {
            state: FlowState::Open,
            capacity,
            staged: 0,
            source_idle: false,
            sink_full: false,
            idle_below: policy.idle_below(capacity),
            delivered: 0,
            end_confirmed: false,
        }
    }

    pub(crate) fn state(&self) -> FlowState {
        self.state
    }

    /// Bytes sitting in the staging area.
    pub(crate) fn staged(&self) -> usize {
        self.staged
    }

    /// Bytes delivered to the destination so far.
    pub(crate) fn delivered(&self) -> u64 {
        self.delivered
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    #[cfg(test)]
    pub(crate) fn failure(&self) -> Option<FlowError> {
        match self.state {
            FlowState::Failed(e) => Some(e),
            _ => None,
        }
    }

    pub(crate) fn is_over(&self) -> bool {
        matches!(self.state, FlowState::Finished | FlowState::Failed(_))
    }

    /// Changes the staging capacity (a different pipe or a buffer). Staged bytes must fit.
    pub(crate) fn set_capacity(&mut self, capacity: usize) {
        assert!(capacity >= self.staged.max(1), "staged bytes must fit");
        self.capacity = capacity;
    }

    /// The next thing to do; a pure function of the state.
    pub(crate) fn next(&self) -> Step {
        match self.state {
            FlowState::Finished => Step::Finished,
            FlowState::Failed(_) => Step::Failed,
            FlowState::Open | FlowState::SourceEnded => {
                if self.staged > 0 {
                    if self.sink_full {
                        Step::WaitWritable
                    } else {
                        Step::Drain { len: self.staged }
                    }
                } else if self.state == FlowState::SourceEnded {
                    // A reset must never reach the other side as a FIN: the end of file is
                    // passed on only once the source says it was clean.
                    if self.end_confirmed {
                        Step::ShutdownWrite
                    } else {
                        Step::ConfirmEnd
                    }
                } else if self.source_idle {
                    Step::WaitReadable
                } else {
                    Step::Fill { max: self.capacity }
                }
            }
        }
    }

    /// Whether a fill follows once the `len` bytes of a drain about to go out are delivered
    /// in full: the source is open and was not found empty. A driver may then send that fill
    /// linked behind the drain, so that it runs in the kernel as soon as the drain is done.
    pub(crate) fn fills_after_drain(&self, len: usize) -> bool {
        self.state == FlowState::Open && !self.source_idle && !self.sink_full && len == self.staged
    }

    /// Records the result of `step`: a byte count, or an OS error number.
    pub(crate) fn complete(&mut self, step: Step, result: Result<usize, i32>) {
        if self.is_over() {
            return;
        }
        match (step, result) {
            (_, Err(libc::EINTR)) => {}
            (Step::Fill { .. }, Ok(0)) => self.state = FlowState::SourceEnded,
            (Step::Fill { max }, Ok(n)) => {
                debug_assert!(n <= max, "filled {n} of at most {max}");
                self.staged += n;
                if n < max && n < self.idle_below {
                    self.source_idle = true;
                }
            }
            (Step::Fill { .. }, Err(libc::EAGAIN)) => self.source_idle = true,
            (Step::Fill { .. }, Err(errno)) => self.fail(FlowOp::Read, errno),
            (Step::Drain { len }, Ok(n)) => {
                debug_assert!(n <= self.staged, "drained {n} of {} staged", self.staged);
                self.staged -= n.min(self.staged);
                self.delivered += n as u64;
                if n < len {
                    self.sink_full = true;
                }
            }
            (Step::Drain { .. }, Err(libc::EAGAIN)) => self.sink_full = true,
            (Step::Drain { .. }, Err(errno)) => self.fail(FlowOp::Write, errno),
            (Step::ShutdownWrite, Ok(_)) => self.state = FlowState::Finished,
            (Step::ShutdownWrite, Err(errno)) => self.fail(FlowOp::Shutdown, errno),
            (
                Step::ConfirmEnd
                | Step::WaitReadable
                | Step::WaitWritable
                | Step::Finished
                | Step::Failed,
                _,
            ) => {}
        }
    }

    /// Records what the source said about its end of file: a clean end is passed on, a reset
    /// fails the direction as a failed read (and so cuts the connection with resets).
    pub(crate) fn confirm_end(&mut self, end: EndOfFile) {
        if self.state != FlowState::SourceEnded {
            return;
        }
        match end {
            EndOfFile::Clean => self.end_confirmed = true,
            EndOfFile::Reset(errno) => self.fail(FlowOp::Read, errno),
        }
    }

    /// Waits for readiness before the first fill: a fresh connection's source is usually
    /// still empty, and a poll on a ready source completes at once anyway.
    pub(crate) fn await_readiness_first(&mut self) {
        if self.state == FlowState::Open && self.staged == 0 {
            self.source_idle = true;
        }
    }

    /// The source became readable (or reported an error or hang-up: the next fill tells).
    pub(crate) fn readable(&mut self) {
        self.source_idle = false;
    }

    /// The destination became writable.
    pub(crate) fn writable(&mut self) {
        self.sink_full = false;
    }

    /// Marks the direction failed from outside (for example, its staging area could not be set up).
    pub(crate) fn fail(&mut self, op: FlowOp, errno: i32) {
        if !self.is_over() {
            self.state = FlowState::Failed(FlowError { op, errno });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_cycle_passes_bytes_then_eof_as_shutdown() {
        let mut f = Flow::new(100, FillPolicy::Eager);
        assert_eq!(f.next(), Step::Fill { max: 100 });
        f.complete(Step::Fill { max: 100 }, Ok(60));
        assert_eq!(f.next(), Step::Drain { len: 60 });
        f.complete(Step::Drain { len: 60 }, Ok(60));
        assert_eq!(f.delivered(), 60);
        assert_eq!(f.next(), Step::Fill { max: 100 });
        f.complete(Step::Fill { max: 100 }, Ok(0));
        assert_eq!(f.state(), FlowState::SourceEnded);
        assert_eq!(f.next(), Step::ConfirmEnd);
        f.confirm_end(EndOfFile::Clean);
        assert_eq!(f.next(), Step::ShutdownWrite);
        f.complete(Step::ShutdownWrite, Ok(0));
        assert_eq!(f.next(), Step::Finished);
        assert!(f.is_over());
    }

    #[test]
    fn an_end_of_file_from_a_reset_source_fails_the_direction_and_never_shuts_down() {
        let mut f = Flow::new(100, FillPolicy::Eager);
        f.complete(Step::Fill { max: 100 }, Ok(40));
        f.complete(Step::Drain { len: 40 }, Ok(40));
        f.complete(Step::Fill { max: 100 }, Ok(0));
        assert_eq!(f.next(), Step::ConfirmEnd, "not ShutdownWrite: ask first");
        f.confirm_end(EndOfFile::Reset(libc::ECONNRESET));
        assert_eq!(f.next(), Step::Failed);
        assert_eq!(
            f.failure(),
            Some(FlowError {
                op: FlowOp::Read,
                errno: libc::ECONNRESET
            })
        );
    }

    #[test]
    fn a_fill_may_be_linked_behind_a_drain_only_while_the_source_flows() {
        let mut f = Flow::new(100, FillPolicy::Adaptive);
        f.complete(Step::Fill { max: 100 }, Ok(100));
        assert!(f.fills_after_drain(100), "a full fill: the source flows");
        assert!(
            !f.fills_after_drain(50),
            "only a drain of everything staged"
        );
        let mut trickle = Flow::new(1 << 20, FillPolicy::Adaptive);
        trickle.complete(Step::Fill { max: 1 << 20 }, Ok(10));
        assert!(
            !trickle.fills_after_drain(10),
            "a trickle waits for readiness"
        );
        let mut ended = Flow::new(100, FillPolicy::Eager);
        ended.complete(Step::Fill { max: 100 }, Ok(40));
        ended.complete(Step::Fill { max: 60 }, Ok(0));
        assert!(!ended.fills_after_drain(40), "no fill after end of file");
        let mut full = Flow::new(100, FillPolicy::Eager);
        full.complete(Step::Fill { max: 100 }, Ok(100));
        full.complete(Step::Drain { len: 100 }, Ok(30));
        assert!(!full.fills_after_drain(70), "the sink said it is full");
    }

    #[test]
    fn eof_waits_until_staged_bytes_are_delivered() {
        let mut f = Flow::new(100, FillPolicy::Eager);
        f.complete(Step::Fill { max: 100 }, Ok(100));
        f.complete(Step::Drain { len: 100 }, Ok(30));
        // Partial write: the destination is probably full, wait for room.
        assert_eq!(f.next(), Step::WaitWritable);
        f.writable();
        assert_eq!(f.next(), Step::Drain { len: 70 });
        f.complete(Step::Drain { len: 70 }, Err(libc::EAGAIN));
        assert_eq!(f.next(), Step::WaitWritable);
        f.writable();
        f.complete(Step::Drain { len: 70 }, Ok(70));
        assert_eq!(f.delivered(), 100);
        f.complete(Step::Fill { max: 100 }, Ok(0));
        assert_eq!(f.next(), Step::ConfirmEnd);
        f.confirm_end(EndOfFile::Clean);
        assert_eq!(f.next(), Step::ShutdownWrite);
    }

    #[test]
    fn would_block_on_the_source_waits_for_readiness() {
        let mut f = Flow::new(100, FillPolicy::Eager);
        f.complete(Step::Fill { max: 100 }, Err(libc::EAGAIN));
        assert_eq!(f.next(), Step::WaitReadable);
        f.readable();
        assert_eq!(f.next(), Step::Fill { max: 100 });
    }

    #[test]
    fn short_fill_policy() {
        let mut eager = Flow::new(100, FillPolicy::Eager);
        eager.complete(Step::Fill { max: 100 }, Ok(10));
        eager.complete(Step::Drain { len: 10 }, Ok(10));
        assert_eq!(eager.next(), Step::Fill { max: 100 });

        let mut lazy = Flow::new(100, FillPolicy::Lazy);
        lazy.complete(Step::Fill { max: 100 }, Ok(10));
        // Staged bytes still go out first.
        assert_eq!(lazy.next(), Step::Drain { len: 10 });
        lazy.complete(Step::Drain { len: 10 }, Ok(10));
        assert_eq!(lazy.next(), Step::WaitReadable);
        // A full fill does not mark the source idle.
        lazy.readable();
        lazy.complete(Step::Fill { max: 100 }, Ok(100));
        lazy.complete(Step::Drain { len: 100 }, Ok(100));
        assert_eq!(lazy.next(), Step::Fill { max: 100 });
    }

    #[test]
    fn adaptive_policy_keeps_pulling_a_flowing_stream_and_waits_on_a_trickle() {
        let mut f = Flow::new(1600, FillPolicy::Adaptive);
        // 200 of 1600 is at least 1/16: a stream is flowing, fill again after the drain.
        f.complete(Step::Fill { max: 1600 }, Ok(200));
        f.complete(Step::Drain { len: 200 }, Ok(200));
        assert_eq!(f.next(), Step::Fill { max: 1600 });
        // 50 is a trickle: wait for readiness.
        f.complete(Step::Fill { max: 1600 }, Ok(50));
        f.complete(Step::Drain { len: 50 }, Ok(50));
        assert_eq!(f.next(), Step::WaitReadable);
    }

    #[test]
    fn adaptive_policy_keeps_pulling_a_stream_whose_chunks_are_small_beside_a_large_pipe() {
        let pipe = 1 << 20;
        let mut f = Flow::new(pipe, FillPolicy::Adaptive);
        // 16 KiB is far below 1/16 of 1 MiB but well above a trickle: fill again.
        f.complete(Step::Fill { max: pipe }, Ok(16 << 10));
        f.complete(Step::Drain { len: 16 << 10 }, Ok(16 << 10));
        assert_eq!(f.next(), Step::Fill { max: pipe });
        // 64 bytes (an interactive message) is a trickle: wait for readiness.
        f.complete(Step::Fill { max: pipe }, Ok(64));
        f.complete(Step::Drain { len: 64 }, Ok(64));
        assert_eq!(f.next(), Step::WaitReadable);
    }

    #[test]
    fn errors_fail_the_direction_with_the_operation() {
        let mut f = Flow::new(100, FillPolicy::Eager);
        f.complete(Step::Fill { max: 100 }, Err(libc::ECONNRESET));
        assert_eq!(f.next(), Step::Failed);
        assert_eq!(
            f.failure(),
            Some(FlowError {
                op: FlowOp::Read,
                errno: libc::ECONNRESET
            })
        );
        let mut g = Flow::new(100, FillPolicy::Eager);
        g.complete(Step::Fill { max: 100 }, Ok(5));
        g.complete(Step::Drain { len: 5 }, Err(libc::EPIPE));
        assert_eq!(g.failure().map(|e| e.op), Some(FlowOp::Write));
        // Results after failure change nothing.
        g.complete(Step::Drain { len: 5 }, Ok(5));
        assert_eq!(g.delivered(), 0);
        assert_eq!(g.next(), Step::Failed);
    }

    #[test]
    fn error_messages_name_the_operation() {
        let e = FlowError {
            op: FlowOp::Write,
            errno: libc::EPIPE,
        };
        assert!(
            e.to_string().starts_with("write failed: Broken pipe"),
            "{e}"
        );
        let e = FlowError {
            op: FlowOp::Read,
            errno: libc::ECONNRESET,
        };
        assert!(
            e.to_string().starts_with("read failed: Connection reset"),
            "{e}"
        );
        let e = FlowError {
            op: FlowOp::Shutdown,
            errno: libc::EBADF,
        };
        assert!(
            e.to_string()
                .starts_with("shutdown failed: Bad file descriptor"),
            "{e}"
        );
    }

    #[test]
    fn a_fresh_direction_can_wait_for_readiness_first() {
        let mut f = Flow::new(100, FillPolicy::Eager);
        f.await_readiness_first();
        assert_eq!(f.next(), Step::WaitReadable);
        f.readable();
        assert_eq!(f.next(), Step::Fill { max: 100 });
    }

    #[test]
    fn eintr_is_retried() {
        let mut f = Flow::new(100, FillPolicy::Eager);
        f.complete(Step::Fill { max: 100 }, Err(libc::EINTR));
        assert_eq!(f.next(), Step::Fill { max: 100 });
    }

    #[test]
    fn shutdown_failure_is_reported() {
        let mut f = Flow::new(8, FillPolicy::Eager);
        f.complete(Step::Fill { max: 8 }, Ok(0));
        f.confirm_end(EndOfFile::Clean);
        f.complete(Step::ShutdownWrite, Err(libc::EBADF));
        assert_eq!(f.failure().map(|e| e.op), Some(FlowOp::Shutdown));
    }

    #[test]
    fn capacity_changes_keep_staged_bytes() {
        let mut f = Flow::new(16, FillPolicy::Eager);
        f.complete(Step::Fill { max: 16 }, Ok(16));
        f.set_capacity(64);
        assert_eq!(f.next(), Step::Drain { len: 16 });
        f.complete(Step::Drain { len: 16 }, Ok(16));
        assert_eq!(f.next(), Step::Fill { max: 64 });
    }
}
