//! Where a direction's bytes wait between source and destination: a pipe borrowed from the
//! worker's pool (splice path), or a heap buffer registered with the ring (copy path).
//!
//! Idle connections hold no pipe: a direction borrows one when it has bytes to move and gives
//! it back, empty, when it goes back to waiting for its source. That keeps pipe descriptors and
//! the per-user pipe quota proportional to the connections that are moving data, not to the
//! connections that exist.

use std::io;

use crate::sys::pipe::Pipe;

/// A worker's pool of empty pipes, all asked for with the same size.
#[derive(Debug)]
pub struct PipePool {
    size: usize,
    idle: Vec<Pipe>,
    max_idle: usize,
    /// Pipes created over the pool's life (for diagnostics).
    pub created: u64,
}

impl PipePool {
    pub fn new(size: usize, max_idle: usize) -> PipePool {
        PipePool {
            size,
            idle: Vec::new(),
            max_idle,
            created: 0,
        }
    }

    /// An empty pipe: a pooled one, or a new one.
    pub fn take(&mut self) -> io::Result<Pipe> {
        if let Some(pipe) = self.idle.pop() {
            return Ok(pipe);
        }
        self.created += 1;
        Pipe::new(self.size)
    }

    /// Returns an *empty* pipe to the pool. It is closed instead when the pool is full, or
    /// when the kernel gave it less than the asked size (an unprivileged user over the pipe
    /// quota): closing it frees quota, so a later pipe may get the full size again.
    pub fn give(&mut self, pipe: Pipe) {
        if self.idle.len() < self.max_idle && pipe.capacity() >= self.size {
            self.idle.push(pipe);
        }
    }

    pub fn idle(&self) -> usize {
        self.idle.len()
    }
}

/// A heap buffer for the copy path. Staged bytes live at `data[start..start + staged]`.
#[derive(Debug)]
pub struct CopyBuffer {
    data: Box<[u8]>,
    /// Offset of the first staged byte.
    pub start: usize,
    /// Index in the ring's registered-buffer table, when registered.
    pub slot: Option<u16>,
}

impl CopyBuffer {
    pub fn new(size: usize) -> CopyBuffer {
        CopyBuffer {
            data: vec![0u8; size].into_boxed_slice(),
            start: 0,
            slot: None,
        }
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Start of the buffer; stable for the buffer's life (the heap block never moves).
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.data.as_mut_ptr()
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.data
    }

    pub fn iovec(&mut self) -> libc::iovec {
        libc::iovec {
            iov_base: self.data.as_mut_ptr().cast(),
            iov_len: self.data.len(),
        }
    }
}

/// Free slots of a worker's sparse registered-buffer table.
#[derive(Debug)]
pub struct BufferSlots {
    free: Vec<u16>,
}

impl BufferSlots {
    /// A table of `n` slots, or none at all when the ring could not register a sparse table.
    pub fn new(n: u16) -> BufferSlots {
        BufferSlots {
            free: (0..n).rev().collect(),
        }
    }

    pub fn take(&mut self) -> Option<u16> {
        self.free.pop()
    }

    pub fn give(&mut self, slot: u16) {
        self.free.push(slot);
    }
}

/// A direction's staging area.
#[derive(Debug)]
pub enum Staging {
    /// Splice path: a pipe while bytes are in flight, none while idle.
    Pipe(Option<Pipe>),
    /// Copy path: a buffer for the connection's life.
    Copy(CopyBuffer),
}

/// A provided-buffer ring for one direction of the `recv` data path: `count` buffers of
/// `size` bytes that a multishot receive fills, and the ring through which the worker hands
/// them (back) to the kernel. The ring memory is page-aligned and shared with the kernel; it
/// must stay registered under `bgid` only while this value lives (the worker unregisters it
/// before dropping it).
pub struct BufRing {
    bgid: u16,
    count: u16,
    size: usize,
    ring: std::ptr::NonNull<io_uring::types::BufRingEntry>,
    layout: std::alloc::Layout,
    buffers: Box<[u8]>,
    tail: u16,
}

// SAFETY: the ring memory is owned by this value and only touched by the thread that owns it
// (and the kernel, which synchronises through the tail's release store).
unsafe impl Send for BufRing {}

impl std::fmt::Debug for BufRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufRing")
            .field("bgid", &self.bgid)
            .field("count", &self.count)
            .field("size", &self.size)
            .finish()
    }
}

impl BufRing {
    /// A ring of `count` (a power of two) buffers of `size` bytes, every buffer provided.
    pub fn new(bgid: u16, count: u16, size: usize) -> BufRing {
        assert!(count.is_power_of_two(), "ring sizes are powers of two");
        let bytes = std::mem::size_of::<io_uring::types::BufRingEntry>() * usize::from(count);
        let layout = std::alloc::Layout::from_size_align(bytes.max(4096), 4096).expect("layout");
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ring = std::ptr::NonNull::new(raw.cast())
            .unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        let mut this = BufRing {
            bgid,
            count,
            size,
            ring,
            layout,
            buffers: vec![0u8; size * usize::from(count)].into_boxed_slice(),
            tail: 0,
        };
        for bid in 0..count {
            this.provide(bid);
        }
        this
    }

    pub fn bgid(&self) -> u16 {
        self.bgid
    }

    pub fn count(&self) -> u16 {
        self.count
    }

    /// The buffers' memory as one region, to register as a fixed buffer (SEND_ZC).
    pub fn buffers_iovec(&mut self) -> libc::iovec {
        libc::iovec {
            iov_base: self.buffers.as_mut_ptr().cast(),
            iov_len: self.buffers.len(),
        }
    }

    /// Address of the ring entries, for IORING_REGISTER_PBUF_RING.
    pub fn ring_addr(&self) -> u64 {
        self.ring.as_ptr() as u64
    }

    /// Address of byte `offset` of buffer `bid` (what a write of received bytes sends).
    pub fn data(&self, bid: u16, offset: usize) -> *const u8 {
        assert!(
            bid < self.count && offset <= self.size,
            "buffer {bid}+{offset} out of range"
        );
        // SAFETY: bounds checked above; the slice holds count * size bytes.
        unsafe {
            self.buffers
                .as_ptr()
                .add(usize::from(bid) * self.size + offset)
        }
    }

    /// Hands buffer `bid` (back) to the kernel.
    pub fn provide(&mut self, bid: u16) {
        assert!(bid < self.count, "buffer {bid} out of range");
        let mask = self.count - 1;
        let slot = usize::from(self.tail & mask);
        // SAFETY: `slot` < count, so the entry lies inside the ring allocation; the kernel
        // reads entries only below the published tail, and this one is published below.
        let entry = unsafe { &mut *self.ring.as_ptr().add(slot) };
        // The buffers never move: the boxed slice is allocated once.
        entry.set_addr(self.buffers.as_ptr() as u64 + (usize::from(bid) * self.size) as u64);
        entry.set_len(self.size as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail lives in the first entry of the ring allocation; the release store
        // makes the entry written above visible to the kernel before the new tail.
        unsafe {
            let tail = io_uring::types::BufRingEntry::tail(self.ring.as_ptr())
                as *const std::sync::atomic::AtomicU16;
            (*tail).store(self.tail, std::sync::atomic::Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; the worker unregistered the ring first.
        unsafe { std::alloc::dealloc(self.ring.as_ptr().cast(), self.layout) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_reuses_and_bounds_idle_pipes() {
        let mut pool = PipePool::new(64 * 1024, 1);
        let a = pool.take().unwrap();
        let b = pool.take().unwrap();
        assert_eq!(pool.created, 2);
        assert_eq!(a.capacity(), 64 * 1024);
        pool.give(a);
        pool.give(b);
        assert_eq!(pool.idle(), 1, "the second pipe is closed, not pooled");
        let _c = pool.take().unwrap();
        assert_eq!(pool.created, 2, "a pooled pipe is reused");
    }

    #[test]
    fn buffer_slots_are_handed_out_once() {
        let mut slots = BufferSlots::new(2);
        let a = slots.take().unwrap();
        let b = slots.take().unwrap();
        assert_ne!(a, b);
        assert_eq!(slots.take(), None);
        slots.give(a);
        assert_eq!(slots.take(), Some(a));
    }
}
