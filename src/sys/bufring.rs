//! A provided-buffer ring (IORING_REGISTER_PBUF_RING) for one direction of the `recv` data
//! path: page-aligned ring entries shared with the kernel plus the buffers they point at.
//!
//! The memory is owned here and freed on drop; registering it with a ring is the engine's
//! registry's job (`engine/registry.rs`), which unregisters it before it drops this value.
//! The buffers are a mapping of their own, so a group freed gives its pages back to the
//! system at once (a freed heap block of this size may stay in the allocator's arena).

use super::mapping::Mapping;

/// A provided-buffer ring for one direction of the `recv` data path: `count` buffers of
/// `size` bytes that a multishot receive fills, and the ring through which the worker hands
/// them (back) to the kernel. The ring memory is page-aligned and shared with the kernel; it
/// must stay registered under `bgid` only while this value lives (the worker unregisters it
/// before dropping it).
pub(crate) struct BufRing {
    bgid: u16,
    count: u16,
    size: usize,
    ring: std::ptr::NonNull<io_uring::types::BufRingEntry>,
    layout: std::alloc::Layout,
    buffers: Mapping,
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
    pub(crate) fn new(bgid: u16, count: u16, size: usize) -> BufRing {
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
            buffers: Mapping::new((size * usize::from(count)).max(1)),
            tail: 0,
        };
        for bid in 0..count {
            this.provide(bid);
        }
        this
    }

    pub(crate) fn bgid(&self) -> u16 {
        self.bgid
    }

    pub(crate) fn count(&self) -> u16 {
        self.count
    }

    /// Bytes of one buffer.
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// Bytes of all the buffers together.
    pub(crate) fn bytes(&self) -> usize {
        self.buffers.len()
    }

    /// The buffers' memory as one region, to register as a fixed buffer (SEND_ZC).
    pub(crate) fn buffers_iovec(&mut self) -> libc::iovec {
        libc::iovec {
            iov_base: self.buffers.as_ptr().cast(),
            iov_len: self.buffers.len(),
        }
    }

    /// Address of the ring entries, for IORING_REGISTER_PBUF_RING.
    pub(crate) fn ring_addr(&self) -> u64 {
        self.ring.as_ptr() as u64
    }

    /// Address of byte `offset` of buffer `bid` (what a write of received bytes sends).
    pub(crate) fn data(&self, bid: u16, offset: usize) -> *const u8 {
        assert!(
            bid < self.count && offset <= self.size,
            "buffer {bid}+{offset} out of range"
        );
        // SAFETY: bounds checked above; the mapping holds count * size bytes.
        unsafe {
            self.buffers
                .as_ptr()
                .add(usize::from(bid) * self.size + offset)
        }
    }

    /// Hands buffer `bid` (back) to the kernel.
    pub(crate) fn provide(&mut self, bid: u16) {
        assert!(bid < self.count, "buffer {bid} out of range");
        let mask = self.count - 1;
        let slot = usize::from(self.tail & mask);
        // SAFETY: `slot` < count, so the entry lies inside the ring allocation; the kernel
        // reads entries only below the published tail, and this one is published below.
        let entry = unsafe { &mut *self.ring.as_ptr().add(slot) };
        // The buffers never move: the mapping is made once.
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
