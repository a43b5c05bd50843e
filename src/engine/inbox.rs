//! What the engine tells a worker through its channel (the eventfd beside it wakes the
//! worker's ring): a connection to relay, a listener to accept on or let go of, the relays to
//! cut, or stop.

use std::sync::Arc;

use super::accept::AcceptGroup;
use super::config::RelayOptions;
use super::job::Job;

#[derive(Debug)]
pub(super) enum Message {
    Relay(Box<Job>, Arc<RelayOptions>),
    /// Accept on this group's listener.
    Listen(Arc<AcceptGroup>),
    /// Stop accepting on this group's listener (and detach from it).
    Unlisten(Arc<AcceptGroup>),
    /// Close, with resets, the connections relaying with these options (a service removed
    /// by a reload, once its drain time is over).
    Cut(Arc<RelayOptions>),
    Stop,
}
