//! The bounded queue between callers and standard error. No caller ever blocks on it: a
//! line goes into a bounded queue that one logger thread writes out, and a line that does not
//! fit is dropped and counted (a stuck journald or a pipe nobody reads would otherwise stop
//! every worker at its next line, and with them the main thread, which then never reads
//! SIGTERM). When the writer gets through again it says how many lines were lost. The
//! `tracing` subscriber writes into it through [`ToQueue`], its `MakeWriter`.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError, bounded};

use super::format::{Format, Style, render, style};
use super::level::Level;
use super::limit::take_summaries;

/// How often summaries of suppressed lines are written.
const SUMMARY_EVERY: Duration = Duration::from_secs(1);

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
                let note = render(
                    style(),
                    Level::Warn,
                    &format!("{dropped} log lines dropped: standard error did not keep up"),
                    &[],
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

/// Queues one finished line (with its newline); never blocks.
pub fn line(line: String) {
    match queue() {
        Some(q) => q.push(line),
        None => {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }
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
/// exit for longer than [`FLUSH_TIMEOUT`]. In text format it is the bare `text` (as socat
/// prints its fatal errors); as JSON or into the journal, an error line like any other.
pub fn final_message(text: &str) {
    let style = style();
    let line = if style
        == (Style {
            format: Format::Text,
            journal: false,
        }) {
        format!("{text}\n")
    } else {
        render(style, Level::Error, text, &[])
    };
    if let Some(Some(q)) = QUEUE.get() {
        q.push(line);
        q.flush(FLUSH_TIMEOUT);
    } else {
        // Nothing runs yet (usage errors): the plain, synchronous write.
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
}

/// The subscriber's `MakeWriter`: each formatted event (one `write` of one whole line)
/// goes into the queue.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ToQueue;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for ToQueue {
    type Writer = ToQueue;

    fn make_writer(&'a self) -> ToQueue {
        ToQueue
    }
}

impl Write for ToQueue {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        line(String::from_utf8_lossy(buf).into_owned());
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

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
}
