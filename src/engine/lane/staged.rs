//! A direction on the pipe or copy path: the [`Flow`] machine, its staging (a pipe or a
//! buffer) and the transfer in flight. Runs the machine's steps with the staging's direct or
//! io_uring form, and switches a pipe direction to a buffer when splice(2) turns out to be
//! refused for its pair of files (EINVAL before any byte moved).

use std::time::{Duration, Instant};

use super::super::registry::Registry;
use super::super::ring::{Ring, Target, errno_of, poll_sqe, shutdown_sqe};
use super::super::token::Op;
use super::copy::CopyBuffer;
use super::cx::{Cx, Pumped};
use super::flow::{Flow, FlowOp, Step};
use super::ring::RING_IDLE_GRACE;
use super::splice::{PipePool, PipeStage};
use crate::{debug, info};

/// A direction's staging area.
#[derive(Debug)]
pub(crate) enum Staging {
    /// Splice path: a pipe while bytes are in flight, none while idle.
    Pipe(PipeStage),
    /// Copy path: a buffer while bytes are in flight, none while idle.
    Copy(CopyBuffer),
}

/// Errors of pipe creation that pass when other connections close: wait, do not fail.
fn out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM)
    )
}

#[derive(Debug)]
pub(crate) struct StagedLane {
    flow: Flow,
    staging: Staging,
    /// The io_uring transfer in flight, if any.
    pending: Option<Step>,
    /// A fill linked behind the pending drain (copy path, socket to socket): its `max`. It
    /// completes after the drain, or is cancelled when the drain came back short.
    linked_fill: Option<usize>,
    /// A direction turned off by `-u`/`-U`: its bytes are read and dropped.
    discard: bool,
    /// Pipe transfers go out as IORING_OP_SPLICE (`--mode uring-splice`), not as splice(2)
    /// called once io_uring reports readiness. Resolved when the lane is set up: the lane
    /// never reads the relay's mode.
    uring_splice: bool,
    /// Copy path: the source is a socket, read without waiting (see [`StagedLane::sockets`]).
    nowait_reads: bool,
    /// Copy path: the sink is a socket that takes each buffer as one whole SEND.
    whole_sends: bool,
    /// Copy path, socket source: the buffer is kept through a readiness wait until then
    /// (see [`COPY_IDLE_GRACE`]).
    keep_buffer_until: Option<Instant>,
    /// Copy path, socket source: a fill that found the source empty is followed by one that
    /// waits in the kernel (`IORING_RECVSEND_POLL_FIRST`, see
    /// [`CopyBuffer::fill_poll_first_sqe`]); off when the kernel refuses the flag.
    poll_first: bool,
    /// The last fill returned less than it asked for: the source had no more then.
    source_drained: bool,
    /// The fill in flight is a POLL_FIRST one.
    fill_polls_first: bool,
    /// A POLL_FIRST fill has been waiting for the source since then; cancelled after
    /// [`COPY_IDLE_GRACE`], which gives the buffer back.
    waiting_fill_since: Option<Instant>,
    /// When the timer that checks a waiting fill fires (one at a time).
    recheck_at: Option<Instant>,
    /// The waiting fill was cancelled for its grace: its ECANCELED means "source idle".
    cancel_asked: bool,
}

/// How long a copy direction with a socket source keeps its buffer while it waits for its
/// source to be readable again. Giving it back unmaps it, and taking it again maps, registers
/// (a system call) and faults in a fresh one: per buffer, on a stream whose reads catch the
/// source empty now and then (the QEMU lab's hybrid guest -> host in `--mode copy` spent 3.4
/// CPU s/GiB so). As long as the buffer ring's grace.
pub(crate) const COPY_IDLE_GRACE: Duration = RING_IDLE_GRACE;

impl StagedLane {
    pub(crate) fn new(
        flow: Flow,
        staging: Staging,
        discard: bool,
        uring_splice: bool,
    ) -> StagedLane {
        StagedLane {
            flow,
            staging,
            pending: None,
            linked_fill: None,
            discard,
            uring_splice,
            nowait_reads: false,
            whole_sends: false,
            keep_buffer_until: None,
            poll_first: false,
            source_drained: false,
            fill_polls_first: false,
            waiting_fill_since: None,
            recheck_at: None,
            cancel_asked: false,
        }
    }

    /// Tells the copy path how to use its ends. `nowait_reads` (a socket source): reads never
    /// wait (a RECV with MSG_DONTWAIT), so after a drain the next read goes out at once instead of after a
    /// readiness round trip. `whole_sends` (a socket sink): each buffer goes out as one whole
    /// SEND (see [`CopyBuffer::drain_sqe`]), with the next read linked behind it when both
    /// hold. Other files (a terminal, a regular file) keep plain reads after readiness and
    /// plain writes.
    pub(crate) fn sockets(mut self, nowait_reads: bool, whole_sends: bool) -> StagedLane {
        self.nowait_reads = nowait_reads;
        self.whole_sends = whole_sends;
        self
    }

    /// Copy path, socket source: after a read that emptied the source, the next read waits
    /// in the kernel (POLL_FIRST, see [`CopyBuffer::fill_poll_first_sqe`]) instead of trying
    /// at once. For vsock sources, whose bytes arrive through a deferred worker (the loopback
    /// transport's, or the virtio device's interrupt), so a read right after the source ran
    /// dry finds it empty. A TCP or UNIX sender delivers into the socket in its own system
    /// call and may well have done so by then; measured with it on, TCP -> vsock was level
    /// or 0.01-0.05 below (docs/performance.md, "where the time goes").
    pub(crate) fn reads_wait_in_kernel(mut self, on: bool) -> StagedLane {
        self.poll_first = on && self.nowait_reads;
        self
    }

    /// The data path's name for logs.
    pub(crate) fn path_name(&self) -> &'static str {
        match &self.staging {
            Staging::Pipe(_) if self.uring_splice => "uring-splice",
            Staging::Pipe(_) => "splice",
            Staging::Copy(_) => "copy",
        }
    }

    pub(crate) fn flow(&self) -> &Flow {
        &self.flow
    }

    #[cfg(test)]
    pub(crate) fn staging(&self) -> &Staging {
        &self.staging
    }

    pub(crate) fn discard(&self) -> bool {
        self.discard
    }

    /// On the splice path, holding no pipe and with no transfer in flight.
    pub(crate) fn is_idle_pipe(&self) -> bool {
        matches!(&self.staging, Staging::Pipe(p) if p.is_idle()) && self.pending.is_none()
    }

    pub(crate) fn readable(&mut self) {
        self.flow.readable();
    }

    pub(crate) fn writable(&mut self) {
        self.flow.writable();
    }

    /// Runs the direction until it must wait, ends, or uses up its turn. A parked
    /// connection's sockets are fixed-file slots, which only io_uring requests can name, so
    /// parked connections splice with IORING_OP_SPLICE whatever the mode.
    pub(crate) fn pump(&mut self, cx: &mut Cx<'_>) -> Pumped {
        let dir = cx.dir;
        let mut turn = cx.turn;
        loop {
            let waiting =
                cx.ops.in_flight(Op::Readable(dir)) || cx.ops.in_flight(Op::Writable(dir));
            if waiting || self.pending.is_some() || self.linked_fill.is_some() {
                // A buffer kept through a readiness wait goes back once the grace is over.
                if self.keep_buffer_until.is_some_and(|until| cx.now >= until) {
                    self.keep_buffer_until = None;
                    self.release_pipe(cx);
                }
                return self.watch_waiting_fill(cx);
            }
            let direct = !self.uring_splice && !cx.ends.parked();
            let step = self.flow.next();
            match step {
                Step::Fill { max } => {
                    self.keep_buffer_until = None;
                    if let Staging::Pipe(stage) = &mut self.staging {
                        match stage.ensure(cx.pipes) {
                            Ok(Some(capacity)) => self.flow.set_capacity(capacity),
                            Ok(None) => {}
                            Err(e) if out_of_descriptors(&e) => return Pumped::NoDescriptors,
                            Err(e) => {
                                self.flow.fail(FlowOp::Read, errno_of(&e));
                                continue;
                            }
                        }
                    }
                    if let Staging::Copy(buffer) = &mut self.staging {
                        if !buffer.take(cx.registry, cx.ops.ring()) {
                            return Pumped::NoDescriptors;
                        }
                    }
                    let Some(source) = cx.ends.source() else {
                        self.flow.fail(FlowOp::Read, libc::EBADF);
                        continue;
                    };
                    match (&mut self.staging, source) {
                        (Staging::Pipe(stage), Target::Fd(fd)) if direct => {
                            let max = stage.fill_len(max);
                            let result = stage.fill_now(fd, max);
                            if !self.take_direct(Step::Fill { max }, result, cx) {
                                continue;
                            }
                        }
                        (Staging::Pipe(stage), source) => {
                            let max = stage.fill_len(max);
                            let sqe = stage.fill_sqe(source, max);
                            self.pending = Some(Step::Fill { max });
                            cx.ops.push(Op::Fill(dir), sqe);
                            return Pumped::Waiting;
                        }
                        (Staging::Copy(buffer), Target::Fd(fd)) => {
                            let (max, sqe) = buffer.fill_sqe(
                                std::os::fd::AsRawFd::as_raw_fd(&fd),
                                max,
                                self.nowait_reads,
                            );
                            self.pending = Some(Step::Fill { max });
                            cx.ops.push(Op::Fill(dir), sqe);
                            return Pumped::Waiting;
                        }
                        (Staging::Copy(_), Target::Fixed(_)) => {
                            unreachable!("only splice directions are parked")
                        }
                    }
                }
                Step::Drain { len } => {
                    let Some(sink) = cx.ends.destination() else {
                        self.flow.fail(FlowOp::Write, libc::EBADF);
                        continue;
                    };
                    match (&mut self.staging, sink) {
                        (Staging::Pipe(stage), Target::Fd(fd)) if direct => {
                            let result = stage.drain_now(fd, len);
                            if !self.take_direct(step, result, cx) {
                                continue;
                            }
                        }
                        (Staging::Pipe(stage), sink) => {
                            let sqe = stage.drain_sqe(sink, len);
                            self.pending = Some(step);
                            cx.ops.push(Op::Drain(dir), sqe);
                            return Pumped::Waiting;
                        }
                        (Staging::Copy(buffer), Target::Fd(fd)) => {
                            let sqe = buffer.drain_sqe(
                                std::os::fd::AsRawFd::as_raw_fd(&fd),
                                len,
                                self.whole_sends,
                            );
                            self.pending = Some(step);
                            // Socket to socket, a flowing source: the next read goes out
                            // linked behind this whole SEND, so one wake-up of the worker
                            // takes both (the read starts at the buffer's beginning only
                            // after every staged byte left it).
                            // After a fill that emptied the source, that read waits for
                            // readiness in the kernel (POLL_FIRST): in a one-CPU guest the
                            // writer cannot have run meanwhile, and a read that finds it
                            // empty costs a trip through user space and a POLL_ADD.
                            let source = cx.ends.source_fd();
                            match source {
                                Some(source)
                                    if self.nowait_reads
                                        && self.whole_sends
                                        && self.flow.fills_after_drain(len) =>
                                {
                                    let capacity = self.flow.capacity();
                                    self.fill_polls_first = self.poll_first && self.source_drained;
                                    let (max, fill) = if self.fill_polls_first {
                                        buffer.fill_poll_first_sqe(source, capacity)
                                    } else {
                                        buffer.fill_sqe(source, capacity, true)
                                    };
                                    self.linked_fill = Some(max);
                                    cx.ops
                                        .push_linked((Op::Drain(dir), sqe), (Op::Fill(dir), fill));
                                }
                                _ => cx.ops.push(Op::Drain(dir), sqe),
                            }
                            return Pumped::Waiting;
                        }
                        (Staging::Copy(_), Target::Fixed(_)) => {
                            unreachable!("only splice directions are parked")
                        }
                    }
                }
                Step::WaitReadable => {
                    let keep = self.nowait_reads
                        && matches!(&self.staging, Staging::Copy(b) if b.is_held());
                    // A socket source whose buffer is still held: one read that waits in the
                    // kernel for readiness instead of a POLL_ADD and then a read.
                    if let (true, true, Staging::Copy(buffer), Some(source)) = (
                        keep,
                        self.poll_first,
                        &mut self.staging,
                        cx.ends.source_fd(),
                    ) {
                        self.flow.readable();
                        let (max, sqe) = buffer.fill_poll_first_sqe(source, self.flow.capacity());
                        self.pending = Some(Step::Fill { max });
                        self.fill_polls_first = true;
                        self.waiting_fill_since = Some(cx.now);
                        cx.ops.push(Op::Fill(dir), sqe);
                        return self.watch_waiting_fill(cx);
                    }
                    if !keep {
                        self.release_pipe(cx);
                    }
                    let Some(source) = cx.ends.source() else {
                        self.flow.fail(FlowOp::Read, libc::EBADF);
                        continue;
                    };
                    let sqe = poll_sqe(source, libc::POLLIN);
                    cx.ops.push(Op::Readable(dir), sqe);
                    if keep {
                        self.keep_buffer_until = Some(cx.now + COPY_IDLE_GRACE);
                        return Pumped::RecheckAfter(COPY_IDLE_GRACE);
                    }
                    return Pumped::Waiting;
                }
                Step::WaitWritable => {
                    let Some(sink) = cx.ends.destination() else {
                        self.flow.fail(FlowOp::Write, libc::EBADF);
                        continue;
                    };
                    let sqe = poll_sqe(sink, libc::POLLOUT);
                    cx.ops.push(Op::Writable(dir), sqe);
                    return Pumped::Waiting;
                }
                Step::ConfirmEnd => self.flow.confirm_end(cx.source_end()),
                Step::ShutdownWrite => {
                    debug!("conn {}: {dir} reached end of file", cx.id);
                    if cx.ends.parked() && !self.discard {
                        // A parked socket has no descriptor: shut it down through the ring.
                        let sink = cx
                            .ends
                            .destination()
                            .expect("a parked connection has both ends");
                        let sqe = shutdown_sqe(sink);
                        self.pending = Some(step);
                        cx.ops.push(Op::Drain(dir), sqe);
                        return Pumped::Waiting;
                    }
                    let result = cx.ends.shutdown_write().map(|()| 0);
                    self.flow.complete(step, result);
                }
                Step::Finished | Step::Failed => {
                    self.release_pipe(cx);
                    return Pumped::Ended;
                }
            }
            turn = turn.saturating_sub(1);
            if turn == 0 {
                return Pumped::Yield;
            }
        }
    }

    /// Records a direct splice's result. Returns false when the direction switched to the
    /// copy path instead (the caller then loops to issue the copy).
    fn take_direct(&mut self, step: Step, result: std::io::Result<usize>, cx: &mut Cx<'_>) -> bool {
        let outcome = result.map_err(|e| errno_of(&e));
        if self.splice_refused(outcome, cx) {
            self.fall_back_to_copy(cx);
            return false;
        }
        self.flow.complete(step, outcome);
        cx.moved(outcome);
        true
    }

    /// Applies the result of the io_uring transfer `op`.
    pub(crate) fn complete(&mut self, op: Op, outcome: Result<usize, i32>, cx: &mut Cx<'_>) {
        let step = match (op, self.linked_fill) {
            // The fill linked behind a drain (which completed first: a link runs in order;
            // no other fill is pending while one is linked, `pump` waits for it).
            (Op::Fill(_), Some(max)) => {
                self.linked_fill = None;
                if outcome == Err(libc::ECANCELED) && !self.cancel_asked {
                    // The drain came back short or failed: the read never ran.
                    self.fill_polls_first = false;
                    self.waiting_fill_since = None;
                    return;
                }
                Step::Fill { max }
            }
            _ => match self.pending.take() {
                Some(step) => step,
                None => return,
            },
        };
        // The drain a POLL_FIRST fill is linked behind is done: the fill waits from now.
        if let (Step::Drain { .. }, Some(_), true) = (step, self.linked_fill, self.fill_polls_first)
        {
            self.waiting_fill_since = Some(cx.now);
        }
        let mut outcome = outcome;
        let mut give_back = false;
        if let Step::Fill { max } = step {
            let polled_first = std::mem::take(&mut self.fill_polls_first);
            self.waiting_fill_since = None;
            match outcome {
                // Cancelled after its grace: the source is idle, and the buffer goes back.
                Err(libc::ECANCELED) if std::mem::take(&mut self.cancel_asked) => {
                    outcome = Err(libc::EAGAIN);
                    give_back = true;
                }
                // A kernel without POLL_FIRST for receives (before 5.19): plain reads.
                Err(libc::EINVAL) if polled_first => {
                    self.poll_first = false;
                    outcome = Err(libc::EAGAIN);
                }
                Ok(n) => self.source_drained = n < max,
                _ => {}
            }
            self.cancel_asked = false;
        }
        if self.splice_refused(outcome, cx) {
            self.fall_back_to_copy(cx);
            return;
        }
        // A peer already gone is no shutdown failure (as in `Socket::shutdown_write`).
        let outcome = match (step, outcome) {
            (Step::ShutdownWrite, Err(libc::ENOTCONN)) => Ok(0),
            (_, o) => o,
        };
        if let (Step::Drain { .. }, Ok(n), Staging::Copy(buffer)) =
            (step, outcome, &mut self.staging)
        {
            buffer.drained(n);
        }
        self.flow.complete(step, outcome);
        if let Staging::Copy(buffer) = &mut self.staging {
            if self.flow.staged() == 0 {
                buffer.rewind();
                // Read only after readiness: a read of an empty blocking file would hold the
                // buffer (and its share of the cap) for as long as the peer is silent. A
                // socket's read cannot wait (MSG_DONTWAIT), so it goes out at once: a flowing
                // source has bytes by now, and an empty one answers EAGAIN.
                if !self.nowait_reads {
                    self.flow.await_readiness_first();
                }
            }
        }
        if give_back {
            self.release_pipe(cx);
        }
        cx.moved(outcome);
    }

    /// While a POLL_FIRST fill waits for its source: cancels it once the source was quiet
    /// for [`COPY_IDLE_GRACE`] (its ECANCELED then gives the buffer back, and the direction
    /// waits with a POLL_ADD that holds no buffer), and otherwise asks to be called again
    /// then (one timer at a time).
    fn watch_waiting_fill(&mut self, cx: &mut Cx<'_>) -> Pumped {
        let Some(since) = self.waiting_fill_since else {
            return Pumped::Waiting;
        };
        let due = since + COPY_IDLE_GRACE;
        if cx.now >= due {
            if !self.cancel_asked {
                self.cancel_asked = true;
                cx.ops.cancel(Op::Fill(cx.dir));
            }
            return Pumped::Waiting;
        }
        if self.recheck_at.is_some_and(|at| at > cx.now) {
            return Pumped::Waiting;
        }
        self.recheck_at = Some(due);
        Pumped::RecheckAfter(due - cx.now)
    }

    /// Whether splice(2) refused this pair of files: EINVAL before any byte moved, on the
    /// pipe path. A parked connection's sockets have no descriptors for the copy path to use,
    /// so it never falls back.
    fn splice_refused(&self, outcome: Result<usize, i32>, cx: &Cx<'_>) -> bool {
        outcome == Err(libc::EINVAL)
            && self.flow.delivered() == 0
            && matches!(self.staging, Staging::Pipe(_))
            && !cx.ends.parked()
    }

    /// splice(2) refused this pair of files: move what the pipe holds into a buffer and copy
    /// from now on. Nothing is lost: staged bytes go out first.
    fn fall_back_to_copy(&mut self, cx: &mut Cx<'_>) {
        let staged = self.flow.staged();
        let size = cx.options.copy_size.max(staged).max(4096);
        let mut buffer = CopyBuffer::registered(size, cx.registry, cx.ops.ring());
        if let Staging::Pipe(stage) = &mut self.staging {
            if let Err(errno) = stage.empty_into(&mut buffer.as_mut_slice()[..staged], cx.pipes) {
                self.flow.fail(FlowOp::Read, errno);
            }
        }
        self.flow.set_capacity(buffer.capacity());
        self.staging = Staging::Copy(buffer);
        info!(
            "conn {}: {}: splice not supported here, copying through a buffer",
            cx.id, cx.dir
        );
    }

    /// Gives an empty pipe back to the pool (a pipe with bytes in it is never pooled), or
    /// frees an empty copy buffer.
    fn release_pipe(&mut self, cx: &mut Cx<'_>) {
        if self.flow.staged() != 0 || self.pending.is_some() {
            return;
        }
        match &mut self.staging {
            Staging::Pipe(stage) => stage.release(cx.pipes),
            Staging::Copy(buffer) => buffer.give_back(cx.registry, cx.ops.ring()),
        }
    }

    /// Gives back the pipe (when empty) or the buffer's slot. A transfer still pending here
    /// is one whose completion the closed connection never took: a fill may have put bytes
    /// in the pipe that the flow does not count, so such a pipe is closed, never pooled
    /// (pooled, it handed one connection's bytes to the next).
    pub(crate) fn release(self, registry: &mut Registry, ring: &Ring, pipes: &mut PipePool) {
        match self.staging {
            Staging::Pipe(mut stage) if self.flow.staged() == 0 && self.pending.is_none() => {
                stage.release(pipes)
            }
            Staging::Pipe(_) => {}
            Staging::Copy(buffer) => buffer.release(registry, ring),
        }
    }
}
