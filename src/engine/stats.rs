//! What a closing connection leaves behind: its log line, its `-S` statistics line, and its
//! share of the process-wide counters (served, failed, bytes per direction); and
//! [`ConnObserver`], through which a relay's owner hears of each connection as it goes.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Shared;
use super::conn::{CloseReason, Conn, PerDir};
use super::direction::Direction;
use crate::net::dial::DialError;
use crate::{error, limited, notice};

/// What the owner of a relay learns about each of its connections as it happens (service
/// mode's per-service metrics), through [`super::RelayOptions::observer`]. Called on worker
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
}

/// Logs the end of `conn` and counts it.
pub fn record_close(conn: &Conn, reason: &CloseReason, delivered: PerDir<u64>, shared: &Shared) {
    let id = conn.id;
    let options = &conn.options;
    let (&forward, &backward) = delivered.as_pair();
    let secs = conn.started.elapsed().as_secs_f64();
    let wants_label = options.stats
        || crate::log::enabled(crate::log::Level::Notice)
        || (reason.is_failure() && crate::log::enabled(crate::log::Level::Warn));
    let label = if wants_label {
        conn.label()
    } else {
        String::new()
    };
    if reason.is_failure() {
        shared.failed.fetch_add(1, Ordering::Relaxed);
        if options.single_connection {
            error!("{reason}");
        } else {
            // A peer can cause one per connection (failed dials, resets): rate-limited.
            limited!(Warn, "conn {id} ({label}) closed: {reason}");
        }
    } else {
        shared.served.fetch_add(1, Ordering::Relaxed);
        notice!(
            "conn {id} ({label}) closed: {reason}; {forward} + {backward} bytes in {secs:.3} s"
        );
    }
    shared.bytes[0].fetch_add(forward, Ordering::Relaxed);
    shared.bytes[1].fetch_add(backward, Ordering::Relaxed);
    if let Some(observer) = &options.observer {
        observer.closed(reason, conn.started.elapsed());
    }
    if options.stats {
        // Through the log queue: a worker never blocks on standard error.
        crate::log::line(format!(
            "vsplice: conn {id} ({label}): {forward} bytes first->second, {backward} bytes second->first, {secs:.3} s, {reason}\n"
        ));
    }
}
