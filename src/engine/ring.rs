//! A worker's io_uring: its setup (with fallbacks for older kernels), submission with an
//! overflow queue for when the queue is full and the kernel busy, the wait, and the reap.
//!
//! Every request goes through the one `unsafe fn push`. Connection requests go through
//! [`ConnOps`], which records each in the connection's in-flight set: a connection keeps its
//! descriptors, pipes and buffers until that set is empty, which is what makes `push` sound.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Instant;

use io_uring::{IoUring, Submitter, opcode, squeue, types};

use super::token::{self, Op};
use crate::sys::eventfd::EventFd;
use crate::warn;

/// Where a request reads or writes: a descriptor, or a slot of the ring's fixed-file table
/// (the sockets of a parked connection).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target<'a> {
    Fd(BorrowedFd<'a>),
    Fixed(u32),
}

/// A POLL_ADD for `events` on `target`.
pub(super) fn poll_sqe(target: Target<'_>, events: libc::c_short) -> squeue::Entry {
    let events = events as u32;
    match target {
        Target::Fd(fd) => opcode::PollAdd::new(types::Fd(fd.as_raw_fd()), events).build(),
        Target::Fixed(slot) => opcode::PollAdd::new(types::Fixed(slot), events).build(),
    }
}

/// An IORING_OP_SPLICE of up to `len` bytes (non-blocking; one end is a pipe).
pub(super) fn splice_sqe(from: Target<'_>, to: Target<'_>, len: usize) -> squeue::Entry {
    let len = len.min(u32::MAX as usize) as u32;
    let flags = libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE;
    match (from, to) {
        (Target::Fd(a), Target::Fd(b)) => opcode::Splice::new(
            types::Fd(a.as_raw_fd()),
            -1,
            types::Fd(b.as_raw_fd()),
            -1,
            len,
        )
        .flags(flags)
        .build(),
        (Target::Fd(a), Target::Fixed(b)) => {
            opcode::Splice::new(types::Fd(a.as_raw_fd()), -1, types::Fixed(b), -1, len)
                .flags(flags)
                .build()
        }
        (Target::Fixed(a), Target::Fd(b)) => {
            opcode::Splice::new(types::Fixed(a), -1, types::Fd(b.as_raw_fd()), -1, len)
                .flags(flags)
                .build()
        }
        (Target::Fixed(a), Target::Fixed(b)) => {
            opcode::Splice::new(types::Fixed(a), -1, types::Fixed(b), -1, len)
                .flags(flags)
                .build()
        }
    }
}

/// A write-side shutdown of `target`.
pub(super) fn shutdown_sqe(target: Target<'_>) -> squeue::Entry {
    match target {
        Target::Fd(fd) => opcode::Shutdown::new(types::Fd(fd.as_raw_fd()), libc::SHUT_WR).build(),
        Target::Fixed(slot) => opcode::Shutdown::new(types::Fixed(slot), libc::SHUT_WR).build(),
    }
}

/// A completion's result as the data paths take it: bytes moved, or the errno.
pub(super) fn outcome(result: i32) -> Result<usize, i32> {
    if result < 0 {
        Err(-result)
    } else {
        Ok(result as usize)
    }
}

/// The errno of an I/O error (EIO when it carries none).
pub(super) fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// One completion: user data, result, flags.
pub(super) type Completion = (u64, i32, u32);

pub(crate) struct Ring {
    uring: IoUring,
    /// Submissions that found the queue full and the kernel busy, in the groups they were
    /// pushed in.
    overflow: VecDeque<Vec<squeue::Entry>>,
}

impl Ring {
    /// A ring with `entries` submission slots and a completion queue sixteen times as large.
    pub(crate) fn new(entries: u32, sqpoll: Option<u32>) -> io::Result<Ring> {
        let cq = entries.saturating_mul(16).max(4096);
        let uring = if let Some(idle_ms) = sqpoll {
            // A kernel thread polls the submission queue. Tuning only: on two cores it took a
            // core from the relay's peers (perf/results/2026-11-25-2core-earlier-runs.md).
            IoUring::builder()
                .setup_cqsize(cq)
                .setup_sqpoll(idle_ms)
                .build(entries)?
        } else {
            // Newer kernels take the cheaper task-run modes; older ones refuse the flags
            // (EINVAL).
            IoUring::builder()
                .setup_cqsize(cq)
                .setup_single_issuer()
                .setup_coop_taskrun()
                .build(entries)
                .or_else(|_| IoUring::builder().setup_cqsize(cq).build(entries))?
        };
        Ok(Ring {
            uring,
            overflow: VecDeque::new(),
        })
    }

    /// For registrations (see `registry.rs`).
    pub(crate) fn submitter(&self) -> Submitter<'_> {
        self.uring.submitter()
    }

    /// Queues a submission. When the queue is full it is flushed to the kernel; if the
    /// kernel cannot take more now, the entry waits in the overflow queue until the next
    /// [`Ring::wait`]. Never reaps completions: that would re-enter connection code.
    ///
    /// # Safety
    /// Every descriptor and buffer `sqe` names must stay valid until its completion is reaped.
    pub(crate) unsafe fn push(&mut self, sqe: &squeue::Entry) {
        // SAFETY: forwarded from this function's contract.
        unsafe { self.push_group(std::slice::from_ref(sqe)) }
    }

    /// Queues `sqes` so that they reach the kernel in one submission, in order, never split
    /// by a flush: a chain linked with `IOSQE_IO_LINK` stays one chain (split, its tail would
    /// run at once instead of after its head).
    ///
    /// # Safety
    /// As [`Ring::push`], for every entry.
    pub(crate) unsafe fn push_group(&mut self, sqes: &[squeue::Entry]) {
        if self.overflow.is_empty() {
            // SAFETY: forwarded from this function's contract.
            if unsafe { self.uring.submission().push_multiple(sqes) }.is_ok() {
                return;
            }
            if self.uring.submit().is_ok() {
                // SAFETY: as above.
                if unsafe { self.uring.submission().push_multiple(sqes) }.is_ok() {
                    return;
                }
            }
        }
        self.overflow.push_back(sqes.to_vec());
    }

    /// Moves groups that did not fit earlier into the submission queue, as room allows.
    fn flush_overflow(&mut self) {
        while let Some(group) = self.overflow.front() {
            // SAFETY: the entries were accepted by `push_group` under the same contract and
            // their owner still holds them in flight.
            if unsafe { self.uring.submission().push_multiple(group) }.is_err() {
                if self.uring.submit().is_err() {
                    return;
                }
                continue;
            }
            self.overflow.pop_front();
        }
    }

    /// Arms the multishot poll on the worker's wake-up eventfd.
    pub(crate) fn arm_wake(&mut self, wake: &EventFd) {
        let sqe = opcode::PollAdd::new(types::Fd(wake.as_raw_fd()), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(token::WAKE);
        // SAFETY: the eventfd is owned by the worker (through its Arc) for the ring's life.
        unsafe { self.push(&sqe) };
    }

    /// Asks the kernel to cancel the request of `op` on connection `key`.
    pub(crate) fn cancel(&mut self, key: usize, op: Op) {
        let sqe = opcode::AsyncCancel::new(token::encode(key, op))
            .build()
            .user_data(token::CANCEL);
        // SAFETY: a cancellation names no descriptor or buffer of ours.
        unsafe { self.push(&sqe) };
    }

    /// Submits what is queued and waits: not at all when `busy` (work is ready to run), until
    /// `deadline` when one is given (counted from `now`, the loop's clock), otherwise until a
    /// completion arrives.
    pub(crate) fn wait(
        &mut self,
        busy: bool,
        deadline: Option<Instant>,
        now: Instant,
        worker: usize,
    ) {
        self.flush_overflow();
        let result = if busy || !self.overflow.is_empty() {
            self.uring.submit()
        } else if let Some(at) = deadline {
            let left = at.saturating_duration_since(now);
            let ts = types::Timespec::from(left);
            let args = types::SubmitArgs::new().timespec(&ts);
            self.uring.submitter().submit_with_args(1, &args)
        } else {
            self.uring.submit_and_wait(1)
        };
        if let Err(e) = result {
            match e.raw_os_error() {
                Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN) => {}
                _ => warn!("worker {worker}: io_uring_enter failed: {e}"),
            }
        }
    }

    /// Moves the completions that are ready into `batch` (cleared first); false when none.
    pub(crate) fn reap(&mut self, batch: &mut Vec<Completion>) -> bool {
        batch.clear();
        batch.extend(
            self.uring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        !batch.is_empty()
    }
}

/// Submission on behalf of one connection: every request is recorded in its in-flight set.
pub(crate) struct ConnOps<'a> {
    ring: &'a mut Ring,
    key: usize,
    inflight: &'a mut u16,
}

impl<'a> ConnOps<'a> {
    pub(crate) fn new(ring: &'a mut Ring, key: usize, inflight: &'a mut u16) -> ConnOps<'a> {
        ConnOps {
            ring,
            key,
            inflight,
        }
    }

    /// Queues `sqe` as the connection's request `op`.
    pub(crate) fn push(&mut self, op: Op, sqe: squeue::Entry) {
        let sqe = sqe.user_data(token::encode(self.key, op));
        debug_assert_eq!(*self.inflight & op.bit(), 0, "{op:?} already in flight");
        *self.inflight |= op.bit();
        // SAFETY: the connection holds the descriptors and buffers of `sqe` until the
        // completion clears `op` from its in-flight set: it is freed only once that set is
        // empty (worker `finalize`).
        unsafe { self.ring.push(&sqe) };
    }

    /// Queues `first` and then `then`, linked (`IOSQE_IO_LINK`): `then` starts only once
    /// `first` completed in full, and is cancelled (ECANCELED) when `first` fails or comes
    /// back short. Both are recorded in the connection's in-flight set.
    pub(crate) fn push_linked(&mut self, first: (Op, squeue::Entry), then: (Op, squeue::Entry)) {
        let head = first
            .1
            .user_data(token::encode(self.key, first.0))
            .flags(squeue::Flags::IO_LINK);
        let tail = then.1.user_data(token::encode(self.key, then.0));
        for op in [first.0, then.0] {
            debug_assert_eq!(*self.inflight & op.bit(), 0, "{op:?} already in flight");
            *self.inflight |= op.bit();
        }
        // SAFETY: as in `push`, for both requests.
        unsafe { self.ring.push_group(&[head, tail]) };
    }

    /// Asks the kernel to cancel the connection's request `op`; its completion still comes
    /// (and clears it from the in-flight set).
    pub(crate) fn cancel(&mut self, op: Op) {
        self.ring.cancel(self.key, op);
    }

    pub(crate) fn in_flight(&self, op: Op) -> bool {
        *self.inflight & op.bit() != 0
    }

    pub(crate) fn ring(&self) -> &Ring {
        self.ring
    }

    #[cfg(test)]
    pub(crate) fn ring_mut(&mut self) -> &mut Ring {
        self.ring
    }

    /// The completion of `op` arrived (what the worker does for each completion).
    #[cfg(test)]
    pub(crate) fn returned(&mut self, op: Op) {
        *self.inflight &= !op.bit();
    }
}
