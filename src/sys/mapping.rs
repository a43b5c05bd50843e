//! Anonymous private memory mapped for one owner and unmapped when it drops: the staging
//! buffers of the copy and buffer-ring paths. A mapping of its own gives its pages back to
//! the system the moment it is freed; a freed heap block of this size may stay in glibc's
//! arenas (its mmap threshold rises to the largest block freed), which kept a busy copy-mode
//! relay at 1 GB of RSS after its connections went idle.

use std::ptr::NonNull;

/// `len` bytes of anonymous private memory, zero-filled on first touch, unmapped on drop.
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value alone; moving the owner to another
// thread moves the only access to it.
unsafe impl Send for Mapping {}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapping").field("len", &self.len).finish()
    }
}

impl Mapping {
    /// `len` (non-zero) bytes of fresh memory; aborts as an allocation failure would when the
    /// kernel has none.
    pub(crate) fn new(len: usize) -> Mapping {
        // SAFETY: an anonymous private mapping at an address the kernel chooses touches no
        // memory of ours.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        match NonNull::new(raw.cast::<u8>()).filter(|_| raw != libc::MAP_FAILED) {
            Some(ptr) => Mapping { ptr, len },
            None => std::alloc::handle_alloc_error(
                std::alloc::Layout::from_size_align(len.max(1), 4096).expect("layout"),
            ),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The first byte: stable for the mapping's life (it never moves), so it may be handed to
    /// the kernel for as long as the owner keeps this value.
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `len` mapped, readable and writable bytes, borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: mapped in `new` with this length; the owner dropping it guarantees that
        // nothing (no registration, no request in flight) refers to it any more.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `addr` lies in one of the process's mappings (/proc/self/maps).
    fn mapped(addr: usize) -> bool {
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.split_once('-'))
            .any(|(lo, hi)| {
                let lo = usize::from_str_radix(lo, 16).unwrap();
                let hi = usize::from_str_radix(hi, 16).unwrap();
                (lo..hi).contains(&addr)
            })
    }

    #[test]
    fn a_mapping_is_zeroed_and_writable_and_gone_from_the_process_when_dropped() {
        let mut m = Mapping::new(8 << 20);
        assert!(m.as_mut_slice().iter().step_by(4096).all(|&b| b == 0));
        m.as_mut_slice().fill(7);
        assert_eq!(m.as_mut_slice()[(8 << 20) - 1], 7);
        let addr = m.as_ptr() as usize;
        assert!(mapped(addr));
        drop(m);
        assert!(!mapped(addr), "its pages went back to the system");
    }
}
