//! The relay command: open the first address, hand each of its connections to the engine
//! together with the second address, and stop cleanly on SIGINT, SIGTERM or any other stop
//! signal (`sys::signal`).
//!
//! A forking listener is accepted on by every worker for itself ([`crate::engine::accept`]:
//! an ACCEPT on each worker's ring; with `max-children` one only while a slot is free, so
//! excess clients wait in the backlog instead of being refused). The main thread only waits
//! for a stop signal. A listener that serves one connection (no `fork`) is accepted on here:
//! poll(2) on the listener and the stop signalfd, then the connection goes to the worker.
//! A stop signal first stops the workers accepting (their ACCEPTs cancelled and returned),
//! closes the listener and drains: open connections may finish for `--drain-timeout`; then,
//! or at a second signal, the engine cuts the rest with resets.

use std::os::fd::AsFd;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::addr::{Address, Kind};
use crate::engine::accept::{AcceptGroup, AcceptStrategy, Admit};
use crate::engine::{Engine, EngineConfig, Job, RelayOptions, Second, Shared, prelude_for};
use crate::error::{Error, Result};
use crate::net::admit::admit;
use crate::net::blocking::dial_blocking;
use crate::net::endpoint::Endpoint;
use crate::net::open::Listener;
use crate::sys::limits;
use crate::sys::signal::{StopSignals, ignore_sigpipe};
use crate::sys::socket::{SockAddr, Socket};
use crate::{notice, warn};

/// A relay ready to run: both addresses checked, the engine configured.
#[derive(Debug, Clone)]
pub struct RelayPlan {
    pub first: Address,
    pub second: Address,
    pub threads: usize,
    pub engine: EngineConfig,
    /// How long open connections may finish after a stop signal (`--drain-timeout`).
    pub drain_timeout: Duration,
}

/// Descriptors wanted: two sockets per connection plus pipes in flight and some slack.
fn wanted_descriptors(first: &Address) -> u64 {
    match first.options.max_children {
        Some(n) => (n as u64) * 4 + 1024,
        None if first.options.fork => 1 << 20,
        None => 1024,
    }
}

pub(crate) fn run(plan: RelayPlan) -> Result<ExitCode> {
    ignore_sigpipe().map_err(|e| Error::io("ignoring SIGPIPE", e))?;
    let signals = StopSignals::install().map_err(|e| Error::io("installing signal handling", e))?;
    match limits::raise_nofile(wanted_descriptors(&plan.first)) {
        Ok(change) if change.after != change.before => {
            crate::info!(
                "descriptor limit raised from {} to {}",
                change.before,
                change.after
            )
        }
        Ok(_) => {}
        Err(e) => warn!("cannot raise the descriptor limit: {e}"),
    }
    let max_pipe = limits::pipe_max_size();
    if plan.engine.relay.pipe_size > max_pipe && !nix::unistd::geteuid().is_root() {
        warn!(
            "-b {} is above fs.pipe-max-size ({max_pipe}); pipes keep the kernel's size",
            plan.engine.relay.pipe_size
        );
    }
    let second = Arc::new(plan.second.clone());
    if plan.first.is_listener() {
        // UDP sessions are made on this thread (net::udp), not accepted by the workers.
        let strategy = match plan.first.options.fork {
            true if !matches!(plan.first.kind, Kind::UdpListen { .. }) => {
                AcceptStrategy::from_env()
            }
            _ => AcceptStrategy::Thread,
        };
        let reuseport = strategy == AcceptStrategy::ReusePort
            && matches!(plan.first.kind, Kind::TcpListen { .. });
        let mut first = plan.first.clone();
        first.options.reuseport |= reuseport;
        let fork = plan.first.options.fork;
        let threads = if fork { plan.threads } else { 1 };
        let mut listeners = vec![Listener::open(&first)?];
        if reuseport {
            // One listener per worker on the same port: the kernel spreads connections by
            // their addresses' hash. All are open before "listening on" is said: a client
            // that connects on that word while only the first is open lands on it alone.
            if let (Kind::TcpListen { family, .. }, SockAddr::Inet(local)) =
                (&first.kind, listeners[0].local_addr().clone())
            {
                first.kind = Kind::TcpListen {
                    port: local.port(),
                    family: *family,
                };
            }
            for _ in 1..threads {
                listeners.push(Listener::open(&first)?);
            }
        }
        notice!(
            "listening on {} ({})",
            listeners[0].local_addr(),
            plan.first.text
        );
        let engine =
            Engine::start(threads, Arc::new(plan.engine.clone())).map_err(Error::Engine)?;
        if strategy == AcceptStrategy::Thread {
            let listener = listeners.pop().expect("one listener without reuseport");
            return serve(listener, engine, &signals, &plan, second);
        }
        serve_on_workers(listeners, strategy, engine, &signals, &plan, second)
    } else {
        let first = open_active(&plan.first)?;
        let second_end = match open_second(&second, &signals)? {
            Some(s) => s,
            None => return Ok(ExitCode::SUCCESS),
        };
        let mut engine = Engine::start(1, Arc::new(plan.engine.clone())).map_err(Error::Engine)?;
        engine.submit(Job {
            first,
            second: second_end,
            prelude: prelude_for(&plan.first, &second),
        });
        let stopped = wait_idle(&engine, &signals, plan.drain_timeout);
        finish(engine, &plan, stopped)
    }
}

/// Opens a non-listening first address.
fn open_active(address: &Address) -> Result<Endpoint> {
    match &address.kind {
        Kind::Stdio => Endpoint::stdio().map_err(Error::Stdio),
        _ => dial_blocking(Arc::new(address.clone())),
    }
}

/// How the second address is opened for a connection: dialed by the worker, STDIO, or (when
/// it listens) one connection accepted here. `None` if a stop signal came first.
fn open_second(second: &Arc<Address>, signals: &StopSignals) -> Result<Option<Second>> {
    match &second.kind {
        Kind::Stdio => Ok(Some(Second::Ready(
            Endpoint::stdio().map_err(Error::Stdio)?,
        ))),
        _ if second.is_listener() => {
            let listener = Listener::open(second)?;
            notice!("listening on {} ({})", listener.local_addr(), second.text);
            Ok(accept_one(&listener, signals)?.map(Second::Ready))
        }
        _ => Ok(Some(Second::Dial(second.clone()))),
    }
}

/// Blocks until one connection arrives on `listener` or a stop signal does.
fn accept_one(listener: &Listener, signals: &StopSignals) -> Result<Option<Endpoint>> {
    loop {
        let signal = signals
            .wait_with(listener.socket().as_fd())
            .map_err(|e| Error::io("poll", e))?;
        if signal.is_some() {
            return Ok(None);
        }
        match listener.accept() {
            Ok(Some(endpoint)) => return Ok(Some(endpoint)),
            Ok(None) => {}
            Err(e) if transient_accept_error(&e) => {}
            Err(source) => {
                return Err(Error::Accept {
                    address: listener.address().text.clone(),
                    source,
                });
            }
        }
    }
}

/// Accept errors that concern one client, not the listener.
fn transient_accept_error(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNABORTED | libc::EPROTO | libc::EPERM | libc::EINTR | libc::ENETDOWN)
    )
}

/// What a forking relay's worker does with an accepted socket: admit it ([`admit`]: allow
/// list, socket options, label) and dial the second address for it.
struct RelayAdmit {
    listen: Address,
    second: Arc<Address>,
    options: Arc<RelayOptions>,
}

impl Admit for RelayAdmit {
    fn max_children(&self) -> Option<usize> {
        self.listen.options.max_children
    }

    fn admit(&self, socket: Socket) -> Option<(Job, Arc<RelayOptions>)> {
        // The label shows only in warnings and below: spare the getpeername otherwise.
        let label = crate::log::enabled(crate::log::Level::Warn);
        let first = admit(&self.listen, &self.listen.text, socket, label)?;
        let job = Job {
            first,
            second: Second::Dial(self.second.clone()),
            prelude: prelude_for(&self.listen, &self.second),
        };
        Some((job, self.options.clone()))
    }
}

/// Serves a forking listener (or one SO_REUSEPORT listener per worker) by letting every
/// worker accept on it; returns at a stop signal, after the drain.
fn serve_on_workers(
    listeners: Vec<Listener>,
    strategy: AcceptStrategy,
    engine: Engine,
    signals: &StopSignals,
    plan: &RelayPlan,
    second: Arc<Address>,
) -> Result<ExitCode> {
    let shared = engine.shared().clone();
    // Nothing here waits for closes until the drain (which turns this on itself).
    shared.wake_on_close.store(false, Ordering::SeqCst);
    let fds = listeners
        .iter()
        .map(|l| l.socket().as_fd().try_clone_to_owned())
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| Error::io("duplicating the listening socket", e))?;
    let admit = RelayAdmit {
        listen: plan.first.clone(),
        second,
        options: Arc::new(plan.engine.relay.clone()),
    };
    let group = Arc::new(
        AcceptGroup::new(plan.first.text.clone(), fds, Box::new(admit))
            .with_multishot(strategy.multishot()),
    );
    engine.listen(group.clone()).map_err(Error::Engine)?;
    let signo = loop {
        match signals.wait_with(signals.as_fd()) {
            Ok(Some(signo)) => break signo,
            Ok(None) => {}
            Err(e) => return Err(Error::io("poll", e)),
        }
    };
    // Stop accepting first: every worker's ACCEPT is cancelled and back before the
    // listening sockets close (a UNIX socket's file goes with them).
    engine.unlisten(&group);
    let per_worker = group.accepted_per_worker();
    drop(group);
    drop(listeners);
    crate::debug!("connections accepted per worker: {per_worker:?}");
    let live = shared.live.load(Ordering::SeqCst);
    notice!(
        "signal {signo}: stopped accepting; draining {live} connections for {:?}",
        plan.drain_timeout
    );
    engine.drain(plan.drain_timeout, signals.as_fd(), || signals.take());
    finish(engine, plan, true)
}

/// The accept loop on the main thread: a listener that serves one connection, or any with
/// `VSPLICE_ACCEPT=thread` (the path before workers accepted, kept for measuring).
fn serve(
    listener: Listener,
    mut engine: Engine,
    signals: &StopSignals,
    plan: &RelayPlan,
    second: Arc<Address>,
) -> Result<ExitCode> {
    let fork = plan.first.options.fork;
    let max_children = plan.first.options.max_children;
    let shared = engine.shared().clone();
    // A forking listener without a limit never waits for closes: spare it the wake-ups.
    shared
        .wake_on_close
        .store(!fork || max_children.is_some(), Ordering::SeqCst);
    let mut listener = Some(listener);
    let mut warned_full_fds = false;
    loop {
        let live = shared.live.load(Ordering::SeqCst);
        let full = max_children.is_some_and(|m| live >= m);
        if listener.is_none() && live == 0 {
            return finish(engine, plan, false);
        }
        let mut fds = vec![
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(shared.closed.as_fd(), PollFlags::POLLIN),
        ];
        if let (Some(l), false) = (&listener, full) {
            fds.push(PollFd::new(l.socket().as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => return Err(Error::io("poll", crate::sys::from_nix(e))),
        }
        let readable = |i: usize| {
            fds.get(i)
                .and_then(PollFd::revents)
                .is_some_and(|r| !r.is_empty())
        };
        let (signalled, closed) = (readable(0), readable(1));
        drop(fds);
        if signalled {
            if let Some(signo) = signals.take() {
                drop(listener.take());
                let live = shared.live.load(Ordering::SeqCst);
                notice!(
                    "signal {signo}: stopped accepting; draining {live} connections for {:?}",
                    plan.drain_timeout
                );
                engine.drain(plan.drain_timeout, signals.as_fd(), || signals.take());
                return finish(engine, plan, true);
            }
        }
        if closed {
            shared.closed.drain();
        }
        let Some(l) = listener.as_ref() else { continue };
        if full {
            continue;
        }
        loop {
            if max_children.is_some_and(|m| shared.live.load(Ordering::SeqCst) >= m) {
                break;
            }
            match l.accept() {
                Ok(Some(first)) => {
                    let prelude = prelude_for(&plan.first, &second);
                    let second = match &second.kind {
                        Kind::Stdio => match Endpoint::stdio() {
                            Ok(e) => Second::Ready(e),
                            Err(e) => return Err(Error::Stdio(e)),
                        },
                        _ => Second::Dial(second.clone()),
                    };
                    engine.queue(Job {
                        first,
                        second,
                        prelude,
                    });
                    if !fork {
                        // One connection only: stop listening (and remove a UNIX socket file).
                        listener = None;
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) if transient_accept_error(&e) => continue,
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    ) =>
                {
                    if !warned_full_fds {
                        warn!("accept: {e}; waiting for connections to close");
                        warned_full_fds = true;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                    break;
                }
                Err(source) => {
                    return Err(Error::Accept {
                        address: plan.first.text.clone(),
                        source,
                    });
                }
            }
        }
        engine.wake_all();
    }
}

/// Waits until no connection is left or a stop signal arrives; true if stopped by a signal.
fn wait_idle(engine: &Engine, signals: &StopSignals, drain_timeout: Duration) -> bool {
    let shared = engine.shared();
    while shared.live.load(Ordering::SeqCst) > 0 {
        let mut fds = [
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(shared.closed.as_fd(), PollFlags::POLLIN),
        ];
        let _ = poll(&mut fds, PollTimeout::NONE);
        if let Some(signo) = signals.take() {
            notice!("signal {signo}: draining for {:?}", drain_timeout);
            engine.drain(drain_timeout, signals.as_fd(), || signals.take());
            return true;
        }
        shared.closed.drain();
    }
    false
}

fn print_totals(shared: &Shared) {
    // After the connections' own lines, which went through the log queue.
    crate::log::line(format!(
        "vsplice: total: {} connections ({} failed), {} bytes first->second, {} bytes second->first\n",
        shared.served.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed),
        shared.failed.load(Ordering::Relaxed),
        shared.bytes[0].load(Ordering::Relaxed),
        shared.bytes[1].load(Ordering::Relaxed),
    ));
}

/// Stops the engine (cutting what is still open with resets) and picks the exit status: 1 when the only connection of a non-forking
/// relay failed, 0 otherwise (including a stop by signal).
fn finish(mut engine: Engine, plan: &RelayPlan, stopped: bool) -> Result<ExitCode> {
    engine.stop();
    let shared = engine.shared().clone();
    if plan.engine.relay.stats {
        print_totals(&shared);
    }
    let failed = shared.failed.load(Ordering::Relaxed);
    if plan.engine.relay.single_connection && failed > 0 && !stopped {
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
