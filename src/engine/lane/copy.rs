//! The copy data path's staging: a heap buffer registered with the ring where possible
//! (READ_FIXED / WRITE_FIXED), filled by an io_uring read and emptied by an io_uring write.
//! Used where splice(2) cannot work (terminals, files opened for append) and for `--mode copy`.

use std::os::fd::RawFd;

use io_uring::{opcode, squeue, types};

use super::super::registry::{FixedBuffer, Registry};
use super::super::ring::Ring;

/// A heap buffer for the copy path. Staged bytes live at `data[start..start + staged]`.
#[derive(Debug)]
pub struct CopyBuffer {
    data: Box<[u8]>,
    /// Offset of the first staged byte.
    start: usize,
    /// Its slot in the ring's registered-buffer table, when registered.
    slot: Option<FixedBuffer>,
}

impl CopyBuffer {
    /// A buffer of `size` bytes, unregistered.
    pub fn new(size: usize) -> CopyBuffer {
        CopyBuffer {
            data: vec![0u8; size].into_boxed_slice(),
            start: 0,
            slot: None,
        }
    }

    /// A buffer of `size` bytes, registered in a fixed-buffer slot when one is free.
    pub fn registered(size: usize, registry: &mut Registry, ring: &Ring) -> CopyBuffer {
        let mut buffer = CopyBuffer::new(size);
        let iov = libc::iovec {
            iov_base: buffer.data.as_mut_ptr().cast(),
            iov_len: buffer.data.len(),
        };
        // The heap block never moves, and `release` clears the slot before it is freed.
        buffer.slot = registry.register_buffer(ring, iov);
        buffer
    }

    pub fn capacity(&self) -> usize {
        self.data.len()
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.data
    }

    /// A read of up to `max` bytes from `source` into the (empty) buffer; returns the length
    /// asked for and the request.
    pub fn fill_sqe(&mut self, source: RawFd, max: usize) -> (usize, squeue::Entry) {
        let max = max.min(self.data.len());
        let ptr = self.data.as_mut_ptr();
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
        let ptr = self.data[self.start..].as_mut_ptr();
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
        if let Some(slot) = self.slot.take() {
            registry.release_buffer(ring, slot);
        }
    }
}
