//! What a worker registers with its ring, handed out as owned tokens: fixed-buffer slots
//! ([`FixedBuffer`]), provided-buffer groups ([`BufferGroup`], which own their memory) and
//! pairs of fixed-file slots for parked connections ([`ParkPair`]). It also keeps the worker's
//! pool of idle buffer groups ([`GroupLease`]): a ring-path direction takes one when its
//! source has bytes and gives it back when it drains, so a burst of wakes reuses groups
//! already registered instead of registering new ones, and every group counts against the
//! process-wide staging cap ([`COPY_MEMORY_CAP`](super::cap::COPY_MEMORY_CAP)).
//!
//! A token is not `Clone`; each kind has one `release_*` that takes it back, so a slot can
//! be neither freed twice nor forgotten silently. The owner (a lane or a connection) releases
//! its tokens only once no request of it is in flight.

use std::io;
use std::os::fd::RawFd;

use super::cap::{claim_buffer_memory, release_buffer_memory};
use super::ring::Ring;
use crate::debug;
use crate::sys::bufring::BufRing;

/// Registered-buffer slots per worker (a sparse table; a slot is filled per copy direction).
const BUFFER_SLOTS: u16 = 1024;
/// Provided-buffer group ids a worker hands out (one per ring-path direction).
const RING_GROUPS: u16 = 16384;
/// Idle buffer groups a worker keeps for directions that wake; more are freed.
const IDLE_GROUPS: usize = 8;
/// The most bytes of buffers those idle groups may hold together.
const IDLE_GROUP_BYTES: usize = 32 << 20;

/// Free slots of a worker's sparse registered-buffer table.
#[derive(Debug)]
pub(super) struct BufferSlots {
    free: Vec<u16>,
}

impl BufferSlots {
    /// A table of `n` slots, all free.
    pub(super) fn new(n: u16) -> BufferSlots {
        BufferSlots {
            free: (0..n).rev().collect(),
        }
    }

    pub(super) fn take(&mut self) -> Option<u16> {
        self.free.pop()
    }

    pub(super) fn give(&mut self, slot: u16) {
        self.free.push(slot);
    }
}

/// A memory region registered in a fixed-buffer slot (READ_FIXED, WRITE_FIXED, SEND_ZC).
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a registered buffer is released with Registry::release_buffer"]
pub(crate) struct FixedBuffer(u16);

impl FixedBuffer {
    pub(crate) fn index(&self) -> u16 {
        self.0
    }
}

/// A provided-buffer ring registered under its group id; owns the ring's memory.
#[derive(Debug)]
#[must_use = "a buffer group is released with Registry::release_group"]
pub(crate) struct BufferGroup(BufRing);

impl BufferGroup {
    pub(crate) fn ring(&self) -> &BufRing {
        &self.0
    }

    pub(crate) fn ring_mut(&mut self) -> &mut BufRing {
        &mut self.0
    }
}

/// A buffer group held by one ring-path direction (or idle in its worker's pool), with the
/// fixed-buffer slot its memory is registered in when it goes out with SEND_ZC. Its bytes
/// count against the staging cap ([`COPY_MEMORY_CAP`](super::cap::COPY_MEMORY_CAP)) from
/// its registration until it is freed.
#[derive(Debug)]
#[must_use = "a group lease goes back with Registry::return_group or Registry::free_group"]
pub(crate) struct GroupLease {
    group: BufferGroup,
    fixed: Option<FixedBuffer>,
}

impl GroupLease {
    pub(crate) fn group(&self) -> &BufferGroup {
        &self.group
    }

    pub(crate) fn group_mut(&mut self) -> &mut BufferGroup {
        &mut self.group
    }

    /// The slot of the group's memory when it is registered for SEND_ZC.
    pub(crate) fn fixed(&self) -> Option<&FixedBuffer> {
        self.fixed.as_ref()
    }

    fn bytes(&self) -> usize {
        self.group.ring().bytes()
    }

    fn fits(&self, count: u16, size: usize) -> bool {
        self.group.ring().count() == count && self.group.ring().size() == size
    }
}

/// Two slots of the fixed-file table (2p and 2p+1) holding a parked connection's sockets.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a park pair is released with Registry::release_pair"]
pub(crate) struct ParkPair(u32);

impl ParkPair {
    /// The fixed-file slots of [first, second] socket.
    pub(crate) fn slots(&self) -> [u32; 2] {
        [self.0 * 2, self.0 * 2 + 1]
    }
}

/// The free parts of a worker's registered tables.
#[derive(Debug)]
pub(crate) struct Registry {
    worker: usize,
    /// `None` when the ring could not register a sparse buffer table.
    buffers: Option<BufferSlots>,
    groups: Vec<u16>,
    /// Buffer groups no direction holds, every buffer provided, kept for the next wake.
    idle_groups: Vec<GroupLease>,
    /// Whether the kernel takes provided-buffer rings (probed once, on first use).
    groups_supported: Option<bool>,
    /// Free pairs of fixed-file slots; empty when the ring has no fixed-file table.
    pairs: Vec<u32>,
}

impl Registry {
    /// Registers a sparse buffer table and a fixed-file table of `file_slots` slots (what
    /// the kernel refuses is simply not used).
    pub(crate) fn new(ring: &Ring, worker: usize, file_slots: u32) -> Registry {
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
            idle_groups: Vec::new(),
            groups_supported: None,
            pairs,
        }
    }

    /// A registry with no tables: nothing is registered, every request is refused (tests,
    /// and rings that could register nothing).
    #[cfg(test)]
    pub(crate) fn empty() -> Registry {
        Registry {
            worker: 0,
            buffers: None,
            groups: Vec::new(),
            idle_groups: Vec::new(),
            groups_supported: None,
            pairs: Vec::new(),
        }
    }

    /// Registers `iov` in a free fixed-buffer slot.
    ///
    /// The memory must stay allocated until the token is given back to
    /// [`Registry::release_buffer`]; its owner guarantees that by keeping the memory and the
    /// token together and releasing the token first.
    pub(crate) fn register_buffer(&mut self, ring: &Ring, iov: libc::iovec) -> Option<FixedBuffer> {
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
    pub(crate) fn release_buffer(&mut self, ring: &Ring, buffer: FixedBuffer) {
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
    pub(crate) fn new_group(
        &mut self,
        ring: &Ring,
        count: u16,
        size: usize,
    ) -> Option<BufferGroup> {
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
    pub(crate) fn release_group(&mut self, ring: &Ring, group: BufferGroup) {
        let bgid = group.0.bgid();
        if ring.submitter().unregister_buf_ring(bgid).is_ok() {
            self.groups.push(bgid);
            drop(group);
        } else {
            // The kernel may still know the memory: keep it rather than free it under it.
            std::mem::forget(group);
        }
    }

    /// Whether the kernel takes provided-buffer rings: the first call registers a small one
    /// and unregisters it, later calls answer from memory. A ring-path direction is set up
    /// only where they work (it takes its group later, when its source has bytes).
    pub(crate) fn ring_groups_supported(&mut self, ring: &Ring) -> bool {
        if let Some(supported) = self.groups_supported {
            return supported;
        }
        let supported = match self.new_group(ring, 1, 4096) {
            Some(group) => {
                self.release_group(ring, group);
                true
            }
            None => false,
        };
        self.groups_supported = Some(supported);
        supported
    }

    /// A group of `count` buffers of `size` bytes for a direction whose source has bytes: an
    /// idle one from the pool, or a new one when the staging cap leaves room. With
    /// `zerocopy`, its memory is registered for SEND_ZC where a fixed-buffer slot is free.
    /// `None`: no room under the cap (or the kernel said no) now; nothing is lost, the
    /// direction tries again later.
    pub(crate) fn take_group(
        &mut self,
        ring: &Ring,
        count: u16,
        size: usize,
        zerocopy: bool,
    ) -> Option<GroupLease> {
        let fits = |l: &GroupLease| l.fits(count, size);
        let found = self
            .idle_groups
            .iter()
            .position(|l| fits(l) && l.fixed.is_some() == zerocopy)
            .or_else(|| self.idle_groups.iter().position(fits));
        let mut lease = match found {
            Some(i) => self.idle_groups.swap_remove(i),
            None => self.new_lease(ring, count, size)?,
        };
        match (zerocopy, lease.fixed.is_some()) {
            (true, false) => {
                let iov = lease.group.ring_mut().buffers_iovec();
                // The group's memory lives in the lease, which frees the slot first.
                lease.fixed = self.register_buffer(ring, iov);
            }
            (false, true) => {
                // A plain write needs no registration, and registered memory is pinned.
                if let Some(slot) = lease.fixed.take() {
                    self.release_buffer(ring, slot);
                }
            }
            _ => {}
        }
        Some(lease)
    }

    /// A new group under the staging cap; idle groups of other sizes are freed to make room.
    fn new_lease(&mut self, ring: &Ring, count: u16, size: usize) -> Option<GroupLease> {
        let bytes = usize::from(count) * size;
        if !claim_buffer_memory(bytes) {
            if self.idle_groups.is_empty() {
                return None;
            }
            self.free_idle_groups(ring);
            if !claim_buffer_memory(bytes) {
                return None;
            }
        }
        match self.new_group(ring, count, size) {
            Some(group) => Some(GroupLease { group, fixed: None }),
            None => {
                release_buffer_memory(bytes);
                None
            }
        }
    }

    /// Takes back a group whose buffers are all provided to the kernel again and which no
    /// request uses: kept idle for the next direction that wakes, or freed past the pool's
    /// bound.
    pub(crate) fn return_group(&mut self, ring: &Ring, lease: GroupLease) {
        let idle_bytes: usize = self.idle_groups.iter().map(GroupLease::bytes).sum();
        if self.idle_groups.len() < IDLE_GROUPS && idle_bytes + lease.bytes() <= IDLE_GROUP_BYTES {
            self.idle_groups.push(lease);
        } else {
            self.free_group(ring, lease);
        }
    }

    /// Frees a group no request uses (its slot first, then the group) and its claim on the
    /// staging cap.
    pub(crate) fn free_group(&mut self, ring: &Ring, lease: GroupLease) {
        let bytes = lease.bytes();
        if let Some(slot) = lease.fixed {
            self.release_buffer(ring, slot);
        }
        self.release_group(ring, lease.group);
        release_buffer_memory(bytes);
    }

    /// Frees every idle group (the worker ends, or the cap needs their room).
    pub(crate) fn free_idle_groups(&mut self, ring: &Ring) {
        for lease in std::mem::take(&mut self.idle_groups) {
            self.free_group(ring, lease);
        }
    }

    /// Idle groups in the pool now.
    #[cfg(test)]
    pub(crate) fn idle_groups(&self) -> usize {
        self.idle_groups.len()
    }

    /// Whether connections can be parked at all (the ring has a fixed-file table).
    pub(crate) fn can_park(&self) -> bool {
        !self.pairs.is_empty()
    }

    /// Installs the two sockets `fds` in a free pair of fixed-file slots (the caller then
    /// closes its descriptors). `Ok(None)`: no free pair.
    pub(crate) fn park(&mut self, ring: &Ring, fds: [RawFd; 2]) -> io::Result<Option<ParkPair>> {
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
    pub(crate) fn release_pair(&mut self, ring: &Ring, pair: ParkPair) {
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
        assert!(!registry.ring_groups_supported(&ring));
        assert!(registry.take_group(&ring, 8, 4096, false).is_none());
        assert!(registry.park(&ring, [0, 1]).unwrap().is_none());
    }

    #[test]
    fn idle_groups_are_reused_by_size_and_the_pool_stays_bounded() {
        let ring = Ring::new(8, None).unwrap();
        let mut registry = Registry::new(&ring, 0, 0);
        if !registry.ring_groups_supported(&ring) {
            eprintln!("no provided-buffer rings on this kernel: nothing to test");
            return;
        }
        let first = registry.take_group(&ring, 4, 4096, false).unwrap();
        let bgid = first.group().ring().bgid();
        registry.return_group(&ring, first);
        assert_eq!(registry.idle_groups(), 1);
        // Another size gets a group of its own; the idle one stays.
        let other = registry.take_group(&ring, 4, 8192, false).unwrap();
        assert_ne!(other.group().ring().bgid(), bgid);
        assert_eq!(registry.idle_groups(), 1);
        registry.free_group(&ring, other);
        let again = registry.take_group(&ring, 4, 4096, true).unwrap();
        assert_eq!(
            again.group().ring().bgid(),
            bgid,
            "the idle group is reused"
        );
        assert_eq!(registry.idle_groups(), 0);
        // Many directions draining at once: the pool keeps a few, frees the rest.
        let mut held = vec![again];
        for _ in 0..IDLE_GROUPS + 4 {
            held.push(registry.take_group(&ring, 4, 4096, false).unwrap());
        }
        for lease in held {
            registry.return_group(&ring, lease);
        }
        assert_eq!(registry.idle_groups(), IDLE_GROUPS);
        registry.free_idle_groups(&ring);
        assert_eq!(registry.idle_groups(), 0);
    }
}
