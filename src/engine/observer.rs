//! The hook through which the owner of a relay (service mode's metrics) hears of each of its
//! connections as it happens.

use std::time::Duration;

use super::close::CloseReason;
use super::direction::Direction;
use crate::net::dial::DialError;

/// What the owner of a relay learns about each of its connections as it happens (service
/// mode's per-service metrics), through [`super::config::RelayOptions::observer`]. Called on worker
/// threads in the data path: an implementation only bumps atomics, never blocks.
pub trait ConnObserver: Send + Sync + std::fmt::Debug {
    /// `bytes` more were delivered in direction `dir` (not counted for a discarding
    /// direction).
    fn delivered(&self, dir: Direction, bytes: u64);
    /// The second address answered, `latency` after the connection was handed over.
    fn dialed(&self, latency: Duration);
    /// The second address could not be reached; the connection then closes.
    fn dial_failed(&self, error: &DialError);
    /// The connection ended after `lasted`.
    fn closed(&self, reason: &CloseReason, lasted: Duration);
    /// The service the connections belong to, for the close line's `service` field.
    fn service(&self) -> Option<&str> {
        None
    }
}
