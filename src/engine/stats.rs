//! What a closing connection leaves behind: its log line, its `-S` statistics line, and its
//! share of the process-wide counters (served, failed, bytes per direction); and
//! [`ConnObserver`](super::observer::ConnObserver), through which a relay's owner hears of each connection as it goes.

use std::sync::atomic::Ordering;

use super::close::CloseReason;
use super::conn::Conn;
use super::direction::PerDir;
use super::shared::Shared;
use crate::{error, limited, notice};

/// Logs the end of `conn` and counts it.
pub(super) fn record_close(
    conn: &Conn,
    reason: &CloseReason,
    delivered: PerDir<u64>,
    shared: &Shared,
) {
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
    // Message relays count messages beside bytes.
    let messages = match &conn.phase {
        super::conn::Phase::Closing { relaying, .. } => relaying
            .lanes
            .map(|lane| lane.as_ref().and_then(super::lane::Lane::messages)),
        _ => PerDir::default(),
    };
    let messages = match messages.as_pair() {
        (None, None) => String::new(),
        (f, b) => format!(" ({} + {} messages)", f.unwrap_or(0), b.unwrap_or(0)),
    };
    // The operator's fields (JSON lines carry them; the text line says the same in words).
    let service = options.observer.as_ref().and_then(|o| o.service());
    let peer = conn.first.label();
    let upstream = conn.second.as_ref().map(|s| s.label());
    if reason.is_failure() {
        shared.failed.fetch_add(1, Ordering::Relaxed);
        if options.single_connection {
            error!(
                service,
                conn_id = id,
                peer,
                upstream,
                bytes_first_to_second = forward,
                bytes_second_to_first = backward,
                reason = %reason,
                duration_s = secs,
                "{reason}"
            );
        } else {
            // A peer can cause one per connection (failed dials, resets): rate-limited.
            limited!(
                Warn,
                fields(
                    service,
                    conn_id = id,
                    peer,
                    upstream,
                    bytes_first_to_second = forward,
                    bytes_second_to_first = backward,
                    reason = %reason,
                    duration_s = secs
                ),
                "conn {id} ({label}) closed: {reason}"
            );
        }
    } else {
        shared.served.fetch_add(1, Ordering::Relaxed);
        notice!(
            service,
            conn_id = id,
            peer,
            upstream,
            bytes_first_to_second = forward,
            bytes_second_to_first = backward,
            reason = %reason,
            duration_s = secs,
            "conn {id} ({label}) closed: {reason}; {forward} + {backward} bytes{messages} in {secs:.3} s"
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
