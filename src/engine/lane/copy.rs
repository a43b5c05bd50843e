//! The copy data path's staging: a buffer (a mapping of its own) registered with the ring where possible
//! (READ_FIXED / WRITE_FIXED), filled by an io_uring read and emptied by an io_uring write.
//! Used where splice(2) cannot work (terminals, files opened for append) and for `--mode copy`.
//! A direction holds its buffer only while it has bytes staged, under one process-wide cap
//! that the buffer-ring path's groups (`ring.rs`, `registry.rs`) count against too.

use std::os::fd::RawFd;

use io_uring::{opcode, squeue, types};

use super::super::cap::{claim_buffer_memory, release_buffer_memory};
use super::super::registry::{FixedBuffer, Registry};
use super::super::ring::Ring;
use crate::sys::mapping::Mapping;

/// `IORING_RECVSEND_POLL_FIRST` of include/uapi/linux/io_uring.h (the io-uring crate keeps
/// its constants private): a receive's `ioprio` flag.
const IORING_RECVSEND_POLL_FIRST: u16 = 1;

/// A buffer for the copy path, held only while bytes are staged. Staged bytes live at
/// `data[start..start + staged]`.
#[derive(Debug)]
pub(crate) struct CopyBuffer {
    size: usize,
    /// Its own mapping, so a buffer given back leaves the process's RSS at once.
    data: Option<Mapping>,
    /// Offset of the first staged byte.
    start: usize,
    /// Its slot in the ring's registered-buffer table, when registered.
    slot: Option<FixedBuffer>,
    /// Whether [`CopyBuffer::take`] registers the memory with the ring.
    register: bool,
    /// Whether the memory held counts against `cap::COPY_MEMORY_CAP`.
    counted: bool,
}

impl CopyBuffer {
    /// A buffer of `size` bytes, allocated now and unregistered (outside the cap: the
    /// fallback from splice holds one while it empties a pipe).
    pub(crate) fn new(size: usize) -> CopyBuffer {
        CopyBuffer {
            size,
            data: Some(Mapping::new(size.max(1))),
            start: 0,
            slot: None,
            register: false,
            counted: false,
        }
    }

    /// A buffer of `size` bytes that holds no memory until [`CopyBuffer::take`]; then it is
    /// registered in a fixed-buffer slot when one is free.
    pub(crate) fn lazy(size: usize) -> CopyBuffer {
        CopyBuffer {
            size,
            data: None,
            start: 0,
            slot: None,
            register: true,
            counted: false,
        }
    }

    /// A buffer of `size` bytes, allocated and registered now.
    pub(crate) fn registered(size: usize, registry: &mut Registry, ring: &Ring) -> CopyBuffer {
        let mut buffer = CopyBuffer::new(size);
        buffer.register = true;
        buffer.register_now(registry, ring);
        buffer
    }

    fn register_now(&mut self, registry: &mut Registry, ring: &Ring) {
        let Some(data) = self.data.as_mut() else {
            return;
        };
        let iov = libc::iovec {
            iov_base: data.as_ptr().cast(),
            iov_len: data.len(),
        };
        // The mapping never moves, and `give_back`/`release` clear the slot before it is
        // freed.
        self.slot = registry.register_buffer(ring, iov);
    }

    /// Makes sure the buffer holds memory before a fill; false when the process-wide cap
    /// (`cap::COPY_MEMORY_CAP`) leaves no room now (nothing is lost: try again later).
    pub(crate) fn take(&mut self, registry: &mut Registry, ring: &Ring) -> bool {
        if self.data.is_some() {
            return true;
        }
        if !claim_buffer_memory(self.size) {
            return false;
        }
        self.data = Some(Mapping::new(self.size.max(1)));
        self.counted = true;
        self.start = 0;
        if self.register {
            self.register_now(registry, ring);
        }
        true
    }

    /// Frees the memory of an empty buffer with no request in flight (the caller knows).
    pub(crate) fn give_back(&mut self, registry: &mut Registry, ring: &Ring) {
        if let Some(slot) = self.slot.take() {
            registry.release_buffer(ring, slot);
        }
        if self.data.take().is_some() && std::mem::take(&mut self.counted) {
            release_buffer_memory(self.size);
        }
        self.start = 0;
    }

    fn data(&mut self) -> &mut [u8] {
        self.data
            .as_mut()
            .map(Mapping::as_mut_slice)
            .expect("a filling or draining copy direction holds its buffer")
    }

    pub(crate) fn capacity(&self) -> usize {
        self.size
    }

    /// Whether the buffer holds memory now.
    pub(crate) fn is_held(&self) -> bool {
        self.data.is_some()
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        self.data()
    }

    /// A read of up to `max` bytes from `source` into the (empty) buffer; returns the length
    /// asked for and the request. With `nowait` (a socket source) the read never waits: a
    /// RECV with `MSG_DONTWAIT`, which io_uring completes at once with EAGAIN when the source
    /// is empty, so the direction then waits for readiness without holding the buffer in a
    /// pending read. (Not `RWF_NOWAIT` on a read: kernels before sockets took `FMODE_NOWAIT`,
    /// Debian 12's 6.1 among them, refuse that with EOPNOTSUPP.)
    pub(crate) fn fill_sqe(
        &mut self,
        source: RawFd,
        max: usize,
        nowait: bool,
    ) -> (usize, squeue::Entry) {
        let max = max.min(self.size);
        let ptr = self.data().as_mut_ptr();
        let sqe = match &self.slot {
            _ if nowait => opcode::Recv::new(types::Fd(source), ptr, max as u32)
                .flags(libc::MSG_DONTWAIT)
                .build(),
            Some(slot) => opcode::ReadFixed::new(types::Fd(source), ptr, max as u32, slot.index())
                .offset(u64::MAX)
                .build(),
            None => opcode::Read::new(types::Fd(source), ptr, max as u32)
                .offset(u64::MAX)
                .build(),
        };
        (max, sqe)
    }

    /// A receive of up to `max` bytes from the socket `source` that waits in the kernel for the
    /// socket to be readable first (`IORING_RECVSEND_POLL_FIRST`, Linux 5.19): io_uring arms
    /// its poll at once instead of trying a receive that would find the socket empty, and
    /// receives in the wake-up's task work, so one completion brings the bytes. What a
    /// RECV with MSG_DONTWAIT, its EAGAIN, a POLL_ADD and another RECV did in two trips
    /// through user space. The read holds the buffer while it waits: the caller cancels it
    /// when the source stays quiet (`StagedLane`, [`super::staged::COPY_IDLE_GRACE`]).
    pub(crate) fn fill_poll_first_sqe(
        &mut self,
        source: RawFd,
        max: usize,
    ) -> (usize, squeue::Entry) {
        let max = max.min(self.size);
        let ptr = self.data().as_mut_ptr();
        let sqe = opcode::Recv::new(types::Fd(source), ptr, max as u32)
            .ioprio(IORING_RECVSEND_POLL_FIRST)
            .build();
        (max, sqe)
    }

    /// A write of the `len` staged bytes to `sink`. With `whole` (a socket sink) they go as one
    /// SEND with `MSG_WAITALL`: the kernel waits for room and sends the rest itself (io_uring
    /// retries a short send on readiness without a trip to user space), so a direction costs
    /// one completion per buffer however small the peer's window is. On vsock the window is
    /// the peer's credit (256 KiB by default), and a plain non-blocking write came back short
    /// at every credit update: docs/performance.md, "vsock as a destination".
    pub(crate) fn drain_sqe(&mut self, sink: RawFd, len: usize, whole: bool) -> squeue::Entry {
        let start = self.start;
        let ptr = self.data()[start..].as_mut_ptr();
        if whole {
            return opcode::Send::new(types::Fd(sink), ptr, len as u32)
                .flags(libc::MSG_WAITALL | libc::MSG_NOSIGNAL)
                .build();
        }
        match &self.slot {
            Some(slot) => opcode::WriteFixed::new(types::Fd(sink), ptr, len as u32, slot.index())
                .offset(u64::MAX)
                .build(),
            None => opcode::Write::new(types::Fd(sink), ptr, len as u32)
                .offset(u64::MAX)
                .build(),
        }
    }

    /// `n` staged bytes went out.
    pub(crate) fn drained(&mut self, n: usize) {
        self.start += n;
    }

    /// Nothing is staged any more: the next fill starts at the beginning.
    pub(crate) fn rewind(&mut self) {
        self.start = 0;
    }

    /// Clears the buffer's slot (no request uses it any more) and frees it.
    pub(crate) fn release(mut self, registry: &mut Registry, ring: &Ring) {
        self.give_back(registry, ring);
    }
}
