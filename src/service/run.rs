//! Running a [`ServePlan`]: one [`Engine`] (one set of worker threads) for every service,
//! one acceptor thread per service that hands each accepted connection to the engine with
//! its service's options. The main thread waits for signals: SIGINT/SIGTERM drain (stop
//! accepting, let connections finish for `drain-timeout`, then cut; a second signal cuts at
//! once), SIGHUP reloads the file (`reload`), SIGUSR2 hands every listening socket to a new
//! binary and drains once it serves ([`super::upgrade`]).

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::acceptor::{engine_config, receive_budget};
use super::config::ServePlan;
use super::metrics::{Metrics, MetricsServer};
use super::server::Server;
use super::upgrade::{self, Handed, Progress, Upgrade};
use crate::addr::Kind;
use crate::engine::{Engine, Shared};
use crate::error::{Error, Result};
use crate::net::bindkey::BindKey;
use crate::sys::handover;
use crate::sys::pipe::Pipe;
use crate::sys::signal::{StopSignals, ignore_sigpipe};
use crate::sys::systemd::{CaughtSignal, Notifier, Watchdog, fd_store_max, take_listen_fds};
use crate::{notice, warn};

pub(crate) fn run(plan: &ServePlan, pid_file: Option<&Path>) -> Result<ExitCode> {
    ignore_sigpipe().map_err(|e| Error::io("ignoring SIGPIPE", e))?;
    let mut handed = handover::take()
        .map_err(|e| Error::io("taking the sockets of an upgrade", e))?
        .map(Handed::new)
        .unwrap_or_default();
    let signals = StopSignals::install().map_err(|e| Error::io("installing signal handling", e))?;
    let hangup = CaughtSignal::hangup().map_err(|e| Error::io("installing SIGHUP", e))?;
    let usr2 = CaughtSignal::upgrade().map_err(|e| Error::io("installing SIGUSR2", e))?;
    // Read now: once a package manager replaced the file, /proc/self/exe says "(deleted)".
    let binary = upgrade::own_binary().map_err(|e| Error::io("/proc/self/exe", e))?;
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let _ = crate::sys::limits::raise_nofile(1 << 20);
    let mut notifier = Notifier::from_env().map_err(|e| Error::io("NOTIFY_SOCKET", e))?;
    let needs_inherited = plan
        .services
        .iter()
        .any(|s| matches!(s.listen.kind, Kind::AcceptFd { .. }));
    // The service manager's descriptors: a socket unit's (by number, for ACCEPT-FD) and those
    // its descriptor store kept across a restart (by name, as an upgrade hands them over).
    let passed = match take_listen_fds() {
        Ok(passed) => passed,
        Err(e) if needs_inherited => return Err(Error::io("socket activation", e)),
        Err(e) => {
            warn!("socket activation: {e}; no service takes an inherited descriptor");
            Vec::new()
        }
    };
    let mut inherited: HashMap<i32, OwnedFd> = handed
        .add_stored(
            passed
                .into_iter()
                .map(|s| (s.number, s.name, s.fd))
                .collect(),
        )
        .into_iter()
        .collect();
    inherited.extend(handed.take_inherited());
    let threads = plan
        .global
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let engine =
        Engine::start(threads, Arc::new(engine_config(plan, threads))).map_err(Error::Engine)?;
    let shared = engine.shared().clone();
    // Closes wake the main thread only while it drains.
    shared.wake_on_close.store(false, Ordering::SeqCst);
    let mut server = Server {
        plan: plan.clone(),
        engine: Arc::new(Mutex::new(engine)),
        shared: shared.clone(),
        metrics: Arc::new(Metrics::new()),
        services: HashMap::new(),
        observers: HashMap::new(),
        inherited,
    };
    // Every listener opens (or is taken from the process this one upgrades) before any
    // service runs, so a bad one fails the start.
    let mut listeners = Vec::new();
    for s in &plan.services {
        let key = BindKey::of(&s.listen)?;
        let socket = match handed.take_listener(&key, &s.listen)? {
            Some(l) => {
                notice!("{}: serving on {} (handed over)", s.name, l.local_addr());
                upgrade::service_socket(l)
            }
            None => server.open_listener(s)?,
        };
        listeners.push((socket, key));
    }
    for (s, (listen, key)) in plan.services.iter().zip(listeners) {
        server.start_service(s, listen, key)?;
    }
    sample_engine(
        &server.metrics,
        shared.clone(),
        threads,
        receive_budget(plan),
    );
    let mut metrics_server = match &plan.metrics {
        Some(address) => {
            let key = BindKey::of(address)?;
            let server = match handed.take_metrics(&key, address)? {
                Some(l) => MetricsServer::start_on(l, server.metrics.clone())?,
                None => MetricsServer::start(address, server.metrics.clone())?,
            };
            Some((key, server))
        }
        None => None,
    };
    let mut status = format!("{} services", plan.services.len());
    let pid = std::process::id();
    if let Some(path) = pid_file {
        upgrade::write_pid_file(path, pid)
            .map_err(|e| Error::io(format!("--pid-file {}", path.display()), e))?;
    }
    for name in handed.close_unused() {
        notice!("handed-over socket {name} is not in the config; closed here");
        if let Some(n) = &notifier {
            let _ = n.remove_stored(&upgrade::store_name(&name));
        }
    }
    match handed.parent {
        Some(parent) => {
            if let Some(n) = &notifier {
                let _ = n.took_over(pid, &status);
            }
            if let Err(e) = handed.say_ready() {
                warn!("upgrade: telling process {parent} that this one serves: {e}");
            }
            notice!(
                "serving {status} from {} (took over from process {parent})",
                plan.file.display()
            );
        }
        None => {
            if let Some(n) = &notifier {
                let _ = n.ready(&status);
            }
            notice!("serving {status} from {}", plan.file.display());
        }
    }
    let mut stored = Vec::new();
    store_sockets(&server, &metrics_server, &notifier, &mut stored);
    let watchdog = notifier.as_ref().and(Watchdog::from_env());
    if let Some(w) = watchdog.filter(Watchdog::is_clamped) {
        warn!(
            "WATCHDOG_USEC={} asks for a ping every {:?}; pinging every {:?} instead (raise WatchdogSec=)",
            w.timeout.as_micros(),
            w.timeout / 2,
            w.interval()
        );
    }
    let mut next_ping = Instant::now();
    let mut upgrading: Option<Upgrade> = None;
    let handed_to = loop {
        if let (Some(w), Some(n)) = (watchdog, &notifier) {
            if Instant::now() >= next_ping {
                let _ = n.watchdog();
                next_ping = w.next_after(Instant::now());
            }
        }
        let deadlines = [
            watchdog.map(|_| next_ping),
            upgrading.as_ref().map(Upgrade::deadline),
        ];
        let timeout = deadlines
            .into_iter()
            .flatten()
            .min()
            .map(|t| t.saturating_duration_since(Instant::now()));
        let mut fds = vec![signals.as_fd(), hangup.as_fd(), usr2.as_fd()];
        fds.extend(upgrading.as_ref().map(Upgrade::fd));
        wait_for(&fds, timeout);
        if hangup.take() {
            if let Some(n) = &notifier {
                let _ = n.reloading();
            }
            match super::reload::reload(&mut server) {
                Ok(summary) => {
                    notice!("reloaded {}: {summary}", plan.file.display());
                    status = format!("{} services; {summary}", server.services.len());
                }
                Err(e) => {
                    warn!(
                        "reloading {} failed, the running services go on unchanged: {e}",
                        plan.file.display()
                    );
                    status = format!("{} services; reload failed: {e}", server.services.len());
                }
            }
            if let Some(n) = &notifier {
                let _ = n.ready(&status);
            }
            store_sockets(&server, &metrics_server, &notifier, &mut stored);
        }
        // Before the stop signals' signalfd, which reads SIGUSR2 too.
        if usr2.take() {
            match &upgrading {
                Some(u) => warn!(
                    "upgrade: SIGUSR2 while process {} is starting; ignored",
                    u.pid()
                ),
                None => {
                    let metrics = metrics_server
                        .as_ref()
                        .map(|(k, m)| (k.clone(), m.listening().as_fd()));
                    match Upgrade::start(&server, metrics, &binary, &args) {
                        Ok(u) => {
                            notice!(
                                "upgrade: started {} as process {}; it has {:?} to say it serves",
                                binary.display(),
                                u.pid(),
                                upgrade::ready_timeout()
                            );
                            upgrading = Some(u);
                        }
                        Err(e) => {
                            let why = format!("starting {}: {e}", binary.display());
                            upgrade_failed(&why, &status, &notifier);
                        }
                    }
                }
            }
        }
        if let Some(u) = &mut upgrading {
            match u.check() {
                Progress::Waiting => {}
                Progress::Ready { pid, took } => break Some((pid, took)),
                Progress::Failed(why) => {
                    upgrade_failed(&why, &status, &notifier);
                    upgrading = None;
                }
            }
        }
        if let Some(signo) = signals.take() {
            if let Some(u) = upgrading.take() {
                notice!("signal {signo}: stopping process {} too", u.pid());
                u.abandon();
            }
            notice!(
                "signal {signo}: draining for {:?}",
                server.plan.global.drain_timeout
            );
            if let Some(n) = &notifier {
                let _ = n.stopping();
            }
            break None;
        }
    };
    if handed_to.is_some() {
        // The sockets (and their files) are the new process's: stop accepting, close ours
        // (the metrics endpoint's too: the new process answers the scrapes).
        crate::net::open::keep_socket_files();
        drop(metrics_server.take());
        // The new process is the service manager's main one now: no more notifications.
        notifier = None;
    }
    for (_, acceptor) in server.services.drain() {
        drop(acceptor.stop());
    }
    match handed_to {
        Some((new, took)) => notice!(
            "upgrade: process {new} serves ({took:?} after SIGUSR2); this one stopped accepting, \
             {} connections left to drain for {:?}",
            server.live(),
            server.plan.global.drain_timeout
        ),
        None => notice!(
            "stopped accepting; {} connections left to drain",
            server.live()
        ),
    }
    let ping = || {
        if let (Some(_), Some(n)) = (watchdog, &notifier) {
            let _ = n.watchdog();
        }
    };
    // The acceptors are gone, so nothing else takes the engine's lock while it drains; the
    // watchdog is fed as the drain starts and at least once a second while it lasts.
    ping();
    let mut engine = server.engine.lock().unwrap_or_else(|e| e.into_inner());
    engine.drain(server.plan.global.drain_timeout, signals.as_fd(), || {
        ping();
        if usr2.take() {
            notice!("upgrade refused: this process is draining");
        }
        signals.take()
    });
    // Cut what is left (with resets) and join the workers here, not in the engine's Drop: a
    // removed service's timer thread may hold the engine too (waiting for this lock), and
    // the process must not end with connections closed by exit, without resets.
    engine.stop();
    drop(engine);
    let mut last: Vec<_> = server.observers.iter().collect();
    last.sort_by_key(|(name, _)| name.as_str());
    for (name, observer) in last {
        notice!("{name}: last counters: {}", observer.metrics().summary());
    }
    if let Some(path) = pid_file {
        upgrade::remove_pid_file_if_ours(path, pid);
    }
    drop(metrics_server);
    drop(server);
    Ok(ExitCode::SUCCESS)
}

/// Keeps every listening socket this process opened in systemd's descriptor store (when
/// `FileDescriptorStoreMax=` gives it one), so that a restart gets them back; drops from
/// the store those of services a reload removed. `stored` is what was stored before.
fn store_sockets(
    server: &Server,
    metrics: &Option<(BindKey, MetricsServer)>,
    notifier: &Option<Notifier>,
    stored: &mut Vec<String>,
) {
    let Some(n) = notifier.as_ref().filter(|_| fd_store_max() > 0) else {
        return;
    };
    let mut now = Vec::new();
    for acceptor in server.services.values() {
        // A socket unit's descriptor stays with the socket unit.
        if let (Some(_), Some(socket)) = (acceptor.key().local(), acceptor.listening()) {
            now.push((upgrade::socket_name(acceptor.key()), socket.as_fd()));
        }
    }
    if let Some((key, m)) = metrics {
        now.push((upgrade::metrics_name(key), m.listening().as_fd()));
    }
    for (name, fd) in &now {
        if let Err(e) = n.store_fd(&upgrade::store_name(name), *fd) {
            warn!("FDSTORE: keeping {name}: {e}");
        }
    }
    let names: Vec<String> = now.into_iter().map(|(name, _)| name).collect();
    for gone in stored.iter().filter(|s| !names.contains(s)) {
        let _ = n.remove_stored(&upgrade::store_name(gone));
    }
    *stored = names;
}

/// A failed upgrade: said in the log and in systemd's STATUS=; nothing else changes.
fn upgrade_failed(why: &str, status: &str, notifier: &Option<Notifier>) {
    warn!("upgrade failed, this process goes on serving: {why}");
    if let Some(n) = notifier {
        let _ = n.status(&format!("{status}; upgrade failed: {why}"));
    }
}

/// Samples the engine-wide gauges before each scrape.
fn sample_engine(
    metrics: &Metrics,
    shared: Arc<Shared>,
    threads: usize,
    budget: Option<crate::engine::rcvbudget::ReceiveBudget>,
) {
    metrics.before_scrape(move |engine| {
        engine.workers.set(threads as i64);
        engine
            .parked_connections
            .set(shared.parked.load(Ordering::Relaxed) as i64);
        engine.pipes_in_use.set(Pipe::open_count() as i64);
        let busy = shared.busy.load(Ordering::Relaxed);
        let cap = budget.and_then(|b| b.cap(busy)).unwrap_or(0);
        engine.receive_cap_bytes.set(cap as i64);
        engine.sample_log_lines_dropped(crate::log::dropped_total());
    });
}

fn wait_for(fds: &[BorrowedFd<'_>], timeout: Option<Duration>) {
    let mut polled: Vec<PollFd> = fds
        .iter()
        .map(|fd| PollFd::new(*fd, PollFlags::POLLIN))
        .collect();
    let timeout = match timeout {
        None => PollTimeout::NONE,
        // Rounded up: a wait of 0.4 ms rounded down would be a zero timeout, a busy loop.
        Some(t) => PollTimeout::try_from(t.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32)
            .unwrap_or(PollTimeout::MAX),
    };
    let _ = poll(&mut polled, timeout);
}
