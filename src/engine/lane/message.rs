//! A direction that carries messages: from a message socket (SOCK_SEQPACKET, a datagram
//! socket) or a stream framed with 2-byte lengths (`framing=len16`), to either. Each message
//! arrives whole, with its length known, and leaves as one message (or one frame): same
//! bytes, same boundaries, same order.
//!
//! [`Messages`] (in `messages.rs`) is the pure machine (what to do next, what a result
//! means); [`MessageLane`] drives it with inline non-blocking system calls after io_uring readiness polls, the form
//! the splice path uses: a message is received and, most of the time, sent in the same turn,
//! so no buffer is ever in the kernel's hands between turns.
//!
//! Bounds: a message larger than the lane's limit ([`MESSAGE_MAX`]; 65,535 bytes where a
//! frame or a datagram carries it) is an error of that connection, logged, never cut short.
//! A framed stream that ends inside a frame is cut with a reset.
//!
//! vsock SEQPACKET sinks: a non-blocking send that finds room for part of a message queues
//! that part and still answers EAGAIN; sent again, the two would reach the peer as one merged
//! message. Messages into vsock SEQPACKET therefore go out whole from a helper thread
//! (`lane/whole_send.rs`), and the direction waits for its result.

use super::super::ring::poll_sqe;
use super::super::token::Op;
use super::cx::{Cx, Pumped};
use super::messages::{Got, Messages, Put, Step, len16_frame};
use super::whole_send::WholeSender;
use crate::net::endpoint::Endpoint;
use crate::sys::message::{self, Received, ZeroMeans};
use crate::warn;

/// The largest message a direction between message sockets carries: vsock's default buffer
/// (a larger SEQPACKET message cannot reach a default vsock peer at all) and more than a UNIX
/// SEQPACKET socket's default send buffer lets a sender write.
pub(crate) const MESSAGE_MAX: usize = 256 * 1024;

/// The largest message behind a 2-byte length, and the largest datagram.
pub(crate) const FRAMED_MAX: usize = u16::MAX as usize;

/// How one end carries messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// One message per receive or send; what a 0-byte receive means.
    Packets(ZeroMeans),
    /// A stream, each message behind its 2-byte length.
    Framed,
}

impl Shape {
    fn of(end: &Endpoint) -> Shape {
        if !end.is_message() {
            Shape::Framed
        } else if end.is_datagram() {
            Shape::Packets(ZeroMeans::Message)
        } else if end.is_unix() {
            Shape::Packets(ZeroMeans::AskCredentials)
        } else {
            Shape::Packets(ZeroMeans::End)
        }
    }

    /// The largest message this end carries.
    fn limit(self) -> usize {
        match self {
            Shape::Packets(ZeroMeans::Message) | Shape::Framed => FRAMED_MAX,
            Shape::Packets(_) => MESSAGE_MAX,
        }
    }
}

/// A direction on the message path.
#[derive(Debug)]
pub(crate) struct MessageLane {
    machine: Messages,
    source: Shape,
    sink: Shape,
    limit: usize,
    discard: bool,
    /// The sink is vsock SEQPACKET: messages go out whole from a helper thread.
    vsock_sink: bool,
    sender: Option<WholeSender>,
    /// The message going out (behind its 2-byte length for a framed sink), from index 0 on
    /// a framed sink and 2 on a message sink; allocated at the first message.
    out: Vec<u8>,
    /// Bytes of `out` a framed sink already took.
    sent: usize,
    /// A framed source's bytes not yet taken as messages.
    inbox: Vec<u8>,
    /// Messages received before the handover (a UDP session's first datagrams), taken before
    /// the source's.
    early: std::collections::VecDeque<Vec<u8>>,
}

impl MessageLane {
    /// The lane between `source` and `sink` (at least one of them keeps message boundaries;
    /// the other, if a stream, is framed). Sets up the sockets for it: credentials on a UNIX
    /// SEQPACKET source, whole blocking sends into a vsock SEQPACKET sink.
    pub(crate) fn setup(source: &Endpoint, sink: Option<&Endpoint>, discard: bool) -> MessageLane {
        let source_shape = Shape::of(source);
        let sink_shape = sink.map_or(Shape::Packets(ZeroMeans::End), Shape::of);
        if source_shape == Shape::Packets(ZeroMeans::AskCredentials) {
            if let Some(fd) = source.read_fd() {
                if let Err(e) = message::pass_credentials(fd) {
                    warn!("SO_PASSCRED on {}: {e}", source.label());
                }
            }
        }
        let vsock_sink = sink.is_some_and(|s| s.is_vsock() && s.is_message()) && !discard;
        let limit = match discard {
            true => source_shape.limit(),
            false => source_shape.limit().min(sink_shape.limit()),
        };
        let mut lane = MessageLane {
            machine: Messages::new(),
            vsock_sink,
            sender: None,
            source: source_shape,
            sink: sink_shape,
            limit,
            discard,
            out: Vec::new(),
            sent: 0,
            inbox: Vec::new(),
            early: Default::default(),
        };
        // A UDP session's first datagrams, received before the handover, go first.
        lane.early = source.take_first_messages().into();
        if !lane.early.is_empty() {
            lane.machine.readable();
        }
        lane
    }

    pub(crate) fn machine(&self) -> &Messages {
        &self.machine
    }

    pub(crate) fn discard(&self) -> bool {
        self.discard
    }

    pub(crate) fn readable(&mut self) {
        self.machine.readable();
    }

    pub(crate) fn writable(&mut self) {
        self.machine.writable();
    }

    /// Runs the direction until it must wait, ends, or uses up its turn.
    pub(crate) fn pump(&mut self, cx: &mut Cx<'_>) -> Pumped {
        let dir = cx.dir;
        let mut turn = cx.turn;
        loop {
            if cx.ops.in_flight(Op::Readable(dir)) || cx.ops.in_flight(Op::Writable(dir)) {
                return Pumped::Waiting;
            }
            match self.machine.next() {
                Step::Receive => {
                    let got = self.receive(cx);
                    if let Got::Message(_) = got {
                        cx.moved(Ok(1));
                    }
                    self.machine.received(got);
                }
                Step::Send => {
                    let put = self.send(cx);
                    if put == Put::Whole {
                        cx.moved(Ok(1));
                    }
                    self.machine.sent(put);
                    if put == Put::Waiting {
                        return Pumped::Waiting;
                    }
                }
                Step::WaitReadable => {
                    let Some(source) = cx.ends.source() else {
                        self.machine.received(Got::Failed(libc::EBADF));
                        continue;
                    };
                    cx.ops
                        .push(Op::Readable(dir), poll_sqe(source, libc::POLLIN));
                    return Pumped::Waiting;
                }
                Step::WaitWritable => {
                    let Some(sink) = cx.ends.destination() else {
                        self.machine.sent(Put::Failed(libc::EBADF));
                        continue;
                    };
                    cx.ops
                        .push(Op::Writable(dir), poll_sqe(sink, libc::POLLOUT));
                    return Pumped::Waiting;
                }
                Step::ConfirmEnd => self.machine.confirm_end(cx.source_end()),
                Step::ShutdownWrite => {
                    crate::debug!("conn {}: {dir} reached end of stream", cx.id);
                    self.machine.shut_down(cx.ends.shutdown_write());
                }
                Step::Finished | Step::Failed => return Pumped::Ended,
            }
            turn = turn.saturating_sub(1);
            if turn == 0 {
                return Pumped::Yield;
            }
        }
    }

    /// Where a message's bytes start in `out`: after room for the 2-byte length.
    const BODY: usize = 2;

    fn receive(&mut self, cx: &mut Cx<'_>) -> Got {
        let Some(fd) = cx.ends.source() else {
            return Got::Failed(libc::EBADF);
        };
        let super::super::ring::Target::Fd(fd) = fd else {
            return Got::Failed(libc::EBADF);
        };
        if self.out.is_empty() {
            self.out = vec![0; Self::BODY + self.limit];
        }
        if let Some(early) = self.early.pop_front() {
            if early.len() > self.limit {
                return Got::Failed(libc::EMSGSIZE);
            }
            self.out[Self::BODY..Self::BODY + early.len()].copy_from_slice(&early);
            return self.hold(early.len());
        }
        match self.source {
            Shape::Packets(zero) => {
                match message::recv_message(fd, &mut self.out[Self::BODY..], zero) {
                    Ok(Received::Message(len)) if len > self.limit => {
                        warn!(
                            "conn {}: {}: a message of {len} bytes is larger than the {} the \
                             other end takes: connection cut",
                            cx.id, cx.dir, self.limit
                        );
                        Got::Failed(libc::EMSGSIZE)
                    }
                    Ok(Received::Message(len)) => self.hold(len),
                    Ok(Received::Nothing) => Got::Nothing,
                    Ok(Received::End) => Got::End,
                    Err(e) => Got::Failed(e.raw_os_error().unwrap_or(libc::EIO)),
                }
            }
            Shape::Framed => self.receive_frame(fd, cx),
        }
    }

    /// A framed source: the next whole frame in the inbox, reading more when it holds none.
    fn receive_frame(&mut self, fd: std::os::fd::BorrowedFd<'_>, cx: &Cx<'_>) -> Got {
        loop {
            if let Some(len) = len16_frame(&self.inbox) {
                if len > self.limit {
                    warn!(
                        "conn {}: {}: a frame of {len} bytes is larger than the {} the other \
                         end takes: connection cut",
                        cx.id, cx.dir, self.limit
                    );
                    return Got::Failed(libc::EMSGSIZE);
                }
                let end = Self::BODY + len;
                self.out[Self::BODY..end].copy_from_slice(&self.inbox[Self::BODY..end]);
                self.inbox.drain(..end);
                return self.hold(len);
            }
            let have = self.inbox.len();
            let want = (Self::BODY + FRAMED_MAX).max(64 * 1024);
            self.inbox.resize(have + want, 0);
            let read = message::recv_stream(fd, &mut self.inbox[have..]);
            match read {
                Ok(Some(0)) => {
                    self.inbox.truncate(have);
                    if have > 0 {
                        warn!(
                            "conn {}: {}: the stream ended inside a frame ({have} bytes of \
                             it): connection cut",
                            cx.id, cx.dir
                        );
                        return Got::Failed(libc::EPROTO);
                    }
                    return Got::End;
                }
                Ok(Some(n)) => self.inbox.truncate(have + n),
                Ok(None) => {
                    self.inbox.truncate(have);
                    return Got::Nothing;
                }
                Err(e) => {
                    self.inbox.truncate(have);
                    return Got::Failed(e.raw_os_error().unwrap_or(libc::EIO));
                }
            }
        }
    }

    /// Holds a message of `len` bytes (at `out[BODY..]`) for sending.
    fn hold(&mut self, len: usize) -> Got {
        if self.sink == Shape::Framed {
            self.out[..Self::BODY].copy_from_slice(&(len as u16).to_be_bytes());
        }
        self.sent = 0;
        Got::Message(len)
    }

    /// Into vsock SEQPACKET: the message goes to the helper thread, and the direction waits
    /// for its eventfd ([`Put::Waiting`]) until the result is back.
    fn send_whole(&mut self, len: usize, cx: &mut Cx<'_>) -> Put {
        if self.sender.is_none() {
            let Some(super::super::ring::Target::Fd(fd)) = cx.ends.destination() else {
                return Put::Failed(libc::EBADF);
            };
            match WholeSender::start(fd) {
                Ok(sender) => self.sender = Some(sender),
                Err(e) => {
                    warn!(
                        "conn {}: {}: cannot start the vsock sender: {e}",
                        cx.id, cx.dir
                    );
                    return Put::Failed(e.raw_os_error().unwrap_or(libc::EIO));
                }
            }
        }
        let sender = self.sender.as_mut().expect("started above");
        if sender.busy() {
            match sender.take_result() {
                Some(Ok(n)) if n == len => return Put::Whole,
                Some(Ok(_)) => return Put::Failed(libc::EMSGSIZE),
                Some(Err(libc::EMSGSIZE)) => {
                    warn!(
                        "conn {}: {}: a message of {len} bytes is larger than the vsock peer \
                         takes: connection cut",
                        cx.id, cx.dir
                    );
                    return Put::Failed(libc::EMSGSIZE);
                }
                Some(Err(errno)) => return Put::Failed(errno),
                None => {}
            }
        } else {
            sender.submit(self.out[Self::BODY..Self::BODY + len].to_vec());
        }
        let done = super::super::ring::Target::Fd(sender.done_fd());
        cx.ops
            .push(Op::Writable(cx.dir), poll_sqe(done, libc::POLLIN));
        Put::Waiting
    }

    fn send(&mut self, cx: &mut Cx<'_>) -> Put {
        let Some(len) = self.machine.held() else {
            return Put::Whole;
        };
        if self.discard {
            return Put::Whole;
        }
        if self.vsock_sink {
            return self.send_whole(len, cx);
        }
        let Some(super::super::ring::Target::Fd(fd)) = cx.ends.destination() else {
            return Put::Failed(libc::EBADF);
        };
        let bytes = match self.sink {
            Shape::Framed => &self.out[self.sent..Self::BODY + len],
            Shape::Packets(_) => &self.out[Self::BODY..Self::BODY + len],
        };
        match message::send(fd, bytes) {
            Ok(n) if self.sink == Shape::Framed => {
                self.sent += n;
                match self.sent == Self::BODY + len {
                    true => Put::Whole,
                    false => Put::Part,
                }
            }
            Ok(n) if n == len => Put::Whole,
            // A message socket sends all of a message or nothing.
            Ok(_) => Put::Failed(libc::EMSGSIZE),
            Err(e) => match e.raw_os_error() {
                Some(libc::EAGAIN) => Put::Blocked,
                Some(libc::EMSGSIZE) => {
                    warn!(
                        "conn {}: {}: a message of {len} bytes is larger than the other end \
                         takes: connection cut",
                        cx.id, cx.dir
                    );
                    Put::Failed(libc::EMSGSIZE)
                }
                Some(errno) => Put::Failed(errno),
                None => Put::Failed(libc::EIO),
            },
        }
    }
}
