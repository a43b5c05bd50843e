//! One direction on the buffer-ring data path (`--mode recv`), as a pure state machine.
//!
//! The source is read by one multishot receive that fills buffers the worker provides to the
//! kernel through a ring (IORING_REGISTER_PBUF_RING); every filled buffer is written to the
//! destination in arrival order and then handed back to the ring. Unlike [`super::flow`],
//! several buffers can be full at once, so receiving and sending overlap. When every buffer
//! is full the kernel ends the multishot receive (ENOBUFS): that is the back-pressure, and
//! the receive is armed again once a buffer comes back.
//!
//! A direction holds its buffers only while it has bytes ([`Hold`]): it waits for its source
//! to be readable holding none, takes a group then, and once it has drained (every buffer
//! back, nothing in flight, and the driver saw no byte for a while) it cancels the receive
//! and, after the receive's last completion, gives the group back and waits again.

use std::collections::VecDeque;

use super::end::EndOfFile;
use super::flow::{FlowError, FlowOp, FlowState};

/// Whether a direction holds its buffer group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hold {
    /// Holds none: waits for its source to be readable.
    Idle,
    /// Its source is readable: it needs a group (and waits while the cap leaves no room).
    Wanted,
    /// Holds a group: receives and sends.
    Held,
    /// Drained: its receive is being cancelled; the group goes back after the receive's last
    /// completion, unless bytes came in meanwhile.
    Releasing,
}

/// What the driver should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecvStep {
    /// Wait for the source to be readable (POLL_ADD), holding no buffers.
    WaitReadable,
    /// Take a buffer group (from the pool, or a new one under the cap).
    TakeBuffers,
    /// Submit the multishot receive.
    ArmReceive,
    /// Write `len` bytes of buffer `bid`, starting at `offset`.
    Send {
        bid: u16,
        offset: usize,
        len: usize,
    },
    /// Cancel the multishot receive: the direction drained.
    CancelReceive,
    /// Give the group back: drained, and no request uses it any more.
    GiveBack,
    /// The source read end of file and everything was sent: ask the source socket whether it
    /// ended cleanly or was reset, then call [`RecvFlow::confirm_end`].
    ConfirmEnd,
    /// Pass end of file on (the source ended cleanly).
    ShutdownWrite,
    /// Nothing to do until a completion arrives.
    Wait,
    Finished,
    Failed,
}

/// A direction's receive/send bookkeeping.
#[derive(Debug, Clone)]
pub(crate) struct RecvFlow {
    state: FlowState,
    hold: Hold,
    /// Buffers of a group.
    buffers: usize,
    /// Buffers the kernel may fill now.
    provided: usize,
    /// A readiness wait is in flight.
    polling: bool,
    receiving: bool,
    /// The receive's cancellation was asked for.
    cancelling: bool,
    sending: bool,
    shutting: bool,
    /// Filled buffers not yet fully written: (buffer id, bytes written, bytes filled).
    queue: VecDeque<(u16, usize, usize)>,
    delivered: u64,
    /// The source's end of file was found clean.
    end_confirmed: bool,
}

impl RecvFlow {
    /// A direction whose groups hold `buffers` buffers; it holds none yet and waits for its
    /// source to be readable first.
    pub(crate) fn new(buffers: usize) -> RecvFlow {
        assert!(buffers > 0, "a ring needs buffers");
        RecvFlow {
            state: FlowState::Open,
            hold: Hold::Idle,
            buffers,
            provided: 0,
            polling: false,
            receiving: false,
            cancelling: false,
            sending: false,
            shutting: false,
            queue: VecDeque::new(),
            delivered: 0,
            end_confirmed: false,
        }
    }

    pub(crate) fn state(&self) -> FlowState {
        self.state
    }

    pub(crate) fn delivered(&self) -> u64 {
        self.delivered
    }

    #[cfg(test)]
    pub(crate) fn is_receiving(&self) -> bool {
        self.receiving
    }

    /// Buffers of a group.
    pub(crate) fn buffers(&self) -> usize {
        self.buffers
    }

    #[cfg(test)]
    pub(crate) fn hold(&self) -> Hold {
        self.hold
    }

    /// Holding a group with every buffer back in the kernel's hands, nothing queued or being
    /// sent, and the source still open: the group could go back (the driver decides when).
    pub(crate) fn is_drained(&self) -> bool {
        self.hold == Hold::Held
            && self.state == FlowState::Open
            && self.queue.is_empty()
            && !self.sending
            && !self.shutting
            && self.provided == self.buffers
    }

    /// Whether every buffer of the group is provided to the kernel again (nothing queued):
    /// the group can be reused as it is.
    pub(crate) fn all_provided(&self) -> bool {
        self.queue.is_empty() && self.provided == self.buffers
    }

    /// The next thing to do; a pure function of the state.
    pub(crate) fn next(&self) -> RecvStep {
        match self.state {
            FlowState::Finished => return RecvStep::Finished,
            FlowState::Failed(_) => return RecvStep::Failed,
            FlowState::Open | FlowState::SourceEnded => {}
        }
        match self.hold {
            Hold::Idle if self.polling => return RecvStep::Wait,
            Hold::Idle => return RecvStep::WaitReadable,
            Hold::Wanted => return RecvStep::TakeBuffers,
            Hold::Held | Hold::Releasing => {}
        }
        if self.shutting {
            return RecvStep::Wait;
        }
        if !self.sending {
            if let Some(&(bid, offset, filled)) = self.queue.front() {
                return RecvStep::Send {
                    bid,
                    offset,
                    len: filled - offset,
                };
            }
            if self.state == FlowState::SourceEnded {
                // A reset must never reach the other side as a FIN (see `super::end`).
                return if self.end_confirmed {
                    RecvStep::ShutdownWrite
                } else {
                    RecvStep::ConfirmEnd
                };
            }
        }
        if self.hold == Hold::Releasing {
            return match (self.receiving, self.cancelling) {
                (true, false) => RecvStep::CancelReceive,
                (true, true) => RecvStep::Wait,
                // The receive's last completion is in and left nothing to send.
                (false, _) if self.sending => RecvStep::Wait,
                (false, _) => RecvStep::GiveBack,
            };
        }
        // Receiving goes on while a write is out: that overlap is the point of the ring.
        if self.state == FlowState::Open && !self.receiving && self.provided > 0 {
            return RecvStep::ArmReceive;
        }
        RecvStep::Wait
    }

    /// The driver submitted the step `next` returned.
    pub(crate) fn started(&mut self, step: RecvStep) {
        match step {
            RecvStep::WaitReadable => self.polling = true,
            RecvStep::CancelReceive => self.cancelling = true,
            RecvStep::ArmReceive => self.receiving = true,
            RecvStep::Send { .. } => self.sending = true,
            RecvStep::ShutdownWrite => self.shutting = true,
            _ => {}
        }
    }

    /// The source is readable (or its readiness wait ended some other way: the receive
    /// will tell): the direction wants its buffers.
    pub(crate) fn readable(&mut self) {
        self.polling = false;
        if self.hold == Hold::Idle {
            self.hold = Hold::Wanted;
        }
    }

    /// The driver took a group for a `Wanted` direction: every buffer is provided.
    pub(crate) fn took_buffers(&mut self) {
        if self.hold == Hold::Wanted {
            self.hold = Hold::Held;
            self.provided = self.buffers;
        }
    }

    /// The driver decided a drained direction gives its group back (see
    /// [`RecvFlow::is_drained`]); its receive is cancelled first.
    pub(crate) fn release(&mut self) {
        if self.is_drained() {
            self.hold = Hold::Releasing;
        }
    }

    /// The driver gave the group back: the direction waits for its source again.
    pub(crate) fn gave_back(&mut self) {
        if self.hold == Hold::Releasing {
            self.hold = Hold::Idle;
            self.provided = 0;
        }
    }

    /// One completion of the multishot receive: bytes in buffer `bid`, end of file (`Ok((_, 0))`),
    /// or an error number. `more` is false when the receive ended and must be armed again.
    pub(crate) fn received(&mut self, result: Result<(u16, usize), i32>, more: bool) {
        if !more {
            self.receiving = false;
            self.cancelling = false;
        }
        if self.is_over() {
            return;
        }
        self.take_received(result);
        // Bytes (or the end) that came in while the receive was being cancelled: the
        // direction keeps its group and goes on.
        if !more && self.hold == Hold::Releasing && !self.is_drained_releasing() {
            self.hold = Hold::Held;
        }
    }

    /// Releasing, and still nothing queued and every buffer back (nothing came in).
    fn is_drained_releasing(&self) -> bool {
        self.state == FlowState::Open && self.queue.is_empty() && self.provided == self.buffers
    }

    fn take_received(&mut self, result: Result<(u16, usize), i32>) {
        match result {
            Ok((bid, n)) if n > 0 => {
                self.provided = self.provided.saturating_sub(1);
                self.queue.push_back((bid, 0, n));
            }
            Ok(_) => {
                if self.state == FlowState::Open {
                    self.state = FlowState::SourceEnded;
                }
            }
            // Every buffer is full (ENOBUFS), or the receive was interrupted: arm it again
            // once a buffer is back.
            Err(libc::ENOBUFS | libc::EINTR | libc::EAGAIN | libc::ECANCELED) => {}
            Err(errno) => self.fail(FlowOp::Read, errno),
        }
    }

    /// The write completed. Returns the buffer to hand back to the ring, if it is now empty.
    pub(crate) fn sent(&mut self, result: Result<usize, i32>) -> Option<u16> {
        self.sending = false;
        if self.is_over() {
            return None;
        }
        match result {
            Ok(n) => {
                self.delivered += n as u64;
                let front = self.queue.front_mut()?;
                front.1 += n;
                if front.1 >= front.2 {
                    let (bid, ..) = self.queue.pop_front()?;
                    self.provided += 1;
                    return Some(bid);
                }
                None
            }
            Err(libc::EAGAIN | libc::EINTR) => None,
            Err(errno) => {
                self.fail(FlowOp::Write, errno);
                None
            }
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

    /// The write shutdown completed.
    pub(crate) fn shut_down(&mut self, result: Result<(), i32>) {
        self.shutting = false;
        if self.is_over() {
            return;
        }
        match result {
            Ok(()) => self.state = FlowState::Finished,
            Err(errno) => self.fail(FlowOp::Shutdown, errno),
        }
    }

    pub(crate) fn fail(&mut self, op: FlowOp, errno: i32) {
        if !self.is_over() {
            self.state = FlowState::Failed(FlowError { op, errno });
        }
    }

    fn is_over(&self) -> bool {
        matches!(self.state, FlowState::Finished | FlowState::Failed(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A direction that woke and took its group of `buffers` buffers.
    fn held(buffers: usize) -> RecvFlow {
        let mut f = RecvFlow::new(buffers);
        f.started(f.next());
        f.readable();
        assert_eq!(f.next(), RecvStep::TakeBuffers);
        f.took_buffers();
        f
    }

    #[test]
    fn an_idle_direction_holds_no_buffers_until_its_source_is_readable() {
        let mut f = RecvFlow::new(8);
        assert_eq!(f.hold(), Hold::Idle);
        assert_eq!(f.next(), RecvStep::WaitReadable);
        f.started(RecvStep::WaitReadable);
        assert_eq!(f.next(), RecvStep::Wait, "one readiness wait at a time");
        f.readable();
        assert_eq!(f.hold(), Hold::Wanted);
        // No room under the cap: the direction keeps asking, nothing else happens.
        assert_eq!(f.next(), RecvStep::TakeBuffers);
        assert_eq!(f.next(), RecvStep::TakeBuffers);
        f.took_buffers();
        assert_eq!(f.hold(), Hold::Held);
        assert_eq!(f.next(), RecvStep::ArmReceive);
    }

    #[test]
    fn a_drained_direction_cancels_its_receive_and_gives_its_group_back_after_the_last_completion()
    {
        let mut f = held(2);
        f.started(RecvStep::ArmReceive);
        f.received(Ok((0, 10)), true);
        assert!(!f.is_drained(), "bytes queued");
        f.release();
        assert_eq!(f.hold(), Hold::Held, "only a drained direction releases");
        f.started(f.next());
        assert_eq!(f.sent(Ok(10)), Some(0));
        assert!(f.is_drained());
        f.release();
        assert_eq!(f.hold(), Hold::Releasing);
        assert_eq!(f.next(), RecvStep::CancelReceive);
        f.started(RecvStep::CancelReceive);
        assert_eq!(
            f.next(),
            RecvStep::Wait,
            "the receive's data lives until it completes"
        );
        f.received(Err(libc::ECANCELED), false);
        assert_eq!(f.next(), RecvStep::GiveBack);
        f.gave_back();
        assert_eq!(f.hold(), Hold::Idle);
        assert_eq!(f.next(), RecvStep::WaitReadable);
        assert_eq!(f.delivered(), 10);
    }

    #[test]
    fn bytes_that_arrive_while_the_receive_is_cancelled_keep_the_group() {
        let mut f = held(2);
        f.started(RecvStep::ArmReceive);
        f.release();
        f.started(f.next());
        // The cancel raced with incoming bytes: they come before the last completion.
        f.received(Ok((1, 7)), true);
        f.received(Err(libc::ECANCELED), false);
        assert_eq!(f.hold(), Hold::Held);
        let send = f.next();
        assert_eq!(
            send,
            RecvStep::Send {
                bid: 1,
                offset: 0,
                len: 7
            }
        );
        f.started(send);
        assert_eq!(f.next(), RecvStep::ArmReceive, "receiving goes on");
    }

    #[test]
    fn bytes_sent_while_releasing_go_out_before_the_group_goes_back() {
        let mut f = held(2);
        f.started(RecvStep::ArmReceive);
        f.release();
        f.started(f.next());
        f.received(Ok((0, 3)), true);
        let send = f.next();
        assert!(matches!(send, RecvStep::Send { len: 3, .. }));
        f.started(send);
        f.received(Err(libc::ECANCELED), false);
        assert_eq!(
            f.hold(),
            Hold::Held,
            "bytes still queued at the last completion"
        );
        assert_eq!(f.sent(Ok(3)), Some(0));
        assert!(f.is_drained());
    }

    #[test]
    fn the_end_of_file_as_the_last_completion_of_a_cancelled_receive_is_passed_on() {
        let mut f = held(2);
        f.started(RecvStep::ArmReceive);
        f.release();
        f.started(f.next());
        f.received(Ok((0, 0)), false);
        assert_eq!(f.state(), FlowState::SourceEnded);
        assert_eq!(f.next(), RecvStep::ConfirmEnd);
        f.confirm_end(EndOfFile::Clean);
        assert_eq!(f.next(), RecvStep::ShutdownWrite);
    }

    #[test]
    fn an_error_while_idle_surfaces_from_the_receive() {
        // POLLERR/POLLHUP wake the direction like bytes do; the receive reports the error.
        let mut f = RecvFlow::new(2);
        f.started(f.next());
        f.readable();
        f.took_buffers();
        f.started(f.next());
        f.received(Err(libc::ECONNRESET), false);
        assert_eq!(f.next(), RecvStep::Failed);
    }

    #[test]
    fn receives_and_sends_overlap_in_order() {
        let mut f = held(4);
        assert_eq!(f.next(), RecvStep::ArmReceive);
        f.started(RecvStep::ArmReceive);
        assert_eq!(f.next(), RecvStep::Wait);
        f.received(Ok((2, 100)), true);
        f.received(Ok((0, 50)), true);
        let send = f.next();
        assert_eq!(
            send,
            RecvStep::Send {
                bid: 2,
                offset: 0,
                len: 100
            }
        );
        f.started(send);
        // While a write is out, more data may arrive; the next write waits its turn.
        f.received(Ok((1, 10)), true);
        assert_eq!(f.next(), RecvStep::Wait);
        assert_eq!(f.sent(Ok(100)), Some(2), "buffer 2 goes back to the ring");
        assert_eq!(
            f.next(),
            RecvStep::Send {
                bid: 0,
                offset: 0,
                len: 50
            }
        );
        assert_eq!(f.delivered(), 100);
    }

    #[test]
    fn partial_writes_continue_from_the_offset() {
        let mut f = held(2);
        f.started(RecvStep::ArmReceive);
        f.received(Ok((1, 100)), true);
        f.started(f.next());
        assert_eq!(f.sent(Ok(30)), None);
        assert_eq!(
            f.next(),
            RecvStep::Send {
                bid: 1,
                offset: 30,
                len: 70
            }
        );
        f.started(f.next());
        assert_eq!(f.sent(Ok(70)), Some(1));
    }

    #[test]
    fn full_ring_ends_the_receive_and_a_returned_buffer_rearms_it() {
        let mut f = held(2);
        f.started(RecvStep::ArmReceive);
        f.received(Ok((0, 8)), true);
        f.received(Ok((1, 8)), true);
        f.received(Err(libc::ENOBUFS), false);
        assert!(!f.is_receiving());
        let first = f.next();
        assert_eq!(
            first,
            RecvStep::Send {
                bid: 0,
                offset: 0,
                len: 8
            }
        );
        f.started(first);
        // No buffer free: nothing to arm while the first write is out.
        assert_eq!(f.next(), RecvStep::Wait);
        assert_eq!(f.sent(Ok(8)), Some(0));
        // Buffer 1 goes out next; with buffer 0 back, the receive is armed alongside.
        let second = f.next();
        assert_eq!(
            second,
            RecvStep::Send {
                bid: 1,
                offset: 0,
                len: 8
            }
        );
        f.started(second);
        assert_eq!(f.next(), RecvStep::ArmReceive);
        f.started(RecvStep::ArmReceive);
        assert_eq!(f.next(), RecvStep::Wait);
    }

    #[test]
    fn end_of_file_is_passed_on_after_the_queue_drains() {
        let mut f = held(2);
        f.started(RecvStep::ArmReceive);
        f.received(Ok((0, 5)), true);
        f.received(Ok((0, 0)), false);
        assert_eq!(f.state(), FlowState::SourceEnded);
        assert_eq!(
            f.next(),
            RecvStep::Send {
                bid: 0,
                offset: 0,
                len: 5
            }
        );
        f.started(f.next());
        f.sent(Ok(5));
        assert_eq!(
            f.next(),
            RecvStep::ConfirmEnd,
            "asked only once the queue drained"
        );
        f.confirm_end(EndOfFile::Clean);
        assert_eq!(f.next(), RecvStep::ShutdownWrite);
        f.started(RecvStep::ShutdownWrite);
        assert_eq!(f.next(), RecvStep::Wait);
        f.shut_down(Ok(()));
        assert_eq!(f.next(), RecvStep::Finished);
    }

    #[test]
    fn an_end_of_file_from_a_reset_source_fails_the_direction_and_never_shuts_down() {
        let mut f = held(2);
        f.started(RecvStep::ArmReceive);
        f.received(Ok((1, 7)), true);
        f.received(Ok((0, 0)), false);
        f.started(f.next());
        f.sent(Ok(7));
        assert_eq!(f.next(), RecvStep::ConfirmEnd);
        f.confirm_end(EndOfFile::Reset(libc::ECONNRESET));
        assert_eq!(f.next(), RecvStep::Failed);
        assert_eq!(
            f.state(),
            FlowState::Failed(FlowError {
                op: FlowOp::Read,
                errno: libc::ECONNRESET
            })
        );
    }

    #[test]
    fn errors_fail_with_the_operation() {
        let mut f = held(2);
        f.started(RecvStep::ArmReceive);
        f.received(Err(libc::ECONNRESET), false);
        assert_eq!(f.next(), RecvStep::Failed);
        let mut g = held(2);
        g.started(RecvStep::ArmReceive);
        g.received(Ok((0, 5)), true);
        g.started(g.next());
        g.sent(Err(libc::EPIPE));
        assert!(matches!(
            g.state(),
            FlowState::Failed(FlowError {
                op: FlowOp::Write,
                errno: libc::EPIPE
            })
        ));
    }
}
