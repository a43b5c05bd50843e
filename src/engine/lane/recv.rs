//! One direction on the buffer-ring data path (`--mode recv`), as a pure state machine.
//!
//! The source is read by one multishot receive that fills buffers the worker provides to the
//! kernel through a ring (IORING_REGISTER_PBUF_RING); every filled buffer is written to the
//! destination in arrival order and then handed back to the ring. Unlike [`super::flow`],
//! several buffers can be full at once, so receiving and sending overlap. When every buffer
//! is full the kernel ends the multishot receive (ENOBUFS): that is the back-pressure, and
//! the receive is armed again once a buffer comes back.

use std::collections::VecDeque;

use super::flow::{FlowError, FlowOp, FlowState};

/// What the driver should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecvStep {
    /// Submit the multishot receive.
    ArmReceive,
    /// Write `len` bytes of buffer `bid`, starting at `offset`.
    Send {
        bid: u16,
        offset: usize,
        len: usize,
    },
    /// Pass end of file on.
    ShutdownWrite,
    /// Nothing to do until a completion arrives.
    Wait,
    Finished,
    Failed,
}

/// A direction's receive/send bookkeeping.
#[derive(Debug, Clone)]
pub struct RecvFlow {
    state: FlowState,
    /// Buffers the kernel may fill now.
    provided: usize,
    receiving: bool,
    sending: bool,
    shutting: bool,
    /// Filled buffers not yet fully written: (buffer id, bytes written, bytes filled).
    queue: VecDeque<(u16, usize, usize)>,
    delivered: u64,
}

impl RecvFlow {
    /// A direction whose ring holds `buffers` buffers, all provided to the kernel.
    pub fn new(buffers: usize) -> RecvFlow {
        assert!(buffers > 0, "a ring needs buffers");
        RecvFlow {
            state: FlowState::Open,
            provided: buffers,
            receiving: false,
            sending: false,
            shutting: false,
            queue: VecDeque::new(),
            delivered: 0,
        }
    }

    pub fn state(&self) -> FlowState {
        self.state
    }

    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    pub fn is_receiving(&self) -> bool {
        self.receiving
    }

    /// The next thing to do; a pure function of the state.
    pub fn next(&self) -> RecvStep {
        match self.state {
            FlowState::Finished => return RecvStep::Finished,
            FlowState::Failed(_) => return RecvStep::Failed,
            FlowState::Open | FlowState::SourceEnded => {}
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
                return RecvStep::ShutdownWrite;
            }
        }
        // Receiving goes on while a write is out: that overlap is the point of the ring.
        if self.state == FlowState::Open && !self.receiving && self.provided > 0 {
            return RecvStep::ArmReceive;
        }
        RecvStep::Wait
    }

    /// The driver submitted the step `next` returned.
    pub fn started(&mut self, step: RecvStep) {
        match step {
            RecvStep::ArmReceive => self.receiving = true,
            RecvStep::Send { .. } => self.sending = true,
            RecvStep::ShutdownWrite => self.shutting = true,
            _ => {}
        }
    }

    /// One completion of the multishot receive: bytes in buffer `bid`, end of file (`Ok((_, 0))`),
    /// or an error number. `more` is false when the receive ended and must be armed again.
    pub fn received(&mut self, result: Result<(u16, usize), i32>, more: bool) {
        if !more {
            self.receiving = false;
        }
        if self.is_over() {
            return;
        }
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
    pub fn sent(&mut self, result: Result<usize, i32>) -> Option<u16> {
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

    /// The write shutdown completed.
    pub fn shut_down(&mut self, result: Result<(), i32>) {
        self.shutting = false;
        if self.is_over() {
            return;
        }
        match result {
            Ok(()) => self.state = FlowState::Finished,
            Err(errno) => self.fail(FlowOp::Shutdown, errno),
        }
    }

    pub fn fail(&mut self, op: FlowOp, errno: i32) {
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

    #[test]
    fn receives_and_sends_overlap_in_order() {
        let mut f = RecvFlow::new(4);
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
        let mut f = RecvFlow::new(2);
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
        let mut f = RecvFlow::new(2);
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
        let mut f = RecvFlow::new(2);
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
        assert_eq!(f.next(), RecvStep::ShutdownWrite);
        f.started(RecvStep::ShutdownWrite);
        assert_eq!(f.next(), RecvStep::Wait);
        f.shut_down(Ok(()));
        assert_eq!(f.next(), RecvStep::Finished);
    }

    #[test]
    fn errors_fail_with_the_operation() {
        let mut f = RecvFlow::new(2);
        f.started(RecvStep::ArmReceive);
        f.received(Err(libc::ECONNRESET), false);
        assert_eq!(f.next(), RecvStep::Failed);
        let mut g = RecvFlow::new(2);
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
