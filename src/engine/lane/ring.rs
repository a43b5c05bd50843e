//! A direction on the buffer-ring path (`--mode recv`, `--mode recv-zc`): one multishot
//! receive fills the buffers of a provided-buffer group, and each filled buffer is written
//! (or sent with SEND_ZC from the group's memory registered as a fixed buffer) in order, then
//! handed back to the kernel.

use io_uring::{cqueue, opcode, types};

use super::super::registry::{BufferGroup, FixedBuffer, Registry};
use super::super::ring::{Ring, outcome};
use super::super::token::Op;
use super::flow::FlowOp;
use super::recv::{RecvFlow, RecvStep};
use super::{Cx, Pumped};
use crate::info;

#[derive(Debug)]
pub struct RingLane {
    flow: RecvFlow,
    group: BufferGroup,
    discard: bool,
    /// The registered-buffer slot of the group's memory, when filled buffers go out with
    /// SEND_ZC (`recv-zc`); `None` for plain writes.
    zerocopy: Option<FixedBuffer>,
    /// The slot of a `zerocopy` the socket refused: unused, released with the lane.
    zerocopy_unused: Option<FixedBuffer>,
    /// A buffer fully sent with SEND_ZC, handed back to the ring when the kernel's
    /// notification says it no longer reads it.
    awaiting_notification: Option<u16>,
}

impl RingLane {
    /// A lane receiving into `group`; with `zerocopy`, its memory is registered for SEND_ZC
    /// when a fixed-buffer slot is free.
    pub fn new(
        mut group: BufferGroup,
        discard: bool,
        zerocopy: bool,
        registry: &mut Registry,
        ring: &Ring,
    ) -> RingLane {
        let flow = RecvFlow::new(usize::from(group.ring().count()));
        let zerocopy = if zerocopy {
            registry.register_buffer(ring, group.ring_mut().buffers_iovec())
        } else {
            None
        };
        RingLane {
            flow,
            group,
            discard,
            zerocopy,
            zerocopy_unused: None,
            awaiting_notification: None,
        }
    }

    pub fn flow(&self) -> &RecvFlow {
        &self.flow
    }

    pub fn discard(&self) -> bool {
        self.discard
    }

    /// Arms the multishot receive and writes filled buffers in order, until it must wait.
    pub fn pump(&mut self, cx: &mut Cx<'_>) -> Pumped {
        let dir = cx.dir;
        loop {
            // Ring lanes are never parked: their ends are descriptors.
            let source = cx.ends.source_fd();
            let sink = cx.ends.destination_fd();
            let step = self.flow.next();
            match step {
                RecvStep::ArmReceive => {
                    let Some(source) = source else {
                        self.flow.fail(FlowOp::Read, libc::EBADF);
                        continue;
                    };
                    let sqe =
                        opcode::RecvMulti::new(types::Fd(source), self.group.ring().bgid()).build();
                    self.flow.started(step);
                    cx.ops.push(Op::Fill(dir), sqe);
                }
                RecvStep::Send { bid, offset, len } => {
                    // A SEND_ZC stays in flight until its notification: one at a time.
                    if cx.ops.in_flight(Op::Drain(dir)) {
                        return Pumped::Waiting;
                    }
                    let Some(sink) = sink else {
                        self.flow.fail(FlowOp::Write, libc::EBADF);
                        continue;
                    };
                    let data = self.group.ring().data(bid, offset);
                    let sqe = match &self.zerocopy {
                        Some(slot) => opcode::SendZc::new(types::Fd(sink), data, len as u32)
                            .buf_index(Some(slot.index()))
                            .flags(libc::MSG_NOSIGNAL)
                            .build(),
                        None => opcode::Write::new(types::Fd(sink), data, len as u32)
                            .offset(u64::MAX)
                            .build(),
                    };
                    self.flow.started(step);
                    cx.ops.push(Op::Drain(dir), sqe);
                }
                RecvStep::ShutdownWrite => {
                    self.flow.started(step);
                    let result = cx.ends.shutdown_write();
                    self.flow.shut_down(result);
                }
                RecvStep::Wait => return Pumped::Waiting,
                RecvStep::Finished | RecvStep::Failed => return Pumped::Ended,
            }
        }
    }

    /// A completion: a receive (Fill) or a write or SEND_ZC (Drain).
    pub fn complete(&mut self, op: Op, result: i32, flags: u32, cx: &mut Cx<'_>) {
        match op {
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
                if let Some(bid) = self.awaiting_notification.take() {
                    self.group.ring_mut().provide(bid);
                }
            }
            _ => {
                let sent = outcome(result);
                // Sockets that cannot send zero-copy say so on the first try: write instead.
                if self.zerocopy.is_some()
                    && matches!(sent, Err(libc::EOPNOTSUPP | libc::EINVAL))
                    && self.flow.delivered() == 0
                {
                    if let Some(slot) = self.zerocopy.take() {
                        // Kept registered until the lane is released (nothing reads it now).
                        self.zerocopy_unused = Some(slot);
                    }
                    self.flow.sent(Err(libc::EAGAIN));
                    info!("conn {}: {}: no SEND_ZC here, writing", cx.id, cx.dir);
                    return;
                }
                if let Some(bid) = self.flow.sent(sent) {
                    // A notification follows a SEND_ZC that sent bytes (the kernel flags it
                    // with MORE): the buffer goes back to the ring only then.
                    if cqueue::more(flags) {
                        self.awaiting_notification = Some(bid);
                    } else {
                        self.group.ring_mut().provide(bid);
                    }
                }
            }
        }
        if result > 0 {
            *cx.last_active = std::time::Instant::now();
        }
    }

    /// Unregisters the group and the zero-copy slot (no request uses them any more).
    pub fn release(self, registry: &mut Registry, ring: &Ring) {
        for slot in [self.zerocopy, self.zerocopy_unused].into_iter().flatten() {
            registry.release_buffer(ring, slot);
        }
        registry.release_group(ring, self.group);
    }
}
