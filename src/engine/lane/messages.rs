//! The pure part of the message path: the [`Messages`] machine (what a direction does next,
//! what a receive or a send result means) and the 2-byte length framing rule
//! ([`len16_frame`]), both tested on literals; `message.rs` drives them with system calls.

use super::end::EndOfFile;
use super::flow::{FlowError, FlowOp, FlowState};

/// The length of the first complete frame in `buf` (its payload follows the 2-byte length),
/// or `None` while it is incomplete.
pub(crate) fn len16_frame(buf: &[u8]) -> Option<usize> {
    let [hi, lo, rest @ ..] = buf else {
        return None;
    };
    let len = usize::from(u16::from_be_bytes([*hi, *lo]));
    (rest.len() >= len).then_some(len)
}

/// What a receive gave the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Got {
    /// A whole message of this many bytes, ready to go out.
    Message(usize),
    /// Nothing now: wait for readiness.
    Nothing,
    /// The source ended (cleanly or not: [`Step::ConfirmEnd`] asks).
    End,
    /// The source failed, or broke the rules (EMSGSIZE: too large; EPROTO: a cut frame).
    Failed(i32),
}

/// What a send gave the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Put {
    /// The message (or the rest of its frame) went out.
    Whole,
    /// A stream took part of a frame: the rest goes after readiness.
    Part,
    /// No room now: wait for readiness.
    Blocked,
    /// Handed to a helper thread: the driver waits for it (the machine holds the message).
    Waiting,
    Failed(i32),
}

/// What the driver does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    Receive,
    Send,
    WaitReadable,
    WaitWritable,
    /// The source ended with nothing held: ask how ([`Messages::confirm_end`]).
    ConfirmEnd,
    /// Pass end of stream on.
    ShutdownWrite,
    Finished,
    Failed,
}

/// One message direction's bookkeeping.
#[derive(Debug, Clone)]
pub(crate) struct Messages {
    state: FlowState,
    /// The length of the message held for sending, if any.
    held: Option<usize>,
    source_idle: bool,
    sink_full: bool,
    end_confirmed: bool,
    bytes: u64,
    messages: u64,
}

impl Default for Messages {
    fn default() -> Messages {
        Messages::new()
    }
}

impl Messages {
    pub(crate) fn new() -> Messages {
        Messages {
            state: FlowState::Open,
            held: None,
            source_idle: true,
            sink_full: false,
            end_confirmed: false,
            bytes: 0,
            messages: 0,
        }
    }

    pub(crate) fn state(&self) -> FlowState {
        self.state
    }

    /// Bytes delivered (message bytes, without frame headers).
    pub(crate) fn delivered(&self) -> u64 {
        self.bytes
    }

    /// Messages delivered.
    pub(crate) fn messages(&self) -> u64 {
        self.messages
    }

    /// The length of the message held for sending, if any.
    pub(crate) fn held(&self) -> Option<usize> {
        self.held
    }

    pub(crate) fn next(&self) -> Step {
        match self.state {
            FlowState::Finished => return Step::Finished,
            FlowState::Failed(_) => return Step::Failed,
            _ => {}
        }
        if self.held.is_some() {
            return match self.sink_full {
                true => Step::WaitWritable,
                false => Step::Send,
            };
        }
        match self.state {
            FlowState::SourceEnded if self.end_confirmed => Step::ShutdownWrite,
            FlowState::SourceEnded => Step::ConfirmEnd,
            _ if self.source_idle => Step::WaitReadable,
            _ => Step::Receive,
        }
    }

    pub(crate) fn readable(&mut self) {
        self.source_idle = false;
    }

    pub(crate) fn writable(&mut self) {
        self.sink_full = false;
    }

    fn fail(&mut self, op: FlowOp, errno: i32) {
        self.state = FlowState::Failed(FlowError { op, errno });
    }

    pub(crate) fn received(&mut self, got: Got) {
        match got {
            Got::Message(len) => self.held = Some(len),
            Got::Nothing => self.source_idle = true,
            Got::End => self.state = FlowState::SourceEnded,
            Got::Failed(errno) => self.fail(FlowOp::Read, errno),
        }
    }

    pub(crate) fn sent(&mut self, put: Put) {
        match put {
            Put::Whole => {
                let len = self.held.take().unwrap_or(0);
                self.bytes += len as u64;
                self.messages += 1;
            }
            Put::Part | Put::Blocked => self.sink_full = true,
            Put::Waiting => {}
            Put::Failed(errno) => self.fail(FlowOp::Write, errno),
        }
    }

    pub(crate) fn confirm_end(&mut self, end: EndOfFile) {
        match end {
            EndOfFile::Clean => self.end_confirmed = true,
            EndOfFile::Reset(errno) => self.fail(FlowOp::Read, errno),
        }
    }

    pub(crate) fn shut_down(&mut self, result: Result<(), i32>) {
        match result {
            Ok(()) | Err(libc::ENOTCONN) => self.state = FlowState::Finished,
            Err(errno) => self.fail(FlowOp::Shutdown, errno),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_whole_only_with_all_its_bytes() {
        assert_eq!(len16_frame(b""), None);
        assert_eq!(len16_frame(b"\x00"), None);
        assert_eq!(len16_frame(b"\x00\x00"), Some(0));
        assert_eq!(len16_frame(b"\x00\x03ab"), None);
        assert_eq!(len16_frame(b"\x00\x03abc"), Some(3));
        assert_eq!(len16_frame(b"\x00\x03abc\x00\x01"), Some(3));
        assert_eq!(len16_frame(b"\x01\x00"), None, "256 bytes announced");
        let mut big = vec![0xff, 0xff];
        big.resize(2 + 65535, 7);
        assert_eq!(len16_frame(&big), Some(65535));
    }

    #[test]
    fn a_message_is_received_then_sent_whole_before_the_next_is_received() {
        let mut m = Messages::new();
        assert_eq!(m.next(), Step::WaitReadable);
        m.readable();
        assert_eq!(m.next(), Step::Receive);
        m.received(Got::Message(5));
        assert_eq!(m.next(), Step::Send);
        m.sent(Put::Blocked);
        assert_eq!(m.next(), Step::WaitWritable, "held, never received over");
        m.writable();
        assert_eq!(m.next(), Step::Send);
        m.sent(Put::Whole);
        assert_eq!((m.delivered(), m.messages()), (5, 1));
        assert_eq!(m.next(), Step::Receive);
        m.received(Got::Nothing);
        assert_eq!(m.next(), Step::WaitReadable);
    }

    #[test]
    fn a_zero_length_message_counts_as_a_message() {
        let mut m = Messages::new();
        m.readable();
        m.received(Got::Message(0));
        assert_eq!(m.next(), Step::Send);
        m.sent(Put::Whole);
        assert_eq!((m.delivered(), m.messages()), (0, 1));
    }

    #[test]
    fn a_part_of_a_frame_waits_for_room_for_the_rest() {
        let mut m = Messages::new();
        m.readable();
        m.received(Got::Message(100));
        m.sent(Put::Part);
        assert_eq!(m.next(), Step::WaitWritable);
        m.writable();
        m.sent(Put::Whole);
        assert_eq!(m.messages(), 1);
    }

    #[test]
    fn the_end_is_confirmed_then_passed_on() {
        let mut m = Messages::new();
        m.readable();
        m.received(Got::End);
        assert_eq!(m.next(), Step::ConfirmEnd);
        m.confirm_end(EndOfFile::Clean);
        assert_eq!(m.next(), Step::ShutdownWrite);
        m.shut_down(Ok(()));
        assert_eq!(m.next(), Step::Finished);
        assert_eq!(m.state(), FlowState::Finished);
    }

    #[test]
    fn a_reset_source_an_oversized_message_and_a_failed_send_fail_the_direction() {
        let mut m = Messages::new();
        m.readable();
        m.received(Got::End);
        m.confirm_end(EndOfFile::Reset(libc::ECONNRESET));
        assert_eq!(m.next(), Step::Failed);
        let mut m = Messages::new();
        m.readable();
        m.received(Got::Failed(libc::EMSGSIZE));
        assert_eq!(
            m.state(),
            FlowState::Failed(FlowError {
                op: FlowOp::Read,
                errno: libc::EMSGSIZE
            })
        );
        let mut m = Messages::new();
        m.readable();
        m.received(Got::Message(3));
        m.sent(Put::Failed(libc::EPIPE));
        assert_eq!(m.next(), Step::Failed);
    }
}
