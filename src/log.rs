//! Leveled diagnostics on standard error, socat style: errors always, and each `-d` adds a
//! level (warnings, notices, info, debug). Lines look like
//! `2026/11/25 15:04:05 vsplice[1234] W message`.
//!
//! No caller ever blocks on standard error: a line goes into a bounded queue that one logger
//! thread writes out, and a line that does not fit is dropped and counted (a stuck journald
//! or a pipe nobody reads would otherwise stop every worker at its next line, and with them
//! the main thread, which then never reads SIGTERM). When the writer gets through again it
//! says how many lines were lost; [`dropped_total`] feeds a metric. Lines a peer can cause
//! once per connection (refusals, failed dials, resets) go through [`limited!`](crate::limited), a token
//! bucket per call site whose excess is summed into one "suppressed N similar lines" line a
//! second. [`flush`] waits, for a bounded time, until what was queued is written: the exit
//! paths call it so that the last lines are not lost.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError, bounded};

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
    fn letter(self) -> char {
        match self {
            Level::Error => 'E',
            Level::Warn => 'W',
            Level::Notice => 'N',
            Level::Info => 'I',
            Level::Debug => 'D',
        }
    }
}

static VERBOSITY: AtomicU8 = AtomicU8::new(0);

/// Sets how many `-d` flags were given.
pub fn set_verbosity(d_count: u8) {
    VERBOSITY.store(d_count, Ordering::Relaxed);
}

pub fn enabled(level: Level) -> bool {
    (level as u8) <= VERBOSITY.load(Ordering::Relaxed)
}

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn timestamp() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}/{m:02}/{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Lines the queue holds: enough for any burst a healthy writer catches up with, and
/// bounded (lines are short) when the writer is stuck.
const QUEUE_LINES: usize = 4096;

/// How long [`flush`] waits by default for the writer to take what is queued.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

enum Message {
    Line(String),
    /// Answered once every line queued before it is written.
    Flush(Sender<()>),
}

/// A bounded queue of lines and the thread that writes them to a sink.
struct Queue {
    tx: Sender<Message>,
    /// Lines dropped since the writer last said so.
    dropped: AtomicU64,
    /// Lines dropped since the queue started.
    dropped_total: AtomicU64,
}

impl Queue {
    /// Starts the writer thread on `sink`; `summaries`: it also writes the rate limiters'
    /// summaries (the process's own queue only).
    fn start(
        capacity: usize,
        sink: impl Write + Send + 'static,
        summaries: bool,
    ) -> std::io::Result<Arc<Queue>> {
        let (tx, rx) = bounded(capacity);
        let queue = Arc::new(Queue {
            tx,
            dropped: AtomicU64::new(0),
            dropped_total: AtomicU64::new(0),
        });
        let q = queue.clone();
        std::thread::Builder::new()
            .name("vsplice-log".into())
            .spawn(move || q.write_out(rx, sink, summaries))?;
        Ok(queue)
    }

    /// Queues a line; never blocks. A line that does not fit is dropped and counted.
    fn push(&self, line: String) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.tx.try_send(Message::Line(line))
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            self.dropped_total.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (done_tx, done_rx) = bounded(1);
        if self
            .tx
            .send_timeout(Message::Flush(done_tx), timeout)
            .is_err()
        {
            return false;
        }
        done_rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }

    /// The writer thread: lines as they come, what was dropped once it gets through again,
    /// and (if `summaries`) once a second the summaries of suppressed lines.
    fn write_out(&self, rx: Receiver<Message>, mut sink: impl Write, summaries: bool) {
        // It may start before the stop signals are routed to their signalfd.
        let _ = crate::sys::signal::block_all_in_this_thread();
        let mut next_summary = Instant::now() + SUMMARY_EVERY;
        loop {
            let wait = next_summary.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(Message::Line(line)) => {
                    let _ = sink.write_all(line.as_bytes());
                }
                Ok(Message::Flush(done)) => {
                    let _ = done.send(());
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            // The writer got through again: say what was lost meanwhile.
            let dropped = self.dropped.swap(0, Ordering::Relaxed);
            if dropped > 0 {
                let note = format_line(
                    Level::Warn,
                    format_args!("{dropped} log lines dropped: standard error did not keep up"),
                );
                let _ = sink.write_all(note.as_bytes());
            }
            if Instant::now() >= next_summary {
                if summaries {
                    for line in take_summaries() {
                        let _ = sink.write_all(line.as_bytes());
                    }
                }
                next_summary = Instant::now() + SUMMARY_EVERY;
            }
        }
    }
}

static QUEUE: OnceLock<Option<Arc<Queue>>> = OnceLock::new();

/// Lines dropped because standard error did not keep up, since the process started.
pub fn dropped_total() -> u64 {
    match QUEUE.get() {
        Some(Some(q)) => q.dropped_total.load(Ordering::Relaxed),
        _ => 0,
    }
}

/// The process's queue, its logger thread started on first use; `None` if the thread could
/// not start (then callers write their lines themselves, as before).
fn queue() -> Option<&'static Arc<Queue>> {
    QUEUE
        .get_or_init(|| Queue::start(QUEUE_LINES, std::io::stderr(), true).ok())
        .as_ref()
}

fn format_line(level: Level, args: std::fmt::Arguments<'_>) -> String {
    format!(
        "{} vsplice[{}] {} {}\n",
        timestamp(),
        std::process::id(),
        level.letter(),
        args
    )
}

/// Queues one finished line (with its newline); never blocks.
pub fn line(line: String) {
    match queue() {
        Some(q) => q.push(line),
        None => {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }
}

/// Writes one line if `level` is enabled.
pub fn write(level: Level, args: std::fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    line(format_line(level, args));
}

/// Waits until every line queued so far is written, or `timeout` passed (standard error
/// stuck); returns whether they were. Nothing to wait for when nothing was ever logged.
pub fn flush(timeout: Duration) -> bool {
    match QUEUE.get() {
        Some(Some(q)) => q.flush(timeout),
        _ => true,
    }
}

/// A last message printed at exit (the error that ends the process): after what is queued,
/// and written by the logger thread if it runs, so a stuck standard error cannot hold the
/// exit for longer than [`FLUSH_TIMEOUT`].
pub fn final_message(text: &str) {
    if let Some(Some(q)) = QUEUE.get() {
        q.push(format!("{text}\n"));
        q.flush(FLUSH_TIMEOUT);
    } else {
        // Nothing runs yet (usage errors): the plain, synchronous write.
        let _ = std::io::stderr().write_all(format!("{text}\n").as_bytes());
    }
}

/// How often summaries of suppressed lines are written.
const SUMMARY_EVERY: Duration = Duration::from_secs(1);

/// Limiters that suppressed something, for the logger thread's summaries.
static SUPPRESSING: Mutex<Vec<&'static RateLimit>> = Mutex::new(Vec::new());

fn take_summaries() -> Vec<String> {
    let limits = SUPPRESSING.lock().unwrap_or_else(|e| e.into_inner());
    limits
        .iter()
        .filter_map(|l| {
            let n = l.suppressed.swap(0, Ordering::Relaxed);
            (n > 0).then(|| {
                format_line(
                    l.level,
                    format_args!("suppressed {n} similar lines: \"{}\" ({})", l.what, l.site),
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

/// A line a peer can cause once per connection (`limited!(Warn, "...", args)`): written
/// through its call site's [`RateLimit`].
#[macro_export]
macro_rules! limited {
    ($level:ident, $fmt:literal $($rest:tt)*) => {{
        static LIMIT: $crate::log::RateLimit = $crate::log::RateLimit::new(
            $crate::log::Level::$level,
            $fmt,
            concat!(file!(), ":", line!()),
        );
        if $crate::log::enabled($crate::log::Level::$level) && LIMIT.admit() {
            $crate::log::write($crate::log::Level::$level, format_args!($fmt $($rest)*));
        }
    }};
}

#[macro_export]
macro_rules! error {
    ($($t:tt)*) => { $crate::log::write($crate::log::Level::Error, format_args!($($t)*)) };
}
#[macro_export]
macro_rules! warn {
    ($($t:tt)*) => { $crate::log::write($crate::log::Level::Warn, format_args!($($t)*)) };
}
#[macro_export]
macro_rules! notice {
    ($($t:tt)*) => { $crate::log::write($crate::log::Level::Notice, format_args!($($t)*)) };
}
#[macro_export]
macro_rules! info {
    ($($t:tt)*) => { $crate::log::write($crate::log::Level::Info, format_args!($($t)*)) };
}
#[macro_export]
macro_rules! debug {
    ($($t:tt)*) => { $crate::log::write($crate::log::Level::Debug, format_args!($($t)*)) };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that takes nothing until `open` says so, then keeps what it gets.
    struct Gate {
        open: Arc<(Mutex<bool>, std::sync::Condvar)>,
        got: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (lock, cv) = &*self.open;
            let mut open = lock.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            self.got.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_writer_drops_and_counts_what_does_not_fit_and_says_so_when_it_recovers() {
        let open = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = Gate {
            open: open.clone(),
            got: got.clone(),
        };
        let q = Queue::start(16, sink, false).unwrap();
        // Pushing never waits on the stuck sink (try_send).
        for i in 0..1000 {
            q.push(format!("line {i}\n"));
        }
        assert!(!q.flush(Duration::from_millis(50)), "the sink is stuck");
        let dropped = q.dropped_total.load(Ordering::Relaxed);
        // At most the queue and the line in the writer's hands got through.
        assert!(dropped >= 1000 - 17, "{dropped}");
        *open.0.lock().unwrap() = true;
        open.1.notify_all();
        assert!(q.flush(Duration::from_secs(60)));
        let text = String::from_utf8(got.lock().unwrap().clone()).unwrap();
        assert!(text.starts_with("line 0\n"), "{text}");
        assert!(
            text.contains(&format!("W {dropped} log lines dropped")),
            "{text}"
        );
    }

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

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_417), (2025, 11, 25));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
