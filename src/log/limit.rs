//! Rate limits for lines a peer can cause once per connection (refusals, failed dials,
//! resets): a token bucket per call site ([`limited!`](crate::limited)), whose excess is
//! counted and summed into one "suppressed N similar lines" line a second, so a flood of
//! failing peers cannot flood the log.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use super::format::render;
use super::level::Level;

/// Limiters that suppressed something, for the logger thread's summaries.
static SUPPRESSING: Mutex<Vec<&'static RateLimit>> = Mutex::new(Vec::new());

/// The summaries of what each limiter suppressed since the last call (the logger thread
/// writes them once a second).
pub(crate) fn take_summaries() -> Vec<String> {
    let style = super::format::style();
    let limits = SUPPRESSING.lock().unwrap_or_else(|e| e.into_inner());
    limits
        .iter()
        .filter_map(|l| {
            let n = l.suppressed.swap(0, Ordering::Relaxed);
            (n > 0).then(|| {
                render(
                    style,
                    l.level,
                    &format!("suppressed {n} similar lines: \"{}\" ({})", l.what, l.site),
                    &[],
                )
            })
        })
        .collect()
}

/// A token bucket for one call site: [`RateLimit::BURST`] lines at once, then
/// [`RateLimit::PER_SECOND`] a second; the rest are counted for the summary.
pub struct RateLimit {
    level: Level,
    what: &'static str,
    site: &'static str,
    bucket: Mutex<Option<(f64, Instant)>>,
    suppressed: AtomicU64,
    registered: AtomicBool,
}

impl RateLimit {
    pub const BURST: f64 = 20.0;
    pub const PER_SECOND: f64 = 5.0;

    pub const fn new(level: Level, what: &'static str, site: &'static str) -> RateLimit {
        RateLimit {
            level,
            what,
            site,
            bucket: Mutex::new(None),
            suppressed: AtomicU64::new(0),
            registered: AtomicBool::new(false),
        }
    }

    /// Whether one more line may be written now; if not, it is counted.
    pub fn admit(&'static self) -> bool {
        let now = Instant::now();
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, last) = bucket.get_or_insert((Self::BURST, now));
        *tokens =
            (*tokens + now.duration_since(*last).as_secs_f64() * Self::PER_SECOND).min(Self::BURST);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            return true;
        }
        drop(bucket);
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        if !self.registered.swap(true, Ordering::Relaxed) {
            SUPPRESSING
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(self);
        }
        false
    }

    /// Lines suppressed and not yet summarized.
    pub fn suppressed(&self) -> u64 {
        self.suppressed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_limit_lets_a_burst_through_and_counts_the_rest() {
        static LIMIT: RateLimit = RateLimit::new(Level::Warn, "test {x}", "here");
        let admitted = (0..1000).filter(|_| LIMIT.admit()).count();
        // The burst, plus what refilled while the loop ran.
        assert!(
            admitted >= RateLimit::BURST as usize && admitted < 1000,
            "{admitted}"
        );
        assert_eq!(LIMIT.suppressed(), 1000 - admitted as u64);
        let summaries = take_summaries();
        assert!(
            summaries.iter().any(|l| l.contains(&format!(
                "W suppressed {} similar lines: \"test {{x}}\" (here)",
                1000 - admitted
            ))),
            "{summaries:?}"
        );
        assert_eq!(LIMIT.suppressed(), 0);
    }
}
