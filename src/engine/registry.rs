//! What a worker registers with its ring, handed out as owned tokens: fixed-buffer slots
//! ([`FixedBuffer`]), provided-buffer groups ([`BufferGroup`], which own their memory) and
//! pairs of fixed-file slots for parked connections ([`ParkPair`]).
//!
//! A token is not `Clone`; each kind has one `release_*` that takes it back, so a slot can
//! be neither freed twice nor forgotten silently. The owner (a lane or a connection) releases
//! its tokens only once no request of it is in flight.

use std::io;
use std::os::fd::RawFd;

use super::ring::Ring;
use crate::debug;
use crate::sys::bufring::BufRing;

/// Registered-buffer slots per worker (a sparse table; a slot is filled per copy direction).
const BUFFER_SLOTS: u16 = 1024;
/// Provided-buffer group ids a worker hands out (one per ring-path direction).
const RING_GROUPS: u16 = 16384;

/// Free slots of a worker's sparse registered-buffer table.
#[derive(Debug)]
pub struct BufferSlots {
    free: Vec<u16>,
}

impl BufferSlots {
    /// A table of `n` slots, all free.
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

/// A memory region registered in a fixed-buffer slot (READ_FIXED, WRITE_FIXED, SEND_ZC).
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a registered buffer is released with Registry::release_buffer"]
pub struct FixedBuffer(u16);

impl FixedBuffer {
    pub fn index(&self) -> u16 {
        self.0
    }
}

/// A provided-buffer ring registered under its group id; owns the ring's memory.
#[derive(Debug)]
#[must_use = "a buffer group is released with Registry::release_group"]
pub struct BufferGroup(BufRing);

impl BufferGroup {
    pub fn ring(&self) -> &BufRing {
        &self.0
    }

    pub fn ring_mut(&mut self) -> &mut BufRing {
        &mut self.0
    }
}

/// Two slots of the fixed-file table (2p and 2p+1) holding a parked connection's sockets.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a park pair is released with Registry::release_pair"]
pub struct ParkPair(u32);

impl ParkPair {
    /// The fixed-file slots of [first, second] socket.
    pub fn slots(&self) -> [u32; 2] {
        [self.0 * 2, self.0 * 2 + 1]
    }
}

/// The free parts of a worker's registered tables.
#[derive(Debug)]
pub struct Registry {
    worker: usize,
    /// `None` when the ring could not register a sparse buffer table.
    buffers: Option<BufferSlots>,
    groups: Vec<u16>,
    /// Free pairs of fixed-file slots; empty when the ring has no fixed-file table.
    pairs: Vec<u32>,
}

impl Registry {
    /// Registers a sparse buffer table and a fixed-file table of `file_slots` slots (what
    /// the kernel refuses is simply not used).
    pub fn new(ring: &Ring, worker: usize, file_slots: u32) -> Registry {
        let pairs = match ring.submitter().register_files_sparse(file_slots) {
            Ok(()) => (0..file_slots / 2).rev().collect(),
            Err(e) => {
                debug!("worker {worker}: no fixed-file table ({e}); connections are never parked");
                Vec::new()
            }
        };
        let buffers = match ring
            .submitter()
            .register_buffers_sparse(u32::from(BUFFER_SLOTS))
        {
            Ok(()) => Some(BufferSlots::new(BUFFER_SLOTS)),
            Err(e) => {
                debug!("worker {worker}: no registered buffers ({e}); copy path uses plain reads");
                None
            }
        };
        Registry {
            worker,
            buffers,
            groups: (0..RING_GROUPS).rev().collect(),
            pairs,
        }
    }

    /// A registry with no tables: nothing is registered, every request is refused (tests,
    /// and rings that could register nothing).
    #[cfg(test)]
    pub fn empty() -> Registry {
        Registry {
            worker: 0,
            buffers: None,
            groups: Vec::new(),
            pairs: Vec::new(),
        }
    }

    /// Registers `iov` in a free fixed-buffer slot.
    ///
    /// The memory must stay allocated until the token is given back to
    /// [`Registry::release_buffer`]; its owner guarantees that by keeping the memory and the
    /// token together and releasing the token first.
    pub fn register_buffer(&mut self, ring: &Ring, iov: libc::iovec) -> Option<FixedBuffer> {
        let slot = self.buffers.as_mut()?.take()?;
        // SAFETY: the region's owner keeps it allocated until it releases the token, which
        // clears the slot (see above), and releases it only with no request in flight.
        let registered = unsafe {
            ring.submitter()
                .register_buffers_update(u32::from(slot), &[iov], None)
        };
        match registered {
            Ok(()) => Some(FixedBuffer(slot)),
            Err(e) => {
                debug!(
                    "worker {}: cannot register a buffer region: {e}",
                    self.worker
                );
                if let Some(slots) = self.buffers.as_mut() {
                    slots.give(slot);
                }
                None
            }
        }
    }

    /// Clears a fixed-buffer slot and makes it free again.
    pub fn release_buffer(&mut self, ring: &Ring, buffer: FixedBuffer) {
        let empty = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        // SAFETY: clearing a slot hands the kernel no memory.
        let cleared = unsafe {
            ring.submitter()
                .register_buffers_update(u32::from(buffer.0), &[empty], None)
        };
        if cleared.is_ok() {
            if let Some(slots) = self.buffers.as_mut() {
                slots.give(buffer.0);
            }
        }
    }

    /// A registered provided-buffer ring of `count` buffers of `size` bytes; `None` when the
    /// kernel (or the group-id supply) says no.
    pub fn new_group(&mut self, ring: &Ring, count: u16, size: usize) -> Option<BufferGroup> {
        let bgid = self.groups.pop()?;
        let bufs = BufRing::new(bgid, count, size);
        // SAFETY: the ring memory lives in the token, which `release_group` unregisters
        // before it frees the memory.
        let registered = unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(bufs.ring_addr(), bufs.count(), bgid, 0)
        };
        match registered {
            Ok(()) => Some(BufferGroup(bufs)),
            Err(e) => {
                debug!(
                    "worker {}: no provided-buffer ring ({e}); copying instead",
                    self.worker
                );
                self.groups.push(bgid);
                None
            }
        }
    }

    /// Unregisters a buffer group (no request uses it any more) and frees its memory.
    pub fn release_group(&mut self, ring: &Ring, group: BufferGroup) {
        let bgid = group.0.bgid();
        if ring.submitter().unregister_buf_ring(bgid).is_ok() {
            self.groups.push(bgid);
            drop(group);
        } else {
            // The kernel may still know the memory: keep it rather than free it under it.
            std::mem::forget(group);
        }
    }

    /// Whether connections can be parked at all (the ring has a fixed-file table).
    pub fn can_park(&self) -> bool {
        !self.pairs.is_empty()
    }

    /// Installs the two sockets `fds` in a free pair of fixed-file slots (the caller then
    /// closes its descriptors). `Ok(None)`: no free pair.
    pub fn park(&mut self, ring: &Ring, fds: [RawFd; 2]) -> io::Result<Option<ParkPair>> {
        let Some(pair) = self.pairs.pop() else {
            return Ok(None);
        };
        match ring.submitter().register_files_update(pair * 2, &fds) {
            Ok(_) => Ok(Some(ParkPair(pair))),
            Err(e) => {
                self.pairs.push(pair);
                Err(e)
            }
        }
    }

    /// Clears a pair's slots, which drops the kernel's references: the sockets close.
    pub fn release_pair(&mut self, ring: &Ring, pair: ParkPair) {
        let cleared = ring
            .submitter()
            .register_files_update(pair.0 * 2, &[-1, -1]);
        if cleared.is_ok() {
            self.pairs.push(pair.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn an_empty_registry_refuses_every_registration() {
        let ring = Ring::new(8, None).unwrap();
        let mut registry = Registry::empty();
        assert!(!registry.can_park());
        let mut memory = [0u8; 64];
        let iov = libc::iovec {
            iov_base: memory.as_mut_ptr().cast(),
            iov_len: memory.len(),
        };
        assert_eq!(registry.register_buffer(&ring, iov), None);
        assert!(registry.new_group(&ring, 8, 4096).is_none());
        assert!(registry.park(&ring, [0, 1]).unwrap().is_none());
    }
}
