//! A service's listening socket and the thread that accepts on it: each accepted peer is
//! checked against the allow list and handed to the one shared [`Engine`] with the service's
//! [`RelayOptions`] (which carry its [`ServiceObserver`]). The service an acceptor serves can
//! be switched while it runs (a reload that changed it): connections accepted afterwards get
//! the new one, those already handed over keep theirs. Stopping an acceptor gives its
//! listening socket back, so a reload can hand it to a renamed service without closing it.

use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::allow::Peer;
use super::config::{ServePlan, ServicePlan};
use super::observer::ServiceObserver;
use crate::addr::{Address, Kind};
use crate::endpoint::Endpoint;
use crate::engine::{DEFAULT_PIPE_SIZE, Engine, EngineConfig, Job, Mode, RelayOptions, Second};
use crate::error::{Error, Result};
use crate::net::open::Listener;
use crate::net::sockopt::apply_connected_options;
use crate::sys::eventfd::EventFd;
use crate::sys::socket::Socket;
use crate::warn;

/// A service's listening socket: opened here, or inherited from the service manager.
pub enum ListenSocket {
    Opened(Box<Listener>),
    Inherited(Socket),
}

impl ListenSocket {
    pub fn socket(&self) -> &Socket {
        match self {
            ListenSocket::Opened(l) => l.socket(),
            ListenSocket::Inherited(s) => s,
        }
    }
}

/// One service as its acceptor runs it: the plan, and what its connections carry.
#[derive(Debug)]
pub struct Service {
    pub plan: ServicePlan,
    pub options: Arc<RelayOptions>,
    pub observer: Arc<ServiceObserver>,
    connect: Arc<Address>,
}

impl Service {
    pub fn new(plan: &ServicePlan, observer: Arc<ServiceObserver>) -> Service {
        observer.set_wake_on_close(plan.max_children().is_some());
        Service {
            options: Arc::new(relay_options(plan, observer.clone())),
            connect: Arc::new(plan.connect.clone()),
            plan: plan.clone(),
            observer,
        }
    }
}

/// The per-relay options of one service's connections: the command line's, from the file.
pub fn relay_options(service: &ServicePlan, observer: Arc<ServiceObserver>) -> RelayOptions {
    let o = &service.options;
    let size = o.buffer.unwrap_or(DEFAULT_PIPE_SIZE);
    RelayOptions {
        mode: o.mode.unwrap_or(Mode::Splice),
        pipe_size: size,
        copy_size: size,
        directions: o.directions(),
        idle_timeout: o.idle_timeout,
        linger: o.linger,
        user_rcvbuf: [
            service.listen.options.rcvbuf.is_some(),
            service.connect.options.rcvbuf.is_some(),
        ],
        single_connection: false,
        observer: Some(observer),
        ..EngineConfig::default().relay_options()
    }
}

/// The configuration of the one engine all services share: what is global to it. The
/// splice pipes of every service come from the workers' pools, sized by the file's
/// top-level `buffer` (a service's own `buffer` sizes its copy buffers and buffer rings).
pub fn engine_config(plan: &ServePlan, threads: usize) -> EngineConfig {
    let size = plan.global.defaults.buffer.unwrap_or(DEFAULT_PIPE_SIZE);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pin = plan.global.pin;
    EngineConfig {
        pipe_size: size,
        copy_size: size,
        receive_budget: receive_budget(plan),
        pin_workers: crate::cli::pin_policy(pin == Some(true), pin == Some(false), threads, cores),
        single_connection: false,
        ..EngineConfig::default()
    }
}

pub fn receive_budget(plan: &ServePlan) -> Option<crate::engine::rcvbudget::ReceiveBudget> {
    use crate::engine::rcvbudget::ReceiveBudget;
    match plan.global.receive_budget {
        Some(0) => None,
        Some(n) => Some(ReceiveBudget(n)),
        None => ReceiveBudget::from_system(),
    }
}

/// A running acceptor thread.
pub struct Acceptor {
    stop: Arc<EventFd>,
    current: Arc<Mutex<Arc<Service>>>,
    thread: Option<JoinHandle<ListenSocket>>,
}

impl Acceptor {
    pub fn start(
        listen: ListenSocket,
        service: Arc<Service>,
        engine: Arc<Mutex<Engine>>,
    ) -> Result<Acceptor> {
        let stop = Arc::new(EventFd::new().map_err(|e| Error::io("eventfd", e))?);
        let current = Arc::new(Mutex::new(service.clone()));
        let thread = {
            let (stop, current) = (stop.clone(), current.clone());
            std::thread::Builder::new()
                .name(format!("vsplice-acc-{}", service.plan.name))
                .spawn(move || accept_loop(listen, &current, &engine, &stop))
                .map_err(|e| Error::io("starting an acceptor", e))?
        };
        Ok(Acceptor {
            stop,
            current,
            thread: Some(thread),
        })
    }

    /// The service new connections get.
    pub fn service(&self) -> Arc<Service> {
        lock(&self.current).clone()
    }

    /// Serves `service` from the next accepted connection on.
    pub fn switch(&self, service: Arc<Service>) {
        *lock(&self.current) = service;
    }

    /// Stops accepting and gives the listening socket back (`None` if the thread died).
    pub fn stop(mut self) -> Option<ListenSocket> {
        self.stop.notify();
        self.thread.take()?.join().ok()
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.stop.notify();
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn transient(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNABORTED | libc::EPROTO | libc::EPERM | libc::EINTR | libc::ENETDOWN)
    )
}

/// Accepts connections until `stop` is signalled; returns the listening socket.
fn accept_loop(
    listen: ListenSocket,
    current: &Mutex<Arc<Service>>,
    engine: &Mutex<Engine>,
    stop: &EventFd,
) -> ListenSocket {
    let full = |s: &Service| {
        s.plan
            .max_children()
            .is_some_and(|m| s.observer.live() >= m)
    };
    loop {
        let service = lock(current).clone();
        let is_full = full(&service);
        let mut fds = vec![
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
            PollFd::new(service.observer.closed().as_fd(), PollFlags::POLLIN),
        ];
        if !is_full {
            fds.push(PollFd::new(listen.socket().as_fd(), PollFlags::POLLIN));
        }
        // A switch while waiting takes effect at the next wake-up: at the latest a second
        // later for a service waiting on `max-children`.
        let timeout = if is_full {
            PollTimeout::from(1000u16)
        } else {
            PollTimeout::NONE
        };
        let _ = poll(&mut fds, timeout);
        let ready = |i: usize| fds[i].revents().is_some_and(|r| !r.is_empty());
        let (stopped, closed) = (ready(0), ready(1));
        drop(fds);
        if stopped {
            return listen;
        }
        if closed {
            service.observer.closed().drain();
        }
        // A reload may have switched the service while this thread waited.
        let service = lock(current).clone();
        let mut batch = Vec::new();
        while !full(&service) {
            match listen.socket().accept() {
                Ok(Some(socket)) => {
                    if let Some(job) = admit(&service, socket) {
                        batch.push(job);
                    }
                }
                Ok(None) => break,
                Err(e) if transient(&e) => {}
                Err(e) => {
                    warn!("{}: accept: {e}", service.plan.name);
                    std::thread::sleep(Duration::from_millis(20));
                    break;
                }
            }
            if batch.len() >= 64 {
                hand_over(engine, &service, &mut batch);
            }
        }
        hand_over(engine, &service, &mut batch);
    }
}

/// Queues a batch of connections on the engine and wakes the workers once.
fn hand_over(engine: &Mutex<Engine>, service: &Service, batch: &mut Vec<Job>) {
    if batch.is_empty() {
        return;
    }
    let mut engine = lock(engine);
    for job in batch.drain(..) {
        engine.queue_with(job, service.options.clone());
    }
    engine.wake_all();
}

/// Checks an accepted socket against the allow list and makes it a job; `None`: refused
/// (closed at once, nothing relayed).
fn admit(service: &Service, socket: Socket) -> Option<Job> {
    let plan = &service.plan;
    let metrics = service.observer.metrics();
    if let Some(allow) = plan.allow() {
        let peer = Peer::of(&socket);
        if !peer.as_ref().is_ok_and(|p| allow.permits(p)) {
            metrics.on_deny();
            match peer {
                // Logged at -d, as the issue asks: refusals are what an operator looks for.
                Ok(p) => warn!("{}: {p} refused by the allow list", plan.name),
                Err(e) => warn!("{}: peer unknown ({e}): refused", plan.name),
            }
            return None;
        }
    }
    if matches!(plan.listen.kind, Kind::TcpListen { .. }) {
        if let Err(e) = apply_connected_options(&socket, &plan.listen.options) {
            warn!("{}: socket options: {e}", plan.name);
        }
    }
    let label = socket
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| format!("client of {}", plan.name));
    service.observer.on_accept();
    Some(Job {
        first: Endpoint::socket(socket, label),
        second: Second::Dial(service.connect.clone()),
    })
}
