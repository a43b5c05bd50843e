//! The copy data path's staging: a heap buffer registered with the ring where possible
//! (READ_FIXED / WRITE_FIXED), filled by an io_uring read and emptied by an io_uring write.
//! Used where splice(2) cannot work (terminals, files opened for append) and for `--mode copy`.
//! A direction holds its buffer only while it has bytes staged, under one process-wide cap.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering};

use io_uring::{opcode, squeue, types};

use super::super::registry::{FixedBuffer, Registry};
use super::super::ring::Ring;

/// The most memory the copy buffers of the whole process may hold at once. A direction holds
/// its buffer only while it has bytes to move (taken when its source is readable, given back
/// when it drains), so idle connections cost none; past this cap a waking direction waits
/// until others give theirs back, as it waits for descriptors.
pub const COPY_MEMORY_CAP: usize = 1 << 30;

/// Bytes of copy buffers held now, all workers together.
static COPY_MEMORY: AtomicUsize = AtomicUsize::new(0);

/// Bytes of copy buffers the process holds now.
pub fn copy_memory_in_use() -> usize {
    COPY_MEMORY.load(Ordering::Relaxed)
}

/// A heap buffer for the copy path, held only while bytes are staged. Staged bytes live at
/// `data[start..start + staged]`.
#[derive(Debug)]
pub struct CopyBuffer {
    size: usize,
    data: Option<Box<[u8]>>,
    /// Offset of the first staged byte.
    start: usize,
    /// Its slot in the ring's registered-buffer table, when registered.
    slot: Option<FixedBuffer>,
    /// Whether [`CopyBuffer::take`] registers the memory with the ring.
    register: bool,
    /// Whether the memory held counts against [`COPY_MEMORY_CAP`].
    counted: bool,
}

impl CopyBuffer {
    /// A buffer of `size` bytes, allocated now and unregistered (outside the cap: the
    /// fallback from splice holds one while it empties a pipe).
    pub fn new(size: usize) -> CopyBuffer {
        CopyBuffer {
            size,
            data: Some(vec![0u8; size].into_boxed_slice()),
            start: 0,
            slot: None,
            register: false,
            counted: false,
        }
    }

    /// A buffer of `size` bytes that holds no memory until [`CopyBuffer::take`]; then it is
    /// registered in a fixed-buffer slot when one is free.
    pub fn lazy(size: usize) -> CopyBuffer {
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
    pub fn registered(size: usize, registry: &mut Registry, ring: &Ring) -> CopyBuffer {
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
            iov_base: data.as_mut_ptr().cast(),
            iov_len: data.len(),
        };
        // The heap block never moves, and `give_back`/`release` clear the slot before it is
        // freed.
        self.slot = registry.register_buffer(ring, iov);
    }

    /// Makes sure the buffer holds memory before a fill; false when the process-wide cap
    /// ([`COPY_MEMORY_CAP`]) leaves no room now (nothing is lost: try again later).
    pub fn take(&mut self, registry: &mut Registry, ring: &Ring) -> bool {
        if self.data.is_some() {
            return true;
        }
        let claimed = COPY_MEMORY.fetch_add(self.size, Ordering::Relaxed);
        if claimed + self.size > COPY_MEMORY_CAP && claimed > 0 {
            COPY_MEMORY.fetch_sub(self.size, Ordering::Relaxed);
            return false;
        }
        self.data = Some(vec![0u8; self.size].into_boxed_slice());
        self.counted = true;
        self.start = 0;
        if self.register {
            self.register_now(registry, ring);
        }
        true
    }

    /// Frees the memory of an empty buffer with no request in flight (the caller knows).
    pub fn give_back(&mut self, registry: &mut Registry, ring: &Ring) {
        if let Some(slot) = self.slot.take() {
            registry.release_buffer(ring, slot);
        }
        if self.data.take().is_some() && std::mem::take(&mut self.counted) {
            COPY_MEMORY.fetch_sub(self.size, Ordering::Relaxed);
        }
        self.start = 0;
    }

    fn data(&mut self) -> &mut [u8] {
        self.data
            .as_deref_mut()
            .expect("a filling or draining copy direction holds its buffer")
    }

    pub fn capacity(&self) -> usize {
        self.size
    }

    /// Whether the buffer holds memory now.
    pub fn is_held(&self) -> bool {
        self.data.is_some()
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        self.data()
    }

    /// A read of up to `max` bytes from `source` into the (empty) buffer; returns the length
    /// asked for and the request.
    pub fn fill_sqe(&mut self, source: RawFd, max: usize) -> (usize, squeue::Entry) {
        let max = max.min(self.size);
        let ptr = self.data().as_mut_ptr();
        let sqe = match &self.slot {
            Some(slot) => opcode::ReadFixed::new(types::Fd(source), ptr, max as u32, slot.index())
                .offset(u64::MAX)
                .build(),
            None => opcode::Read::new(types::Fd(source), ptr, max as u32)
                .offset(u64::MAX)
                .build(),
        };
        (max, sqe)
    }

    /// A write of the `len` staged bytes to `sink`.
    pub fn drain_sqe(&mut self, sink: RawFd, len: usize) -> squeue::Entry {
        let start = self.start;
        let ptr = self.data()[start..].as_mut_ptr();
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
    pub fn drained(&mut self, n: usize) {
        self.start += n;
    }

    /// Nothing is staged any more: the next fill starts at the beginning.
    pub fn rewind(&mut self) {
        self.start = 0;
    }

    /// Clears the buffer's slot (no request uses it any more) and frees it.
    pub fn release(mut self, registry: &mut Registry, ring: &Ring) {
        self.give_back(registry, ring);
    }
}
