//! `UDP-LISTEN` under `serve`: one thread per such service turns each new sender into a
//! session ([`crate::net::udp`]: a socket connected to that sender) and hands it to the
//! shared engine with the service it serves now.
//!
//! The workers accept on a stream listener with an ACCEPT on their own rings; a UDP socket
//! has nothing to accept (no accept(2) for datagrams, and making a session takes a bind and a
//! connect), so this thread plays that part, as the relay command's main thread does for a
//! `UDP-LISTEN` of its own. It waits on the socket and a stop eventfd, admits each session
//! through the same allow list, counters and job as an accepted connection (its
//! [`SessionOwner`], the service's acceptor), and reads nothing while the service has `max-children`
//! sessions open (datagrams wait in the socket's receive queue meanwhile, as clients wait in a
//! backlog). Stopping it (a reload that moves the address, an upgrade, a stop) first turns the
//! datagrams it already took into sessions, so none of them is dropped on the way; the socket
//! itself stays with the acceptor, which hands it on.

use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::engine::{Engine, Job, RelayOptions};
use crate::net::open::Listener;
use crate::net::udp::Session;
use crate::sys::eventfd::EventFd;
use crate::warn;

/// How often a service at its `max-children` looks again whether a session ended (the
/// observer counts closes without telling anyone).
const FULL_RECHECK: Duration = Duration::from_millis(10);

/// What the sessions are made for: the service as it is now (a reload may switch it).
pub(crate) trait SessionOwner: Send + Sync {
    /// The service's name, for the log.
    fn name(&self) -> String;
    /// Whether the service has as many sessions open as its `max-children` allows.
    fn full(&self) -> bool;
    /// Admits a new session (allow list, counters) as a job with its relay's options;
    /// `None`: refused.
    fn admit(&self, session: Session) -> Option<(Job, Arc<RelayOptions>)>;
}

/// Session errors one wake-up tolerates before it waits for the next datagram.
const MAX_ERRORS_IN_A_ROW: usize = 16;

/// The thread that makes one `UDP-LISTEN` service's sessions.
pub(crate) struct SessionMaker {
    stop: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl SessionMaker {
    /// Starts making sessions from what `listener` receives, for the service `current`
    /// names at each session, on `engine`.
    pub(crate) fn start(
        listener: Listener,
        owner: Box<dyn SessionOwner>,
        engine: Arc<Mutex<Engine>>,
    ) -> std::io::Result<SessionMaker> {
        let stop = Arc::new(EventFd::new()?);
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("vsplice-udp".into())
            .spawn(move || run(&listener, &stopped, &*owner, &engine))?;
        Ok(SessionMaker {
            stop,
            thread: Some(thread),
        })
    }

    /// Makes the sessions of what was already taken, then stops; returns once the thread is
    /// gone (no session of this service is made afterwards).
    pub(crate) fn stop(mut self) {
        self.join();
    }

    fn join(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.stop.notify();
            if thread.join().is_err() {
                warn!("a UDP session thread panicked");
            }
        }
    }
}

impl Drop for SessionMaker {
    fn drop(&mut self) {
        self.join();
    }
}

fn run(listener: &Listener, stop: &EventFd, owner: &dyn SessionOwner, engine: &Mutex<Engine>) {
    loop {
        let at_limit = owner.full();
        let mut fds = vec![PollFd::new(stop.as_fd(), PollFlags::POLLIN)];
        if !at_limit {
            fds.push(PollFd::new(listener.socket().as_fd(), PollFlags::POLLIN));
        }
        let timeout = match at_limit {
            true => {
                PollTimeout::try_from(FULL_RECHECK.as_millis() as i32).unwrap_or(PollTimeout::MAX)
            }
            false => PollTimeout::NONE,
        };
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => {
                warn!("UDP sessions: poll: {e}");
                std::thread::sleep(FULL_RECHECK);
            }
        }
        let stopping = fds[0].revents().is_some_and(|r| !r.is_empty());
        drop(fds);
        if stopping {
            break;
        }
        make_sessions(listener, owner, engine, Listener::next_session);
    }
    if make_sessions(listener, owner, engine, Listener::next_held_session) {
        warn!(
            "{}: stopped at max-children with datagrams of new senders held: dropped",
            owner.name()
        );
    }
}

/// Makes sessions with `next` until it has none or the service is at its `max-children`;
/// true if it stopped at the limit.
fn make_sessions(
    listener: &Listener,
    owner: &dyn SessionOwner,
    engine: &Mutex<Engine>,
    next: fn(&Listener) -> std::io::Result<Option<Session>>,
) -> bool {
    let (mut queued, mut errors) = (false, 0);
    let at_limit = loop {
        if owner.full() {
            break true;
        }
        match next(listener) {
            Ok(Some(session)) => {
                let Some((job, options)) = owner.admit(session) else {
                    continue;
                };
                lock(engine).queue_with(job, options);
                queued = true;
            }
            Ok(None) => break false,
            Err(e) => {
                crate::limited!(
                    Warn,
                    "{}: making a UDP session: {e}; its sender's datagram is dropped",
                    owner.name()
                );
                // A fault that lasts (no descriptors left) must not spin here: the next
                // datagram tries again.
                errors += 1;
                if errors >= MAX_ERRORS_IN_A_ROW {
                    break false;
                }
            }
        }
    };
    if queued {
        lock(engine).wake_all();
    }
    at_limit
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
