//! What a running `serve` holds ([`Server`]): its plan, the engine, the metrics, the running
//! services and their observers, and the descriptors the service manager passed; and the steps
//! that start and reload share (opening a service's listener, starting its acceptor).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::acceptor::{Acceptor, ListenSocket, Service};
use super::config::{ServePlan, ServicePlan};
use super::metrics::Metrics;
use super::observer::ServiceObserver;
use crate::addr::Kind;
use crate::engine::{Engine, Shared};
use crate::error::{Error, Result};
use crate::net::bindkey::BindKey;
use crate::net::open::Listener;
use crate::notice;
use crate::sys::systemd::{inherited_listener, why_no_listen_fds};

/// Everything a running `serve` holds.
pub(crate) struct Server {
    pub plan: ServePlan,
    pub engine: Arc<Mutex<Engine>>,
    pub shared: Arc<Shared>,
    pub metrics: Arc<Metrics>,
    /// Running services by name.
    pub services: HashMap<String, Acceptor>,
    /// Each service name's observer, kept across reloads (its counters and open
    /// connections carry on while the name stays).
    pub observers: HashMap<String, Arc<ServiceObserver>>,
    /// Descriptors passed by the service manager that no service took (yet).
    pub inherited: HashMap<i32, OwnedFd>,
}

impl Server {
    /// The observer of service `name`, created with its metrics on first use.
    pub(crate) fn observer(&mut self, name: &str) -> Result<Arc<ServiceObserver>> {
        if let Some(o) = self.observers.get(name) {
            return Ok(o.clone());
        }
        let o = Arc::new(
            ServiceObserver::new(self.metrics.service(name))
                .map_err(|e| Error::io("eventfd", e))?,
        );
        self.observers.insert(name.to_string(), o.clone());
        Ok(o)
    }

    /// Opens (or takes from the service manager) the listening socket of `s`.
    pub(crate) fn open_listener(&mut self, s: &ServicePlan) -> Result<ListenSocket> {
        match s.listen.kind {
            Kind::AcceptFd { fd } => {
                let owned = self.inherited.remove(&fd).ok_or_else(|| {
                    let why = why_no_listen_fds()
                        .map(|w| format!(" ({w})"))
                        .unwrap_or_default();
                    Error::Usage(format!(
                        "service \"{}\": {}: descriptor {fd} was not passed by the service \
                         manager (LISTEN_FDS){why}, or another service took it",
                        s.name, s.listen.text
                    ))
                })?;
                let socket = inherited_listener(owned)
                    .map_err(|e| Error::io(format!("{}: descriptor {fd}", s.listen.text), e))?;
                // Its type is known now: messages (SEQPACKET, or UDP's datagrams) must be
                // able to cross to the other address.
                let messages = socket
                    .get_int(libc::SOL_SOCKET, libc::SO_TYPE)
                    .is_ok_and(|t| t == libc::SOCK_SEQPACKET || t == libc::SOCK_DGRAM);
                crate::addr::check_message_pair(
                    &s.listen,
                    messages,
                    &s.connect,
                    s.connect.is_message(),
                )
                .map_err(|e| {
                    Error::Usage(format!("service \"{}\": descriptor {fd}: {e}", s.name))
                })?;
                Ok(ListenSocket::Inherited(socket))
            }
            _ => {
                let l = Listener::open(&s.listen)?;
                notice!("{}: listening on {} ({})", s.name, l.local_addr(), s.listen);
                Ok(ListenSocket::Opened(Box::new(l)))
            }
        }
    }

    /// Starts an acceptor for `s` on `listen`, the socket `key` names.
    pub(crate) fn start_service(
        &mut self,
        s: &ServicePlan,
        listen: ListenSocket,
        key: BindKey,
    ) -> Result<()> {
        let observer = self.observer(&s.name)?;
        let datagram = super::acceptor::is_datagram(listen.socket());
        let service = Arc::new(Service::new(s, observer, datagram));
        let acceptor = Acceptor::start(listen, key, service, datagram, self.engine.clone())?;
        self.services.insert(s.name.clone(), acceptor);
        Ok(())
    }

    /// Connections open in the whole engine.
    pub(crate) fn live(&self) -> usize {
        self.shared.live.load(Ordering::SeqCst)
    }
}
