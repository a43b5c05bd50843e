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
    /// `messages` more were delivered whole in direction `dir` (message relays only).
    fn messages(&self, _dir: Direction, _messages: u64) {}
    /// The second address answered, `latency` after the connection was handed over.
    fn dialed(&self, latency: Duration);
    /// The second address could not be reached; the connection then closes.
    fn dial_failed(&self, error: &DialError);
    /// The connection ended after `lasted`.
    fn closed(&self, reason: &CloseReason, lasted: Duration);
    /// The handshake `prelude` (`proxy`, ...) on the accepted socket failed for `reason` (a
    /// fixed word: `truncated`, `timeout`, ...); the connection then closes. Default: nothing.
    fn prelude_failed(&self, prelude: &'static str, reason: &'static str) {
        let _ = (prelude, reason);
    }
    /// The request a prelude read ended with `result`: its failure's reason, or after the
    /// dial `connected`, `denied` (the dial found no allowed address) or `dial_failed`.
    /// Told once per prelude that got so far; a failed prelude is also told to
    /// [`ConnObserver::prelude_failed`]. Default: nothing.
    fn prelude_ended(&self, prelude: &'static str, result: &'static str) {
        let _ = (prelude, result);
    }
    /// The service the connections belong to, for the close line's `service` field.
    fn service(&self) -> Option<&str> {
        None
    }
}
