//! A service's listening socket and its accepting: the shared [`Engine`]'s workers accept on
//! it themselves ([`crate::engine::accept`]), check each peer against the allow list and
//! serve it with the service's [`RelayOptions`] (which carry its [`ServiceObserver`]). The
//! service an acceptor serves can be switched while it runs (a reload that changed it):
//! connections accepted afterwards get the new one, those already accepted keep theirs.
//! Stopping an acceptor makes every worker stop accepting on the socket and gives it back,
//! so a reload can hand it to a renamed service without closing it. A `UDP-LISTEN` service
//! has no connections to accept: its sessions are made by a thread of its own
//! ([`super::sessions`]), which the acceptor starts, switches and stops the same way.

use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};

use super::config::{ServePlan, ServicePlan};
use super::observer::ServiceObserver;
use super::sessions::{SessionMaker, SessionOwner};
use crate::addr::Address;
use crate::engine::accept::{AcceptGroup, Admit};
use crate::engine::{
    DEFAULT_PIPE_SIZE, Engine, EngineConfig, Job, Mode, RelayOptions, Second, prelude_for,
};
use crate::error::{Error, Result};
use crate::net::admit::admit;
use crate::net::bindkey::BindKey;
use crate::net::open::Listener;
use crate::net::udp::Session;
use crate::sys::socket::Socket;
use crate::warn;

/// A service's listening socket: opened here, or inherited from the service manager.
pub(crate) enum ListenSocket {
    Opened(Box<Listener>),
    Inherited(Socket),
}

impl ListenSocket {
    pub(crate) fn socket(&self) -> &Socket {
        match self {
            ListenSocket::Opened(l) => l.socket(),
            ListenSocket::Inherited(s) => s,
        }
    }
}

/// One service as its acceptor runs it: the plan, and what its connections carry.
#[derive(Debug)]
pub(crate) struct Service {
    pub plan: ServicePlan,
    pub options: Arc<RelayOptions>,
    pub observer: Arc<ServiceObserver>,
    connect: Arc<Address>,
}

impl Service {
    /// `datagram`: its listening socket is a UDP one (`UDP-LISTEN`, or a UDP socket passed
    /// as `ACCEPT-FD`), whose sessions end when idle.
    pub(crate) fn new(
        plan: &ServicePlan,
        observer: Arc<ServiceObserver>,
        datagram: bool,
    ) -> Service {
        Service {
            options: Arc::new(relay_options(plan, observer.clone(), datagram)),
            connect: Arc::new(plan.connect.clone()),
            plan: plan.clone(),
            observer,
        }
    }
}

/// The per-relay options of one service's connections: the command line's, from the file.
pub(super) fn relay_options(
    service: &ServicePlan,
    observer: Arc<ServiceObserver>,
    datagram: bool,
) -> RelayOptions {
    let o = &service.options;
    let size = o.buffer.unwrap_or(DEFAULT_PIPE_SIZE);
    RelayOptions {
        mode: o.mode.unwrap_or(Mode::Auto),
        pipe_size: size,
        copy_size: size,
        directions: o.directions(),
        // A UDP session has no end of its own: it ends when idle, by default after 60 s.
        idle_timeout: o.idle_timeout.or_else(|| {
            (datagram || service.listen.kind.tag().is_udp() || service.connect.kind.tag().is_udp())
                .then_some(crate::net::udp::UDP_IDLE_TIMEOUT)
        }),
        linger: o.linger,
        user_rcvbuf: [
            service.listen.options.rcvbuf.is_some(),
            service.connect.options.rcvbuf.is_some(),
        ],
        single_connection: false,
        observer: Some(observer),
        ..RelayOptions::default()
    }
}

/// The configuration of the one engine all services share: what is global to it. The
/// splice pipes of every service come from the workers' pools, sized by the file's
/// top-level `buffer` (a service's own `buffer` sizes its copy buffers and buffer rings).
pub(super) fn engine_config(plan: &ServePlan, threads: usize) -> EngineConfig {
    let size = plan.global.defaults.buffer.unwrap_or(DEFAULT_PIPE_SIZE);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pin = plan.global.pin;
    EngineConfig {
        relay: RelayOptions {
            pipe_size: size,
            copy_size: size,
            ..RelayOptions::default()
        },
        receive_budget: receive_budget(plan),
        pin_workers: crate::engine::pin_policy(pin, threads, cores),
        ..EngineConfig::default()
    }
}

pub(super) fn receive_budget(plan: &ServePlan) -> Option<crate::engine::rcvbudget::ReceiveBudget> {
    crate::engine::rcvbudget::ReceiveBudget::resolve(plan.global.receive_budget)
}

/// Who takes a service's new connections.
enum Accepting {
    /// The engine's workers, each with an ACCEPT on its ring (the group's listener is a
    /// duplicate of the acceptor's).
    Workers(Arc<AcceptGroup>),
    /// A `UDP-LISTEN` service's session thread (on a duplicate of the acceptor's socket).
    Sessions(SessionMaker),
}

/// A service's listener as the engine's workers accept on it.
pub(crate) struct Acceptor {
    engine: Arc<Mutex<Engine>>,
    current: Arc<Mutex<Arc<Service>>>,
    /// Who accepts on the listener now.
    group: Mutex<Option<Accepting>>,
    listen: Option<ListenSocket>,
    /// What `listen` binds, for a reload to match new listen addresses against.
    key: BindKey,
    /// Whether `listen` is a UDP socket: its sessions are made by a thread of its own.
    datagram: bool,
}

/// What a worker does with a socket it accepted for a service: the service it serves now.
struct ServiceAdmit {
    current: Arc<Mutex<Arc<Service>>>,
}

impl Admit for ServiceAdmit {
    fn max_children(&self) -> Option<usize> {
        lock(&self.current).plan.max_children()
    }

    fn admit(&self, socket: Socket) -> Option<(Job, Arc<RelayOptions>)> {
        let service = lock(&self.current).clone();
        admit_job(&service, socket).map(|job| (job, service.options.clone()))
    }
}

impl SessionOwner for ServiceAdmit {
    fn name(&self) -> String {
        lock(&self.current).plan.name.clone()
    }

    fn full(&self) -> bool {
        let service = lock(&self.current).clone();
        service
            .plan
            .max_children()
            .is_some_and(|max| service.observer.live() >= max)
    }

    fn admit(&self, session: Session) -> Option<(Job, Arc<RelayOptions>)> {
        let service = lock(&self.current).clone();
        let job = admit_job(&service, session.socket)?;
        let job = Job {
            first: job.first.with_first_messages(session.first),
            ..job
        };
        Some((job, service.options.clone()))
    }
}

impl Acceptor {
    /// Starts accepting on `listen` for `service`; `datagram`: `listen` is a UDP socket
    /// ([`is_datagram`]), whose sessions a thread of its own makes.
    pub(crate) fn start(
        listen: ListenSocket,
        key: BindKey,
        service: Arc<Service>,
        datagram: bool,
        engine: Arc<Mutex<Engine>>,
    ) -> Result<Acceptor> {
        let acceptor = Acceptor {
            engine,
            current: Arc::new(Mutex::new(service)),
            group: Mutex::new(None),
            datagram,
            listen: Some(listen),
            key,
        };
        *lock(&acceptor.group) = Some(acceptor.start_group()?);
        Ok(acceptor)
    }

    /// Lets the workers accept on the listener for the current service (or, for
    /// `UDP-LISTEN`, starts its session thread).
    fn start_group(&self) -> Result<Accepting> {
        let listen = self
            .listen
            .as_ref()
            .expect("an acceptor holds its listener");
        let fd = listen
            .socket()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| Error::io("duplicating a listening socket", e))?;
        let plan = lock(&self.current).plan.clone();
        if self.datagram {
            let socket = Socket::from_owned(fd);
            // Each session's socket binds the same address: the kernel allows it only when
            // both ask (a socket passed by systemd may not have).
            socket
                .set_int(libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)
                .map_err(|e| Error::io(format!("{}: SO_REUSEADDR", plan.name), e))?;
            let listener = Listener::adopt(socket, &plan.listen)?;
            let owner = Box::new(ServiceAdmit {
                current: self.current.clone(),
            });
            let maker = SessionMaker::start(listener, owner, self.engine.clone())
                .map_err(|e| Error::io(format!("{}: starting its UDP sessions", plan.name), e))?;
            return Ok(Accepting::Sessions(maker));
        }
        let admit = ServiceAdmit {
            current: self.current.clone(),
        };
        let group = Arc::new(AcceptGroup::new(plan.name, vec![fd], Box::new(admit)));
        lock(&self.engine)
            .listen(group.clone())
            .map_err(Error::Engine)?;
        Ok(Accepting::Workers(group))
    }

    /// Makes the workers (or the session thread) stop accepting; returns once none
    /// accepts on the listener.
    fn stop_group(&self) {
        match lock(&self.group).take() {
            Some(Accepting::Workers(group)) => lock(&self.engine).unlisten(&group),
            Some(Accepting::Sessions(maker)) => maker.stop(),
            None => {}
        }
    }

    /// The listening socket (the workers accept on a duplicate of it).
    pub(crate) fn listening(&self) -> Option<&Socket> {
        self.listen.as_ref().map(ListenSocket::socket)
    }

    /// Whether the listening socket is a UDP one.
    pub(crate) fn datagram(&self) -> bool {
        self.datagram
    }

    /// What the listening socket binds.
    pub(crate) fn key(&self) -> &BindKey {
        &self.key
    }

    /// The service new connections get.
    pub(crate) fn service(&self) -> Arc<Service> {
        lock(&self.current).clone()
    }

    /// Serves `service` from the next accepted connection on. When it gains or loses a
    /// `max-children` the workers re-arm their accepts for it (clients wait in the backlog
    /// meanwhile); a changed limit applies from the next accept.
    pub(crate) fn switch(&self, service: Arc<Service>) {
        let was_limited = lock(&self.current).plan.max_children().is_some();
        let limited = service.plan.max_children().is_some();
        *lock(&self.current) = service;
        // The session thread reads the limit at every session.
        let workers = matches!(*lock(&self.group), Some(Accepting::Workers(_)));
        if workers && was_limited != limited {
            self.stop_group();
            match self.start_group() {
                Ok(group) => *lock(&self.group) = Some(group),
                Err(e) => warn!(
                    "{}: cannot accept again: {e}",
                    lock(&self.current).plan.name
                ),
            }
        }
    }

    /// Stops accepting and gives the listening socket back.
    pub(crate) fn stop(mut self) -> Option<ListenSocket> {
        self.stop_group();
        self.listen.take()
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.stop_group();
    }
}

/// Whether `socket` is a datagram (UDP) socket.
pub(crate) fn is_datagram(socket: &Socket) -> bool {
    socket
        .get_int(libc::SOL_SOCKET, libc::SO_TYPE)
        .is_ok_and(|t| t == libc::SOCK_DGRAM)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Admits an accepted socket ([`admit`]: allow list, socket options, label) and makes it a
/// job; `None`: refused (closed with a reset, nothing relayed, counted as denied).
fn admit_job(service: &Service, socket: Socket) -> Option<Job> {
    let plan = &service.plan;
    let Some(first) = admit(&plan.listen, &plan.name, socket, true) else {
        service.observer.metrics().on_deny();
        return None;
    };
    service.observer.on_accept();
    Some(Job {
        first,
        second: Second::Dial(service.connect.clone()),
        prelude: prelude_for(&plan.listen, &service.connect),
    })
}
