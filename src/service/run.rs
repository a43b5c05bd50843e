//! Running a [`ServePlan`]: one [`Engine`] (one set of worker threads) for every service,
//! one acceptor thread per service that hands each accepted connection to the engine with
//! its service's options. The main thread waits for signals: SIGINT/SIGTERM drain (stop
//! accepting, let connections finish for `drain-timeout`, then cut; a second signal cuts at
//! once), SIGHUP reloads the file (`reload`).

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::acceptor::{engine_config, receive_budget};
use super::config::ServePlan;
use super::metrics::{Metrics, MetricsServer};
use super::server::Server;
use crate::addr::Kind;
use crate::engine::{Engine, Shared};
use crate::error::{Error, Result};
use crate::net::bindkey::BindKey;
use crate::sys::pipe::Pipe;
use crate::sys::signal::{StopSignals, ignore_sigpipe};
use crate::sys::systemd::{Notifier, ReloadSignal, Watchdog, take_listen_fds};
use crate::{notice, warn};

pub fn run(plan: &ServePlan) -> Result<ExitCode> {
    ignore_sigpipe().map_err(|e| Error::io("ignoring SIGPIPE", e))?;
    let signals = StopSignals::install().map_err(|e| Error::io("installing signal handling", e))?;
    let hangup = ReloadSignal::install().map_err(|e| Error::io("installing SIGHUP", e))?;
    let _ = crate::sys::limits::raise_nofile(1 << 20);
    let notifier = Notifier::from_env().map_err(|e| Error::io("NOTIFY_SOCKET", e))?;
    let needs_inherited = plan
        .services
        .iter()
        .any(|s| matches!(s.listen.kind, Kind::AcceptFd { .. }));
    let inherited = if needs_inherited {
        take_listen_fds()
            .map_err(|e| Error::io("socket activation", e))?
            .into_iter()
            .map(|s| (s.number, s.fd))
            .collect()
    } else {
        HashMap::new()
    };
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
    // Every listener opens before any service runs, so a bad one fails the start.
    let mut listeners = Vec::new();
    for s in &plan.services {
        let key = BindKey::of(&s.listen)?;
        listeners.push((server.open_listener(s)?, key));
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
    let _metrics_server = match &plan.metrics {
        Some(address) => Some(MetricsServer::start(address, server.metrics.clone())?),
        None => None,
    };
    let mut status = format!("{} services", plan.services.len());
    if let Some(n) = &notifier {
        let _ = n.ready(&status);
    }
    notice!("serving {status} from {}", plan.file.display());
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
        }
        if let Some(signo) = signals.take() {
            notice!(
                "signal {signo}: draining for {:?}",
                server.plan.global.drain_timeout
            );
            if let Some(n) = &notifier {
                let _ = n.stopping();
            }
            break;
        }
    }
    for (_, acceptor) in server.services.drain() {
        drop(acceptor.stop());
    }
    notice!(
        "stopped accepting; {} connections left to drain",
        server.live()
    );
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
        signals.take()
    });
    // Cut what is left (with resets) and join the workers here, not in the engine's Drop: a
    // removed service's timer thread may hold the engine too (waiting for this lock), and
    // the process must not end with connections closed by exit, without resets.
    engine.stop();
    drop(engine);
    drop(server);
    Ok(ExitCode::SUCCESS)
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
