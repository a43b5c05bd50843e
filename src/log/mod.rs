//! Leveled diagnostics on standard error, socat style: errors always, and each `-d` adds a
//! level (warnings, notices, info, debug). The macros ([`error!`](macro@crate::error),
//! [`warn!`](macro@crate::warn), [`notice!`](macro@crate::notice), [`info!`](macro@crate::info),
//! [`debug!`](macro@crate::debug), [`limited!`](crate::limited)) emit `tracing` events, with
//! structured fields where an operator needs them (`notice!(conn_id = id, "...")`); one
//! `tracing-subscriber` formatter (`format`) writes them as socat's text lines
//! (`2026/11/25 15:04:05 vsplice[1234] W message`), as JSON objects (`--log-format json`), and
//! with sd-daemon's `<N>` priority prefix when standard error is the journal.
//!
//! The `-d` threshold is checked by the macros before an event is built (`level`: vsplice's
//! five levels and how they map onto `tracing`'s). Formatted lines go through a bounded queue
//! that one logger thread writes (`queue`): no caller ever blocks on standard error, a line
//! that does not fit is dropped and counted ([`dropped_total`] feeds a metric), and [`flush`]
//! on the exit paths waits a bounded time for the last lines. Lines a peer can cause once per
//! connection go through [`limited!`](crate::limited) (`limit`). The subscriber is installed
//! on first use, so library callers that never parsed a command line still get their errors.

pub(crate) mod format;
pub(crate) mod level;
pub(crate) mod limit;
pub(crate) mod queue;

use std::sync::OnceLock;

pub use format::{Format, set_format};
pub use level::{Level, enabled, set_verbosity};
pub use limit::RateLimit;
pub use queue::{FLUSH_TIMEOUT, dropped_total, final_message, flush, line};
#[doc(hidden)]
pub use tracing;

/// Installs the process's `tracing` subscriber (once; later calls return at once). A
/// subscriber someone else installed first (a test harness) is left in place.
pub fn install() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .event_format(format::Lines)
            .with_writer(queue::ToQueue)
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
}

/// One event at vsplice level `$level` (an identifier of [`Level`]): the threshold first,
/// then the subscriber, then `tracing::event!` with the caller's fields and message.
#[doc(hidden)]
#[macro_export]
macro_rules! __log_event {
    ($level:ident, $($t:tt)*) => {
        if $crate::log::enabled($crate::log::Level::$level) {
            $crate::log::install();
            $crate::log::tracing::event!(
                target: "vsplice",
                $crate::log::Level::$level.to_tracing(),
                $($t)*
            );
        }
    };
}

/// A line a peer can cause once per connection (`limited!(Warn, "...", args)`, or with
/// fields: `limited!(Warn, fields(conn_id = id), "...", args)`): written through its call
/// site's [`RateLimit`].
#[macro_export]
macro_rules! limited {
    ($level:ident, fields($($f:tt)*), $fmt:literal $($rest:tt)*) => {{
        static LIMIT: $crate::log::RateLimit = $crate::log::RateLimit::new(
            $crate::log::Level::$level,
            $fmt,
            concat!(file!(), ":", line!()),
        );
        if $crate::log::enabled($crate::log::Level::$level) && LIMIT.admit() {
            $crate::__log_event!($level, $($f)*, $fmt $($rest)*);
        }
    }};
    ($level:ident, $fmt:literal $($rest:tt)*) => {{
        static LIMIT: $crate::log::RateLimit = $crate::log::RateLimit::new(
            $crate::log::Level::$level,
            $fmt,
            concat!(file!(), ":", line!()),
        );
        if $crate::log::enabled($crate::log::Level::$level) && LIMIT.admit() {
            $crate::__log_event!($level, $fmt $($rest)*);
        }
    }};
}

#[macro_export]
macro_rules! error {
    ($($t:tt)*) => { $crate::__log_event!(Error, $($t)*) };
}
#[macro_export]
macro_rules! warn {
    ($($t:tt)*) => { $crate::__log_event!(Warn, $($t)*) };
}
#[macro_export]
macro_rules! notice {
    ($($t:tt)*) => { $crate::__log_event!(Notice, $($t)*) };
}
#[macro_export]
macro_rules! info {
    ($($t:tt)*) => { $crate::__log_event!(Info, $($t)*) };
}
#[macro_export]
macro_rules! debug {
    ($($t:tt)*) => { $crate::__log_event!(Debug, $($t)*) };
}
