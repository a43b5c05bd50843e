//! What a worker holds of accepting: the listeners it accepts on and the `max-children`
//! slots its connections hold. The worker's accept steps (`accept.rs`) change it.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Instant;

use slab::Slab;

use crate::engine::accept::AcceptGroup;

/// One listener as this worker accepts on it.
pub(super) struct Listening {
    pub(super) group: Arc<AcceptGroup>,
    /// An ACCEPT is in flight.
    pub(super) armed: bool,
    /// The in-flight ACCEPT holds a `max-children` slot.
    pub(super) holds_slot: bool,
    /// The owner asked the workers to let go: cancelled, detaches once nothing is in flight.
    pub(super) leaving: bool,
    /// Arm again no earlier than this (after EMFILE and the like).
    pub(super) retry_at: Option<Instant>,
    pub(super) warned: bool,
}

/// The listeners of one worker and the slots its connections hold.
#[derive(Default)]
pub(super) struct Accepting {
    pub(super) listens: Slab<Listening>,
    /// Connections (slab key) accepted here, with their group: it counts them open (the
    /// balance), and a limited group's slot goes back to it when they close. Weak: a
    /// connection must not keep its listener open after the owner let go of it.
    pub(super) groups: HashMap<usize, Weak<AcceptGroup>>,
    /// Connections this worker accepted.
    pub accepted: u64,
}

impl Accepting {
    pub(super) fn is_empty(&self) -> bool {
        self.listens.is_empty()
    }

    /// The earliest retry due.
    pub(super) fn due(&self) -> Option<Instant> {
        self.listens.iter().filter_map(|(_, l)| l.retry_at).min()
    }
}
