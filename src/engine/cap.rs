//! The one cap on staging memory: copy buffers and the buffer-ring path's provided-buffer
//! groups of the whole process count against [`COPY_MEMORY_CAP`] together, whichever worker
//! or relay holds them, so the bound an operator reads is one number.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The most memory the staging buffers of the whole process may hold at once: copy buffers
/// and the buffer-ring path's provided-buffer groups together (one cap, so the bound an
/// operator reads is one number whatever the modes of the relays and services in a process).
/// A direction holds its buffer only while it has bytes to move (taken when its source is
/// readable, given back when it drains), so idle connections cost none; past this cap a
/// waking direction waits until others give theirs back, as it waits for descriptors.
pub(super) const COPY_MEMORY_CAP: usize = 1 << 30;

/// Bytes of staging buffers held now, all workers together.
static COPY_MEMORY: AtomicUsize = AtomicUsize::new(0);

/// Counts `bytes` more in `counter` unless that passes `cap`; one claim alone may pass it
/// (a single `-b` larger than the cap still works).
fn claim_within(counter: &AtomicUsize, bytes: usize, cap: usize) -> bool {
    let claimed = counter.fetch_add(bytes, Ordering::Relaxed);
    if claimed + bytes > cap && claimed > 0 {
        counter.fetch_sub(bytes, Ordering::Relaxed);
        return false;
    }
    true
}

/// Claims `bytes` of staging memory under [`COPY_MEMORY_CAP`]; false when there is no room
/// now (nothing is lost: the direction tries again later).
pub(super) fn claim_buffer_memory(bytes: usize) -> bool {
    claim_within(&COPY_MEMORY, bytes, COPY_MEMORY_CAP)
}

/// Gives back `bytes` claimed with [`claim_buffer_memory`].
pub(super) fn release_buffer_memory(bytes: usize) {
    COPY_MEMORY.fetch_sub(bytes, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_stop_at_the_cap_but_one_claim_alone_may_pass_it() {
        let counter = AtomicUsize::new(0);
        assert!(claim_within(&counter, 600, 1000));
        assert!(claim_within(&counter, 400, 1000), "exactly the cap fits");
        assert!(!claim_within(&counter, 1, 1000), "past the cap waits");
        assert_eq!(
            counter.load(Ordering::Relaxed),
            1000,
            "a refused claim counts nothing"
        );
        counter.store(0, Ordering::Relaxed);
        assert!(
            claim_within(&counter, 5000, 1000),
            "alone, a claim may pass the cap"
        );
        assert!(!claim_within(&counter, 1, 1000));
    }
}
