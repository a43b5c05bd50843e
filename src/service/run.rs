//! Running a [`ServePlan`] on today's engine, through its public interface only: each
//! service gets its own acceptor thread and, until the engine takes a configuration per
//! connection, its own [`Engine`] (its own workers), which also gives each service its own
//! counters for the metrics. The main thread waits for signals: SIGINT/SIGTERM drain (stop
//! accepting, let connections finish for `drain-timeout`, then cut; a second signal cuts at
//! once), SIGHUP is reported (reload is not implemented yet) and nothing else happens.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::allow::Peer;
use super::config::{ServePlan, ServicePlan};
use super::metrics::{CloseReason, Direction, Metrics, MetricsServer, ServiceMetrics};
use crate::addr::{Address, Kind};
use crate::endpoint::Endpoint;
use crate::engine::rcvbudget::ReceiveBudget;
use crate::engine::{DEFAULT_PIPE_SIZE, Engine, EngineConfig, Job, Mode, Second, Shared};
use crate::error::{Error, Result};
use crate::net::open::Listener;
use crate::net::sockopt::apply_connected_options;
use crate::sys::eventfd::EventFd;
use crate::sys::signal::{StopSignals, ignore_sigpipe};
use crate::sys::socket::Socket;
use crate::sys::systemd::{Notifier, ReloadSignal, Watchdog, inherited_listener, take_listen_fds};
use crate::{notice, warn};

/// A service's listening socket: opened here, or inherited from the service manager.
enum ListenSocket {
    Opened(Box<Listener>),
    Inherited(Socket),
}

impl ListenSocket {
    fn socket(&self) -> &Socket {
        match self {
            ListenSocket::Opened(l) => l.socket(),
            ListenSocket::Inherited(s) => s,
        }
    }
}

/// Opens every listening address before anything runs, so a bad one fails the start.
fn open_listeners(plan: &ServePlan) -> Result<Vec<ListenSocket>> {
    let needs_inherited = plan
        .services
        .iter()
        .any(|s| matches!(s.listen.kind, Kind::AcceptFd { .. }));
    let mut inherited: HashMap<i32, _> = if needs_inherited {
        take_listen_fds()
            .map_err(|e| Error::io("socket activation", e))?
            .into_iter()
            .map(|s| (s.number, s.fd))
            .collect()
    } else {
        HashMap::new()
    };
    let mut out = Vec::new();
    for s in &plan.services {
        out.push(match s.listen.kind {
            Kind::AcceptFd { fd } => {
                let owned = inherited.remove(&fd).ok_or_else(|| {
                    Error::Usage(format!(
                        "service \"{}\": {}: descriptor {fd} was not passed by the service \
                         manager (LISTEN_FDS)",
                        s.name, s.listen.text
                    ))
                })?;
                let socket = inherited_listener(owned)
                    .map_err(|e| Error::io(format!("{}: descriptor {fd}", s.listen.text), e))?;
                ListenSocket::Inherited(socket)
            }
            _ => {
                let l = Listener::open(&s.listen)?;
                notice!("{}: listening on {} ({})", s.name, l.local_addr(), s.listen);
                ListenSocket::Opened(Box::new(l))
            }
        });
    }
    Ok(out)
}

/// The engine configuration of one service: the command line's, from the file's options.
pub fn engine_config(plan: &ServePlan, service: &ServicePlan, threads: usize) -> EngineConfig {
    let o = &service.options;
    let size = o.buffer.unwrap_or(DEFAULT_PIPE_SIZE);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pin = plan.global.pin;
    EngineConfig {
        mode: o.mode.unwrap_or(Mode::Splice),
        pipe_size: size,
        copy_size: size,
        directions: o.directions(),
        idle_timeout: o.idle_timeout,
        linger: o.linger,
        receive_budget: match plan.global.receive_budget {
            Some(0) => None,
            Some(n) => Some(ReceiveBudget(n)),
            None => ReceiveBudget::from_system(),
        },
        user_rcvbuf: [
            service.listen.options.rcvbuf.is_some(),
            service.connect.options.rcvbuf.is_some(),
        ],
        pin_workers: crate::cli::pin_policy(pin == Some(true), pin == Some(false), threads, cores),
        single_connection: false,
        ..EngineConfig::default()
    }
}

/// One running service, as the main thread sees it.
struct Running {
    stop: Arc<EventFd>,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<Engine>>,
}

pub fn run(plan: &ServePlan) -> Result<ExitCode> {
    ignore_sigpipe().map_err(|e| Error::io("ignoring SIGPIPE", e))?;
    let signals = StopSignals::install().map_err(|e| Error::io("installing signal handling", e))?;
    let hangup = ReloadSignal::install().map_err(|e| Error::io("installing SIGHUP", e))?;
    let _ = crate::sys::limits::raise_nofile(1 << 20);
    let notifier = Notifier::from_env().map_err(|e| Error::io("NOTIFY_SOCKET", e))?;
    let listeners = open_listeners(plan)?;
    let metrics = Arc::new(Metrics::new());
    let threads = plan
        .global
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut running = Vec::new();
    let mut sampled = Vec::new();
    for (service, listen) in plan.services.iter().zip(listeners) {
        let config = Arc::new(engine_config(plan, service, threads));
        let engine = Engine::start(threads, config).map_err(Error::Engine)?;
        let shared = engine.shared().clone();
        shared
            .wake_on_close
            .store(service.max_children().is_some(), Ordering::SeqCst);
        let stop = Arc::new(EventFd::new().map_err(|e| Error::io("eventfd", e))?);
        let handles = metrics.service(&service.name);
        sampled.push((handles.clone(), shared.clone(), [0u64; 4]));
        let acceptor = {
            let (stop, service) = (stop.clone(), service.clone());
            std::thread::Builder::new()
                .name(format!("vsplice-acc-{}", service.name))
                .spawn(move || accept_loop(&service, listen, engine, &stop, &handles))
                .map_err(|e| Error::io("starting an acceptor", e))?
        };
        running.push(Running {
            stop,
            shared,
            acceptor: Some(acceptor),
        });
    }
    let workers = (threads * running.len()) as i64;
    let sampled = Mutex::new(sampled);
    metrics.before_scrape(move |engine| {
        engine.workers.set(workers);
        let mut parked = 0;
        for (handles, shared, last) in sampled.lock().unwrap_or_else(|e| e.into_inner()).iter_mut()
        {
            parked += shared.parked.load(Ordering::Relaxed) as i64;
            sync_counters(handles, shared, last);
        }
        engine.parked_connections.set(parked);
    });
    let _metrics_server = match &plan.metrics {
        Some(address) => Some(MetricsServer::start(address, metrics.clone())?),
        None => None,
    };
    let status = format!("{} services", plan.services.len());
    if let Some(n) = &notifier {
        let _ = n.ready(&status);
    }
    notice!("serving {status} from {}", plan.file.display());
    let watchdog = notifier.as_ref().and(Watchdog::from_env());
    let mut next_ping = Instant::now();
    loop {
        if let (Some(w), Some(n)) = (watchdog, &notifier) {
            if Instant::now() >= next_ping {
                let _ = n.watchdog();
                next_ping = w.next_after(Instant::now());
            }
        }
        let timeout = watchdog.map(|_| next_ping.saturating_duration_since(Instant::now()));
        wait_for(&[signals.as_fd(), hangup.as_fd()], timeout);
        if hangup.take() {
            warn!(
                "SIGHUP: reloading is not implemented yet; {} keeps running unchanged",
                plan.file.display()
            );
            if let Some(n) = &notifier {
                let _ = n.reloading();
                let _ = n.ready(&status);
            }
        }
        if let Some(signo) = signals.take() {
            notice!(
                "signal {signo}: draining for {:?}",
                plan.global.drain_timeout
            );
            if let Some(n) = &notifier {
                let _ = n.stopping();
            }
            break;
        }
    }
    let engines = stop_accepting(&mut running);
    let live: usize = running
        .iter()
        .map(|r| r.shared.live.load(Ordering::SeqCst))
        .sum();
    notice!("stopped accepting; {live} connections left to drain");
    let ping = || {
        if let (Some(_), Some(n)) = (watchdog, &notifier) {
            let _ = n.watchdog();
        }
    };
    drain(&running, &signals, plan.global.drain_timeout, &ping);
    drop(engines);
    Ok(ExitCode::SUCCESS)
}

/// Counts what the engine counted since the last scrape (closes, bytes) into a service's
/// metrics. The engine does not say why a connection ended: ends it counts as served are
/// reported as `eof`, failed ones as `error`.
fn sync_counters(handles: &ServiceMetrics, shared: &Shared, last: &mut [u64; 4]) {
    let now = [
        shared.served.load(Ordering::Relaxed),
        shared.failed.load(Ordering::Relaxed),
        shared.bytes[0].load(Ordering::Relaxed),
        shared.bytes[1].load(Ordering::Relaxed),
    ];
    let delta = |i: usize| now[i].saturating_sub(last[i]);
    handles.add_closed(CloseReason::eof, delta(0));
    handles.add_closed(CloseReason::error, delta(1));
    handles.add_bytes(Direction::first_to_second, delta(2));
    handles.add_bytes(Direction::second_to_first, delta(3));
    handles.set_active(shared.live.load(Ordering::Relaxed) as i64);
    *last = now;
}

fn wait_for(fds: &[BorrowedFd<'_>], timeout: Option<Duration>) {
    let mut polled: Vec<PollFd> = fds
        .iter()
        .map(|fd| PollFd::new(*fd, PollFlags::POLLIN))
        .collect();
    let timeout = match timeout {
        None => PollTimeout::NONE,
        Some(t) => PollTimeout::try_from(t.as_millis().min(i32::MAX as u128) as i32)
            .unwrap_or(PollTimeout::MAX),
    };
    let _ = poll(&mut polled, timeout);
}

/// Stops every acceptor (their listeners close) and collects the engines.
fn stop_accepting(running: &mut [Running]) -> Vec<Engine> {
    for r in running.iter() {
        r.stop.notify();
    }
    running
        .iter_mut()
        .filter_map(|r| r.acceptor.take()?.join().ok())
        .collect()
}

/// Waits until no connection is left, the timeout passes, or a second stop signal comes.
/// `ping` runs at least every second (the watchdog stays fed while draining).
fn drain(running: &[Running], signals: &StopSignals, timeout: Duration, ping: &dyn Fn()) {
    let deadline = Instant::now() + timeout;
    for r in running {
        r.shared.wake_on_close.store(true, Ordering::SeqCst);
    }
    loop {
        ping();
        let live: usize = running
            .iter()
            .map(|r| r.shared.live.load(Ordering::SeqCst))
            .sum();
        if live == 0 {
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            notice!("drain timeout: cutting {live} connections");
            return;
        }
        let mut fds = vec![signals.as_fd()];
        fds.extend(running.iter().map(|r| r.shared.closed.as_fd()));
        wait_for(&fds, Some(left.min(Duration::from_secs(1))));
        if signals.take().is_some() {
            notice!("second stop signal: cutting {live} connections");
            return;
        }
        for r in running {
            r.shared.closed.drain();
        }
    }
}

fn transient(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNABORTED | libc::EPROTO | libc::EPERM | libc::EINTR | libc::ENETDOWN)
    )
}

/// Accepts a service's connections until `stop` is signalled; returns its engine.
fn accept_loop(
    service: &ServicePlan,
    listen: ListenSocket,
    mut engine: Engine,
    stop: &EventFd,
    metrics: &ServiceMetrics,
) -> Engine {
    let connect = Arc::new(service.connect.clone());
    let shared = engine.shared().clone();
    let full = || {
        service
            .max_children()
            .is_some_and(|m| shared.live.load(Ordering::SeqCst) >= m)
    };
    loop {
        let is_full = full();
        let mut fds = vec![
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
            PollFd::new(shared.closed.as_fd(), PollFlags::POLLIN),
        ];
        if !is_full {
            fds.push(PollFd::new(listen.socket().as_fd(), PollFlags::POLLIN));
        }
        let _ = poll(&mut fds, PollTimeout::NONE);
        let ready = |i: usize| fds[i].revents().is_some_and(|r| !r.is_empty());
        let (stopped, closed) = (ready(0), ready(1));
        drop(fds);
        if stopped {
            return engine;
        }
        if closed {
            shared.closed.drain();
        }
        while !full() {
            match listen.socket().accept() {
                Ok(Some(socket)) => {
                    if let Some(job) = admit(service, &connect, socket, metrics) {
                        engine.queue(job);
                    }
                }
                Ok(None) => break,
                Err(e) if transient(&e) => {}
                Err(e) => {
                    warn!("{}: accept: {e}", service.name);
                    std::thread::sleep(Duration::from_millis(20));
                    break;
                }
            }
        }
        engine.wake_all();
    }
}

/// Checks an accepted socket against the allow list and makes it a job; `None`: refused
/// (closed at once, nothing relayed).
fn admit(
    service: &ServicePlan,
    connect: &Arc<Address>,
    socket: Socket,
    metrics: &ServiceMetrics,
) -> Option<Job> {
    if let Some(allow) = service.allow() {
        let peer = Peer::of(&socket);
        if !peer.as_ref().is_ok_and(|p| allow.permits(p)) {
            metrics.on_deny();
            match peer {
                // Logged at -d, as the issue asks: refusals are what an operator looks for.
                Ok(p) => warn!("{}: {p} refused by the allow list", service.name),
                Err(e) => warn!("{}: peer unknown ({e}): refused", service.name),
            }
            return None;
        }
    }
    if matches!(service.listen.kind, Kind::TcpListen { .. }) {
        if let Err(e) = apply_connected_options(&socket, &service.listen.options) {
            warn!("{}: socket options: {e}", service.name);
        }
    }
    let label = socket
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| format!("client of {}", service.name));
    metrics.on_accept();
    Some(Job {
        first: Endpoint::socket(socket, label),
        second: Second::Dial(connect.clone()),
    })
}
