//! One direction of a connection on one of the data paths: a pure state machine ([`flow`] or
//! [`recv`]) and the staging it drives, one file per path: `splice` (a pooled pipe, direct
//! splice(2) or IORING_OP_SPLICE), `copy` (a registered buffer, io_uring read/write), both
//! run by `staged`, and `ring` (multishot receive into provided buffers, then writes or
//! SEND_ZC).
//!
//! A lane says what to do next ([`Lane::pump`]) and takes its completions
//! ([`Lane::complete`]); it reaches the kernel only through a [`Cx`], which names the
//! connection's ends and submits on its behalf.

mod copy;
mod cx;
pub(crate) mod end;
pub(crate) mod flow;
pub(crate) mod message;
pub(crate) mod messages;
pub(crate) mod recv;
mod ring;
mod splice;
mod staged;
#[cfg(test)]
mod tests;
mod whole_send;

use self::flow::{Flow, FlowState};
use super::config::{Mode, RelayOptions};
use super::direction::Direction;
use super::registry::Registry;
use super::ring::Ring;
use super::token::Op;
use crate::net::endpoint::Endpoint;

pub(crate) use self::copy::CopyBuffer;
pub(crate) use self::cx::{Cx, Pumped};
pub(crate) use self::message::MessageLane;
pub(crate) use self::ring::RingLane;
pub(crate) use self::splice::{PipePool, PipeStage};
pub(crate) use self::staged::{StagedLane, Staging};

/// Buffers per direction on the ring path (`--mode recv`); each is `-b` divided by this.
const RING_BUFFERS: u16 = 8;

/// The smallest ring-path buffer for a vsock source: vsock's default buffer size
/// (`SO_VM_SOCKETS_BUFFER_SIZE`, the credit window a peer may fill), so one receive can take
/// all the socket holds (`--mode recv`). In one guest-lab run (perf/results/2026-12-04-vsock-guest.md) the ring path
/// from vsock sources moved 1.26-1.44x what it did with `-b`/8 = 128 KiB buffers.
pub(crate) const VSOCK_RING_BUFFER: usize = 256 * 1024;

/// The size of each ring-path buffer for a direction reading `source` under `-b pipe_size`.
pub(crate) fn ring_buffer_size(pipe_size: usize, source: Option<&Endpoint>) -> usize {
    let size = (pipe_size / usize::from(RING_BUFFERS)).max(4096);
    if source.is_some_and(Endpoint::is_vsock) {
        size.max(VSOCK_RING_BUFFER)
    } else {
        size
    }
}

/// One direction of a connection, on one of the data paths.
#[derive(Debug)]
pub(crate) enum Lane {
    Staged(StagedLane),
    Ring(RingLane),
    /// Messages, each kept whole (SEQPACKET, datagrams, framed streams).
    Message(MessageLane),
}

impl Lane {
    /// The lane for direction `dir` between `source` and `sink`, on the relay's mode where
    /// the ends allow it (the ring path takes sockets only; splice needs both ends able).
    pub(crate) fn setup(
        dir: Direction,
        source: Option<&Endpoint>,
        sink: Option<&Endpoint>,
        options: &RelayOptions,
        registry: &mut Registry,
        ring: &Ring,
    ) -> Lane {
        let discard = !options.directions[dir.index()];
        // Message ends keep their boundaries whatever the mode: the message path.
        if let Some(source) = source.filter(|_| {
            source.is_some_and(Endpoint::is_message) || sink.is_some_and(Endpoint::is_message)
        }) {
            return Lane::Message(MessageLane::setup(source, sink, discard));
        }
        let source_splices = source.is_some_and(Endpoint::can_splice_read);
        let sink_splices = discard || sink.is_some_and(Endpoint::can_splice_write);
        let mode = Lane::mode_for(options.mode, source, sink);
        // A whole send shows no progress until it completes, and the inactivity timeout
        // counts completions: with a timeout, sends report each part that went out, so a
        // slow reader that keeps reading is never taken for an idle one.
        let whole_sends =
            !discard && sink.is_some_and(Endpoint::is_socket) && options.idle_timeout.is_none();
        // The ring path receives with multishot recv: sockets only. The direction takes its
        // buffer group when its source has bytes, not now.
        if matches!(mode, Mode::Recv | Mode::RecvZc)
            && source.is_some_and(Endpoint::is_socket)
            && registry.ring_groups_supported(ring)
        {
            let size = ring_buffer_size(options.pipe_size, source);
            let zerocopy = mode == Mode::RecvZc;
            return Lane::Ring(
                RingLane::new(RING_BUFFERS, size, discard, zerocopy).whole_sends(whole_sends),
            );
        }
        let splice = matches!(mode, Mode::Splice | Mode::UringSplice);
        let staging = if splice && source_splices && sink_splices {
            Staging::Pipe(PipeStage::new(options.pipe_size))
        } else {
            Staging::Copy(CopyBuffer::lazy(options.copy_size.max(4096)))
        };
        let capacity = match &staging {
            Staging::Pipe(_) => options.pipe_size,
            Staging::Copy(b) => b.capacity(),
        };
        let mut flow = Flow::new(capacity, options.fill_policy);
        // The first address's peer (a listener's client) usually speaks first, and by the
        // time the second address is connected its first bytes have arrived: a direct
        // non-blocking splice takes them at once, where waiting for readiness first costs a
        // POLL_ADD and its completion per connection (an empty source answers EAGAIN and
        // the direction waits as usual). The second address's peer has not been sent
        // anything yet, so that direction waits first; so does every other path.
        let speaks_first = dir == Direction::Forward
            && mode == Mode::Splice
            && matches!(staging, Staging::Pipe(_))
            && source.is_some_and(Endpoint::is_socket);
        if !speaks_first {
            flow.await_readiness_first();
        }
        let uring_splice = mode == Mode::UringSplice;
        Lane::Staged(
            StagedLane::new(flow, staging, discard, uring_splice)
                .sockets(source.is_some_and(Endpoint::is_socket), whole_sends)
                .reads_wait_in_kernel(source.is_some_and(Endpoint::is_vsock)),
        )
    }

    /// The data path `mode` means for a direction from `source` to `sink`. `Auto` is:
    /// - the copy path when the source is a vsock socket, which has no `splice_read` (the
    ///   kernel's fallback copies, one page per call from 6.5 on): one read takes what the
    ///   socket holds into one buffer that is reused while it is hot, and goes out as one whole
    ///   SEND. Its best runs beat the buffer ring's (`recv`, 8 buffers in turn) on all three
    ///   vsock-source pairs in two runs (docs/performance.md, "the copy path for vsock
    ///   sources");
    /// - the copy path when the destination is a vsock socket: vsock copies what it sends
    ///   whatever the path, and a non-blocking splice into it stops at every credit update
    ///   (about 700 splices per 32 MiB), where one whole SEND per buffer waits for the credit
    ///   in the kernel;
    /// - splice otherwise.
    ///
    /// Measured in the guest lab: docs/architecture.md, Engine.
    pub(crate) fn mode_for(mode: Mode, source: Option<&Endpoint>, sink: Option<&Endpoint>) -> Mode {
        match mode {
            Mode::Auto
                if source.is_some_and(Endpoint::is_vsock)
                    || sink.is_some_and(Endpoint::is_vsock) =>
            {
                Mode::Copy
            }
            Mode::Auto => Mode::Splice,
            m => m,
        }
    }

    pub(crate) fn discard(&self) -> bool {
        match self {
            Lane::Staged(l) => l.discard(),
            Lane::Ring(l) => l.discard(),
            Lane::Message(l) => l.discard(),
        }
    }

    pub(crate) fn state(&self) -> FlowState {
        match self {
            Lane::Staged(l) => l.flow().state(),
            Lane::Ring(l) => l.flow().state(),
            Lane::Message(l) => l.machine().state(),
        }
    }

    pub(crate) fn delivered(&self) -> u64 {
        match self {
            Lane::Staged(l) => l.flow().delivered(),
            Lane::Ring(l) => l.flow().delivered(),
            Lane::Message(l) => l.machine().delivered(),
        }
    }

    /// Messages delivered, on the message path; `None` on the byte paths.
    pub(crate) fn messages(&self) -> Option<u64> {
        match self {
            Lane::Message(l) => Some(l.machine().messages()),
            _ => None,
        }
    }

    /// Whether the lane lets its connection be parked: a splice lane holding no pipe and
    /// nothing in flight (ring lanes keep descriptors).
    pub(crate) fn parkable(&self) -> bool {
        match self {
            Lane::Staged(l) => l.is_idle_pipe(),
            Lane::Ring(_) | Lane::Message(_) => false,
        }
    }

    /// The data path's name for logs.
    pub(crate) fn path_name(&self) -> &'static str {
        match self {
            l if l.discard() => "discard",
            Lane::Ring(l) if l.zerocopy() => "recv-zc",
            Lane::Ring(_) => "recv",
            Lane::Staged(l) => l.path_name(),
            Lane::Message(_) => "messages",
        }
    }

    /// Runs the direction until it must wait, ends, or uses up its turn.
    pub(crate) fn pump(&mut self, cx: &mut Cx<'_>) -> Pumped {
        match self {
            Lane::Staged(l) => l.pump(cx),
            Lane::Ring(l) => l.pump(cx),
            Lane::Message(l) => l.pump(cx),
        }
    }

    /// Takes the completion of the lane's request `op`.
    pub(crate) fn complete(&mut self, op: Op, result: i32, flags: u32, cx: &mut Cx<'_>) {
        match (self, op) {
            (Lane::Staged(l), Op::Readable(_)) => l.readable(),
            (Lane::Staged(l), Op::Writable(_)) => l.writable(),
            (Lane::Staged(l), Op::Fill(_) | Op::Drain(_)) => {
                l.complete(op, super::ring::outcome(result), cx)
            }
            (Lane::Ring(l), Op::Readable(_) | Op::Fill(_) | Op::Drain(_)) => {
                l.complete(op, result, flags, cx)
            }
            (Lane::Message(l), Op::Readable(_)) => l.readable(),
            (Lane::Message(l), Op::Writable(_)) => l.writable(),
            _ => {}
        }
    }

    /// Gives back what the lane holds (no request of it is in flight any more).
    pub(crate) fn release(self, registry: &mut Registry, ring: &Ring, pipes: &mut PipePool) {
        match self {
            Lane::Staged(l) => l.release(registry, ring, pipes),
            Lane::Ring(l) => l.release(registry, ring),
            Lane::Message(_) => {}
        }
    }
}
