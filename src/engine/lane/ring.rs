//! A direction on the buffer-ring path (`--mode recv`, `--mode recv-zc`): one multishot
//! receive fills the buffers of a provided-buffer group, and each filled buffer is written
//! (or sent with SEND_ZC from the group's memory registered as a fixed buffer) in order, then
//! handed back to the kernel.
//!
//! The group is taken on demand: an idle direction holds none and waits for its source with
//! POLL_ADD; when readable it takes one from its worker's pool (under the process-wide
//! staging cap, waiting when there is no room), and once it has drained and seen no byte for
//! [`RING_IDLE_GRACE`] it cancels its receive and, after the receive's last completion and
//! every SEND_ZC notification, gives the group back. A busy stream keeps its group.

use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, types};

use super::super::registry::{GroupLease, Registry};
use super::super::ring::{Ring, outcome, poll_sqe};
use super::super::token::Op;
use super::cx::{Cx, Pumped};
use super::flow::FlowOp;
use super::recv::{RecvFlow, RecvStep};
use crate::{debug, info};

/// How long a drained direction keeps its group with no byte coming in before it gives it
/// back: long enough that a stream pausing between chunks keeps it, short enough that idle
/// connections hold none.
pub(crate) const RING_IDLE_GRACE: Duration = Duration::from_millis(250);

#[derive(Debug)]
pub(crate) struct RingLane {
    flow: RecvFlow,
    /// Bytes of one buffer of the direction's groups.
    buffer_size: usize,
    /// The group held now (and its SEND_ZC slot); `None` while idle.
    lease: Option<GroupLease>,
    discard: bool,
    /// Filled buffers go out with SEND_ZC (`recv-zc`) until the socket refuses it.
    zerocopy: bool,
    /// The sink is a socket that takes each filled buffer as one whole SEND (see
    /// [`RingLane::whole_sends`]).
    whole_sends: bool,
    /// A buffer fully sent with SEND_ZC, handed back to the ring when the kernel's
    /// notification says it no longer reads it.
    awaiting_notification: Option<u16>,
    /// When the last byte came in (or the group was taken).
    last_fill: Instant,
    /// When the check the worker was asked for is due; `None` when none is pending.
    recheck_at: Option<Instant>,
}

impl RingLane {
    /// A lane receiving into groups of `count` buffers of `size` bytes, holding none yet;
    /// with `zerocopy`, filled buffers go out with SEND_ZC.
    pub(crate) fn new(count: u16, size: usize, discard: bool, zerocopy: bool) -> RingLane {
        RingLane {
            flow: RecvFlow::new(usize::from(count)),
            buffer_size: size,
            lease: None,
            discard,
            zerocopy: zerocopy && !discard,
            whole_sends: false,
            awaiting_notification: None,
            last_fill: Instant::now(),
            recheck_at: None,
        }
    }

    /// Sends each filled buffer to a socket sink as one SEND with `MSG_WAITALL` (where it
    /// does not go zero-copy): the kernel waits for room and sends the rest itself, so a
    /// buffer costs one completion however often the sink's window fills. A plain write comes
    /// back short each time it does: into vsock at every credit update (the peer's window,
    /// 256 KiB by default, the size of a vsock source's buffer), into a UNIX socket whenever
    /// its send buffer is full. As the copy path does (`copy.rs`); and as there, not under
    /// `-T`, where a whole send would hide a slow reader's progress from the idle timeout.
    pub(crate) fn whole_sends(mut self, whole: bool) -> RingLane {
        self.whole_sends = whole && !self.discard;
        self
    }

    pub(crate) fn flow(&self) -> &RecvFlow {
        &self.flow
    }

    pub(crate) fn discard(&self) -> bool {
        self.discard
    }

    /// Whether filled buffers go out with SEND_ZC (until the socket refuses it).
    pub(crate) fn zerocopy(&self) -> bool {
        self.zerocopy
    }

    #[cfg(test)]
    /// Whether the lane holds a buffer group now.
    pub(crate) fn holds_buffers(&self) -> bool {
        self.lease.is_some()
    }

    /// Moves the last byte received `by` into the past (tests of the idle release).
    #[cfg(test)]
    pub(crate) fn age(&mut self, by: Duration) {
        self.last_fill -= by;
    }

    /// Arms the multishot receive and writes filled buffers in order, until it must wait.
    pub(crate) fn pump(&mut self, cx: &mut Cx<'_>) -> Pumped {
        let dir = cx.dir;
        loop {
            // Ring lanes are never parked: their ends are descriptors.
            let source = cx.ends.source_fd();
            let sink = cx.ends.destination_fd();
            let step = self.flow.next();
            match step {
                RecvStep::WaitReadable => {
                    let Some(source) = cx.ends.source() else {
                        self.flow.fail(FlowOp::Read, libc::EBADF);
                        continue;
                    };
                    let sqe = poll_sqe(source, libc::POLLIN);
                    self.flow.started(step);
                    cx.ops.push(Op::Readable(dir), sqe);
                }
                RecvStep::TakeBuffers => {
                    let count = self.flow_buffers();
                    let ring = cx.ops.ring();
                    let Some(lease) =
                        cx.registry
                            .take_group(ring, count, self.buffer_size, self.zerocopy)
                    else {
                        // No room under the staging cap now: nothing is lost, try again.
                        return Pumped::NoDescriptors;
                    };
                    self.lease = Some(lease);
                    self.last_fill = cx.now;
                    self.flow.took_buffers();
                }
                RecvStep::ArmReceive => {
                    let (Some(source), Some(lease)) = (source, &self.lease) else {
                        self.flow.fail(FlowOp::Read, libc::EBADF);
                        continue;
                    };
                    let bgid = lease.group().ring().bgid();
                    let sqe = opcode::RecvMulti::new(types::Fd(source), bgid).build();
                    self.flow.started(step);
                    cx.ops.push(Op::Fill(dir), sqe);
                }
                RecvStep::Send { bid, offset, len } => {
                    // A SEND_ZC stays in flight until its notification: one at a time.
                    if cx.ops.in_flight(Op::Drain(dir)) {
                        return Pumped::Waiting;
                    }
                    let (Some(sink), Some(lease)) = (sink, &self.lease) else {
                        self.flow.fail(FlowOp::Write, libc::EBADF);
                        continue;
                    };
                    let data = lease.group().ring().data(bid, offset);
                    let fixed = lease.fixed().filter(|_| self.zerocopy);
                    let sqe = match fixed {
                        Some(slot) => opcode::SendZc::new(types::Fd(sink), data, len as u32)
                            .buf_index(Some(slot.index()))
                            .flags(libc::MSG_NOSIGNAL)
                            .build(),
                        None if self.whole_sends => {
                            opcode::Send::new(types::Fd(sink), data, len as u32)
                                .flags(libc::MSG_WAITALL | libc::MSG_NOSIGNAL)
                                .build()
                        }
                        None => opcode::Write::new(types::Fd(sink), data, len as u32)
                            .offset(u64::MAX)
                            .build(),
                    };
                    self.flow.started(step);
                    cx.ops.push(Op::Drain(dir), sqe);
                }
                RecvStep::CancelReceive => {
                    self.flow.started(step);
                    cx.ops.cancel(Op::Fill(dir));
                }
                RecvStep::GiveBack => {
                    // The last SEND_ZC's notification must be in: the kernel reads the buffer
                    // until then (its completion pumps the lane again).
                    if cx.ops.in_flight(Op::Drain(dir)) || cx.ops.in_flight(Op::Fill(dir)) {
                        return Pumped::Waiting;
                    }
                    self.give_back(cx.registry, cx.ops.ring());
                    self.flow.gave_back();
                    debug!("conn {}: {dir} drained; its buffers went back", cx.id);
                }
                RecvStep::ConfirmEnd => self.flow.confirm_end(cx.source_end()),
                RecvStep::ShutdownWrite => {
                    self.flow.started(step);
                    let result = cx.ends.shutdown_write();
                    self.flow.shut_down(result);
                }
                RecvStep::Wait => return self.wait_or_release(cx),
                RecvStep::Finished | RecvStep::Failed => {
                    // A finished direction of a connection that goes on (half-close) needs
                    // its group no more.
                    let busy = cx.ops.in_flight(Op::Drain(dir)) || cx.ops.in_flight(Op::Fill(dir));
                    if !busy {
                        self.give_back(cx.registry, cx.ops.ring());
                    }
                    return Pumped::Ended;
                }
            }
        }
    }

    fn flow_buffers(&self) -> u16 {
        u16::try_from(self.flow.buffers()).unwrap_or(u16::MAX)
    }

    /// The lane waits for a completion. A drained direction that saw no byte for
    /// [`RING_IDLE_GRACE`] starts giving its group back; a drained one that saw bytes more
    /// recently asks to be pumped again then.
    fn wait_or_release(&mut self, cx: &mut Cx<'_>) -> Pumped {
        if !self.flow.is_drained() || cx.ops.in_flight(Op::Drain(cx.dir)) {
            return Pumped::Waiting;
        }
        let now = cx.now;
        if now.saturating_duration_since(self.last_fill) >= RING_IDLE_GRACE {
            self.recheck_at = None;
            self.flow.release();
            return self.pump(cx);
        }
        if self.recheck_at.is_some_and(|at| at > now) {
            return Pumped::Waiting;
        }
        self.recheck_at = Some(now + RING_IDLE_GRACE);
        Pumped::RecheckAfter(RING_IDLE_GRACE)
    }

    /// A completion: readiness (Readable), a receive (Fill) or a write or SEND_ZC (Drain).
    pub(crate) fn complete(&mut self, op: Op, result: i32, flags: u32, cx: &mut Cx<'_>) {
        match op {
            Op::Readable(_) => self.flow.readable(),
            Op::Fill(_) => {
                let more = cqueue::more(flags);
                let received = match (result, cqueue::buffer_select(flags)) {
                    (n, Some(bid)) if n > 0 => Ok((bid, n as usize)),
                    (n, _) if n >= 0 => Ok((0, 0)),
                    (errno, _) => Err(-errno),
                };
                self.flow.received(received, more);
            }
            _ if cqueue::notif(flags) => {
                // The kernel no longer reads the buffer of the last SEND_ZC.
                if let (Some(bid), Some(lease)) =
                    (self.awaiting_notification.take(), self.lease.as_mut())
                {
                    lease.group_mut().ring_mut().provide(bid);
                }
            }
            _ => {
                let sent = outcome(result);
                // Sockets that cannot send zero-copy say so on the first try: write instead.
                if self.zerocopy
                    && matches!(sent, Err(libc::EOPNOTSUPP | libc::EINVAL))
                    && self.flow.delivered() == 0
                {
                    // The slot stays with the group until it goes back (nothing reads it).
                    self.zerocopy = false;
                    self.flow.sent(Err(libc::EAGAIN));
                    info!("conn {}: {}: no SEND_ZC here, writing", cx.id, cx.dir);
                    return;
                }
                if let Some(bid) = self.flow.sent(sent) {
                    // A notification follows a SEND_ZC that sent bytes (the kernel flags it
                    // with MORE): the buffer goes back to the ring only then.
                    if cqueue::more(flags) {
                        self.awaiting_notification = Some(bid);
                    } else if let Some(lease) = self.lease.as_mut() {
                        lease.group_mut().ring_mut().provide(bid);
                    }
                }
            }
        }
        if result > 0 {
            *cx.last_active = cx.now;
            if matches!(op, Op::Fill(_)) {
                self.last_fill = *cx.last_active;
            }
        }
    }

    /// Gives the group back (no request uses it): to the pool when every buffer is in the
    /// kernel's hands again, freed otherwise (a failed direction's buffers may still be
    /// queued).
    fn give_back(&mut self, registry: &mut Registry, ring: &Ring) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        if self.flow.all_provided() && self.awaiting_notification.is_none() {
            registry.return_group(ring, lease);
        } else {
            registry.free_group(ring, lease);
        }
    }

    /// Frees what the lane holds (no request of it is in flight any more). Not to the pool:
    /// a closing connection does not take its last receive completions, so the kernel may
    /// have filled buffers the lane never saw and the group's ring may be short of them.
    pub(crate) fn release(mut self, registry: &mut Registry, ring: &Ring) {
        if let Some(lease) = self.lease.take() {
            registry.free_group(ring, lease);
        }
    }
}
