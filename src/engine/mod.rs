//! The relay engine: N worker threads, each pinned to a core and owning one io_uring, that
//! accept connections themselves (`accept`: an ACCEPT on every worker's ring, on the
//! listeners given by `Engine::listen`) or serve those handed to them ([`Engine::submit`]).
//!
//! A connection stays on the worker that accepted it, or is handed over once, through a
//! crossbeam channel plus an eventfd the worker's ring polls; it never migrates. Inside a
//! worker every connection is a `conn::Conn` in a `conn::Phase`, with two directions,
//! each a pure state machine (`flow::Flow`, or `recv::RecvFlow` on the buffer-ring
//! paths) driven by one of the data paths ([`Mode`], one file each under `lane/`):
//! non-blocking splice(2) after readiness, io_uring SPLICE after readiness, io_uring reads
//! and writes through a registered buffer (the fallback where splice cannot work), or
//! multishot receive into a provided-buffer ring followed by writes or SEND_ZC. Readiness
//! is always waited for with io_uring POLL_ADD, so an idle connection costs no kernel
//! thread. `rcvbudget` bounds the memory the relay's TCP receive queues hold when many
//! connections are busy.
//!
//! Map: `accept` (listeners the workers accept on, `max-children` slots), `ring` (the
//! io_uring, submission, wait, reap), `registry` (what is registered with it, as owned
//! tokens), `conn` (a connection and its phases), `lane/` (the data paths), `timers`,
//! `park` and `rcvsweep` (the worker's two policies), `stats` (close logging and counters),
//! `worker` (the loop that ties them together).

pub(crate) mod accept;
mod cap;
mod clock;
mod close;
mod config;
pub(crate) mod conn;
mod direction;
mod ends;
mod inbox;
mod job;
pub(crate) mod lane;
mod observer;
mod park;
pub(crate) mod rcvbudget;
mod rcvsweep;
mod registry;
mod ring;
mod shared;
mod stats;
#[cfg(test)]
mod testing;
mod timers;
pub(crate) mod token;
mod worker;

pub(crate) use close::CloseReason;
pub(crate) use config::{DEFAULT_PIPE_SIZE, pin_policy};
pub use config::{EngineConfig, Mode, RelayOptions};
pub(crate) use direction::Direction;
pub(crate) use job::prelude_for;
pub use job::{Job, Second};
pub use lane::flow::FillPolicy;
pub use observer::ConnObserver;
pub(crate) use shared::Shared;

use inbox::Message;

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::sys::eventfd::EventFd;

struct WorkerHandle {
    jobs: Sender<Message>,
    wake: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
    /// Jobs sent since the last wake-up.
    unwoken: bool,
}

/// The running workers.
pub struct Engine {
    workers: Vec<WorkerHandle>,
    next: usize,
    shared: Arc<Shared>,
    /// The options of jobs submitted without their own (from the engine's configuration).
    options: Arc<RelayOptions>,
}

impl Engine {
    /// Starts `threads` workers. Fails if a worker cannot set up its io_uring.
    pub fn start(threads: usize, config: Arc<EngineConfig>) -> io::Result<Engine> {
        let shared = Arc::new(Shared::new()?);
        let cores = if config.pin_workers {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut workers = Vec::with_capacity(threads);
        for index in 0..threads.max(1) {
            let (tx, rx): (Sender<Message>, Receiver<Message>) = crossbeam_channel::unbounded();
            let wake = Arc::new(EventFd::new()?);
            let (ready_tx, ready_rx) = crossbeam_channel::bounded::<io::Result<()>>(1);
            let core = (!cores.is_empty()).then(|| cores[index % cores.len()]);
            let thread = {
                let wake = wake.clone();
                let shared = shared.clone();
                let config = config.clone();
                std::thread::Builder::new()
                    .name(format!("vsplice-w{index}"))
                    .spawn(move || {
                        if let Some(core) = core {
                            core_affinity::set_for_current(core);
                        }
                        match worker::Worker::new(index, rx, wake, shared, config) {
                            Ok(w) => {
                                let _ = ready_tx.send(Ok(()));
                                w.run();
                            }
                            Err(e) => {
                                let _ = ready_tx.send(Err(e));
                            }
                        }
                    })?
            };
            let ready = ready_rx
                .recv()
                .unwrap_or_else(|_| Err(io::Error::other("worker thread died at start")));
            workers.push(WorkerHandle {
                jobs: tx,
                wake,
                thread: Some(thread),
                unwoken: false,
            });
            if let Err(e) = ready {
                let mut engine = Engine {
                    workers,
                    next: 0,
                    shared,
                    options: Arc::new(config.relay.clone()),
                };
                engine.stop();
                return Err(e);
            }
        }
        Ok(Engine {
            workers,
            next: 0,
            shared,
            options: Arc::new(config.relay.clone()),
        })
    }

    /// Hands a connection to the next worker (round robin) and wakes it.
    pub fn submit(&mut self, job: Job) {
        self.queue(job);
        self.wake_all();
    }

    /// Hands a connection to the next worker without waking it yet: a batch of accepted
    /// connections costs one wake-up per worker, given by [`Engine::wake_all`].
    pub(crate) fn queue(&mut self, job: Job) {
        let options = self.options.clone();
        self.queue_with(job, options);
    }

    /// As [`Engine::queue`], for a connection of a relay with its own options.
    pub(crate) fn queue_with(&mut self, job: Job, options: Arc<RelayOptions>) {
        self.shared.live.fetch_add(1, Ordering::SeqCst);
        let index = self.next % self.workers.len();
        self.next = self.next.wrapping_add(1);
        let worker = &mut self.workers[index];
        if worker
            .jobs
            .send(Message::Relay(Box::new(job), options))
            .is_err()
        {
            // The worker is gone (it only exits when stopped); the job is dropped with it.
            self.shared.live.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        worker.unwoken = true;
    }

    /// Makes every worker accept on `group`'s listener for itself, until
    /// [`Engine::unlisten`]. Fails if the group was started before.
    pub(crate) fn listen(&self, group: Arc<accept::AcceptGroup>) -> io::Result<()> {
        let wakes = self.workers.iter().map(|w| w.wake.clone()).collect();
        if !group.attach(wakes) {
            return Err(io::Error::other("an accept group starts once"));
        }
        for w in &self.workers {
            if w.jobs.send(Message::Listen(group.clone())).is_err() {
                group.detach();
            }
            w.wake.notify();
        }
        Ok(())
    }

    /// Stops accepting on `group`: every worker cancels its ACCEPT there, and this returns
    /// once all of them are back, so closing the listener afterwards is safe and nothing
    /// more is accepted. Connections already accepted go on.
    pub(crate) fn unlisten(&self, group: &Arc<accept::AcceptGroup>) {
        for w in &self.workers {
            if w.jobs.send(Message::Unlisten(group.clone())).is_err() {
                // The worker is gone and holds nothing any more. (It detached the group
                // when it stopped, or never got it: a Listen it never read.)
                continue;
            }
            w.wake.notify();
        }
        group.wait_detached();
    }

    /// Wakes every worker that was handed work since its last wake-up.
    pub(crate) fn wake_all(&mut self) {
        for w in &mut self.workers {
            if std::mem::take(&mut w.unwoken) {
                w.wake.notify();
            }
        }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Lets open connections finish: returns once none is left (true), when `timeout` has
    /// passed, or when `interrupt` reports a second request to stop. `interrupt` runs whenever
    /// `interrupt_fd` is readable or a connection closes, and at least once a second (so a
    /// caller can feed a watchdog there). What is still open afterwards is cut by
    /// [`Engine::stop`].
    pub(crate) fn drain(
        &self,
        timeout: Duration,
        interrupt_fd: BorrowedFd<'_>,
        mut interrupt: impl FnMut() -> Option<i32>,
    ) -> bool {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let shared = &self.shared;
        shared.wake_on_close.store(true, Ordering::SeqCst);
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let live = shared.live.load(Ordering::SeqCst);
            if live == 0 {
                return true;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                crate::notice!("drain timeout: cutting {live} connections");
                return false;
            }
            let mut fds = [
                PollFd::new(interrupt_fd, PollFlags::POLLIN),
                PollFd::new(shared.closed.as_fd(), PollFlags::POLLIN),
            ];
            let wait = PollTimeout::try_from(left.as_millis().clamp(1, 1_000) as i32)
                .unwrap_or(PollTimeout::MAX);
            let _ = poll(&mut fds, wait);
            if let Some(signo) = interrupt() {
                crate::notice!("signal {signo} while draining: cutting {live} connections");
                return false;
            }
            shared.closed.drain();
        }
    }

    /// Closes, with resets, every connection relaying with `options` (compared by identity:
    /// one service's connections), on every worker; returns at once.
    pub(crate) fn cut(&self, options: &Arc<RelayOptions>) {
        for w in &self.workers {
            if w.jobs.send(Message::Cut(options.clone())).is_ok() {
                w.wake.notify();
            }
        }
    }

    /// Closes every connection (those that had not ended get a reset) and joins the workers.
    pub fn stop(&mut self) {
        for w in &self.workers {
            let _ = w.jobs.send(Message::Stop);
            w.wake.notify();
        }
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}
