//! Severities and the `-d` threshold. vsplice keeps socat's five levels (error, warning,
//! notice, info, debug); `tracing` has five too but no notice, so they map in order:
//! error → ERROR, warning → WARN, notice → INFO, info → DEBUG, debug → TRACE. Formatters map
//! back, so a line always shows vsplice's own name (`N`, `"notice"`, `<5>`), never tracing's.
//! The threshold is one atomic the macros read before building an event: a disabled line
//! costs a load and a compare.

use std::sync::atomic::{AtomicU8, Ordering};

/// Message severities, most severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error = 0,
    Warn = 1,
    Notice = 2,
    Info = 3,
    Debug = 4,
}

impl Level {
    /// The letter of the text format (`2026/11/25 15:04:05 vsplice[1234] W message`).
    pub fn letter(self) -> char {
        match self {
            Level::Error => 'E',
            Level::Warn => 'W',
            Level::Notice => 'N',
            Level::Info => 'I',
            Level::Debug => 'D',
        }
    }

    /// The name in JSON lines (syslog's).
    pub fn name(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warning",
            Level::Notice => "notice",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }

    /// The syslog priority, as sd-daemon's `<N>` prefix gives it to journald.
    pub fn priority(self) -> u8 {
        match self {
            Level::Error => 3,
            Level::Warn => 4,
            Level::Notice => 5,
            Level::Info => 6,
            Level::Debug => 7,
        }
    }

    /// The `tracing` level an event of this severity carries (see the module's mapping).
    pub const fn to_tracing(self) -> tracing::Level {
        match self {
            Level::Error => tracing::Level::ERROR,
            Level::Warn => tracing::Level::WARN,
            Level::Notice => tracing::Level::INFO,
            Level::Info => tracing::Level::DEBUG,
            Level::Debug => tracing::Level::TRACE,
        }
    }

    /// The inverse of [`Level::to_tracing`].
    pub fn from_tracing(level: tracing::Level) -> Level {
        match level {
            tracing::Level::ERROR => Level::Error,
            tracing::Level::WARN => Level::Warn,
            tracing::Level::INFO => Level::Notice,
            tracing::Level::DEBUG => Level::Info,
            _ => Level::Debug,
        }
    }
}

static VERBOSITY: AtomicU8 = AtomicU8::new(0);

/// Sets how many `-d` flags were given.
pub fn set_verbosity(d_count: u8) {
    VERBOSITY.store(d_count, Ordering::Relaxed);
}

/// Whether lines of `level` are written at the current `-d` count.
pub fn enabled(level: Level) -> bool {
    (level as u8) <= VERBOSITY.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_level_survives_the_round_trip_through_tracing() {
        for level in [
            Level::Error,
            Level::Warn,
            Level::Notice,
            Level::Info,
            Level::Debug,
        ] {
            assert_eq!(Level::from_tracing(level.to_tracing()), level);
        }
    }
}
