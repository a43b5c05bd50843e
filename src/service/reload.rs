//! Live reload (SIGHUP, `systemctl reload`): reads the file again and moves the running
//! services to it without touching a connection already open.
//!
//! A service is matched by name: one that is new starts, one that is gone stops accepting
//! (its listening socket closes) while its connections may finish for the drain timeout
//! (then they are cut with resets, as at a stop signal), and one whose
//! entry changed serves new connections with the new entry. Listening sockets are matched by
//! what they bind ([`BindKey`]: the resolved local address, not the text, so a listen address
//! re-spelt, in other case or with its options reordered, is the same socket): a service that
//! keeps its address keeps its socket (no connection attempt is refused meanwhile), even under
//! a new name, and its new allow list and target apply from the next connection. Everything that can fail
//! (reading the file, opening new listening sockets) happens before anything changes, so a
//! reload that fails leaves the old services running as they were.
//!
//! The cut after a removal reaches the connections of the service's last entry; those still
//! open from before an earlier change of that entry run to their end.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::acceptor::{ListenSocket, Service};
use super::config::{ServePlan, ServicePlan};
use super::server::Server;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::net::bindkey::BindKey;
use crate::{notice, warn};

/// Reloads `server.plan.file`; returns a summary ("1 added, 1 removed, 0 changed").
pub(super) fn reload(server: &mut Server) -> Result<String> {
    let plan = ServePlan::load(&server.plan.file).map_err(Error::from)?;
    warn_about_global_changes(&server.plan, &plan);
    // The sockets the running services listen on, and which service holds each.
    let held: Vec<(BindKey, String)> = server
        .services
        .iter()
        .map(|(name, a)| (a.key().clone(), name.clone()))
        .collect();
    let holder = |key: &BindKey| held.iter().find(|(k, _)| k == key).map(|(_, n)| n);
    // Stage 1: resolve every listen address, open what is new. Dropping `opened` on failure
    // closes those sockets again.
    let mut keys: HashMap<String, BindKey> = HashMap::new();
    let mut opened: HashMap<String, ListenSocket> = HashMap::new();
    for s in &plan.services {
        let key = BindKey::of(&s.listen)?;
        if holder(&key).is_none() {
            let socket = server.open_listener(s)?;
            opened.insert(s.name.clone(), socket);
        }
        keys.insert(s.name.clone(), key);
    }
    // Stage 2: nothing below fails for a reason the old configuration would not share.
    let mut old: HashMap<String, _> = server.services.drain().collect();
    let (mut added, mut changed, mut unchanged) = (0, 0, 0);
    let mut start = Vec::new();
    // Services that keep or take over a running socket first: a service that moves away
    // from an address then finds its old acceptor already handed over.
    let mut order: Vec<_> = plan.services.iter().collect();
    order.sort_by_key(|s| opened.contains_key(&s.name));
    for s in order {
        if let Some(socket) = opened.remove(&s.name) {
            // A new address: the service is new, or an old one moved.
            if let Some(previous) = old.remove(&s.name) {
                drop(previous.stop());
                changed += 1;
            } else {
                added += 1;
            }
            start.push((s.clone(), socket));
            continue;
        }
        let holder = holder(&keys[&s.name]).expect("a socket not opened is held");
        let acceptor = old
            .remove(holder)
            .expect("held sockets belong to running services");
        warn_about_kept_socket(&acceptor.service().plan, s);
        if holder == &s.name {
            if acceptor.service().plan == *s {
                unchanged += 1;
            } else {
                let observer = server.observer(&s.name)?;
                acceptor.switch(Arc::new(Service::new(s, observer, acceptor.datagram())));
                notice!("{}: changed; new connections get the new entry", s.name);
                changed += 1;
            }
            server.services.insert(s.name.clone(), acceptor);
        } else {
            // The address moved to another name: the socket moves with it.
            let service = acceptor.service();
            match acceptor.stop() {
                Some(socket) => start.push((s.clone(), socket)),
                None => warn!("{holder}: its acceptor had died; {} not started", s.name),
            }
            if plan.services.iter().any(|n| n.name == *holder) {
                changed += 1;
            } else {
                // The old name is gone: its connections drain, then are cut, as a removal's.
                retire(holder.clone(), service, server, plan.global.drain_timeout);
                added += 1;
            }
        }
    }
    let mut removed = 0;
    for (name, acceptor) in old {
        let service = acceptor.service();
        drop(acceptor.stop());
        retire(name, service, server, plan.global.drain_timeout);
        removed += 1;
    }
    for (s, socket) in start {
        let key = keys.remove(&s.name).expect("every new service has its key");
        server.start_service(&s, socket, key)?;
    }
    server.plan = plan;
    Ok(format!(
        "{added} added, {removed} removed, {changed} changed, {unchanged} unchanged"
    ))
}

/// A service that stopped accepting for good (`acceptor.stop()` returned, so no worker
/// admits another of its connections): its open connections may finish for `wait`, then
/// what is left of them is cut.
fn retire(name: String, service: Arc<Service>, server: &Server, wait: Duration) {
    let live = service.observer.live();
    notice!("{name}: removed; stopped accepting, {live} connections may finish for {wait:?}");
    if live > 0 {
        cut_after(name, service, Arc::downgrade(&server.engine), wait);
    }
}

/// Cuts, with resets, what is left of a removed service's connections once `wait` (the
/// drain timeout) is over, as a stop signal does for the whole process. The engine is held
/// weakly: a process that stops meanwhile drains and cuts everything itself.
fn cut_after(name: String, service: Arc<Service>, engine: Weak<Mutex<Engine>>, wait: Duration) {
    let label = name.clone();
    let spawned = std::thread::Builder::new()
        .name("vsplice-cut".into())
        .spawn(move || {
            std::thread::sleep(wait);
            let live = service.observer.live();
            if live == 0 {
                return;
            }
            if let Some(engine) = engine.upgrade() {
                notice!("{name}: removed {wait:?} ago; cutting its {live} open connections");
                engine
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .cut(&service.options);
            }
        });
    if let Err(e) = spawned {
        warn!("{label}: cannot time its drain ({e}); its connections run to their end");
    }
}

/// A kept listening socket keeps the options it was opened with: says which of those the new
/// entry changes (its allow list, `max-children` and per-connection options do apply).
fn warn_about_kept_socket(running: &ServicePlan, new: &ServicePlan) {
    let (a, b) = (&running.listen.options, &new.listen.options);
    let mut kept = Vec::new();
    if a.backlog != b.backlog {
        kept.push("backlog");
    }
    if a.reuseaddr != b.reuseaddr {
        kept.push("reuseaddr");
    }
    if a.reuseport != b.reuseport {
        kept.push("reuseport");
    }
    if a.rcvbuf != b.rcvbuf {
        kept.push("rcvbuf");
    }
    if a.sndbuf != b.sndbuf {
        kept.push("sndbuf");
    }
    if !kept.is_empty() {
        warn!(
            "{}: keeps its listening socket; {} apply to a new socket only (restart, or move \
             the service to another address)",
            new.name,
            kept.join(", ")
        );
    }
}

/// Options of the whole process apply at start only: says which changed and stay as they
/// were.
fn warn_about_global_changes(running: &ServePlan, new: &ServePlan) {
    let g = (&running.global, &new.global);
    let mut kept = Vec::new();
    if g.0.threads != g.1.threads {
        kept.push("threads");
    }
    if g.0.receive_budget != g.1.receive_budget {
        kept.push("receive-budget");
    }
    if g.0.pin != g.1.pin {
        kept.push("pin");
    }
    if g.0.defaults.buffer != g.1.defaults.buffer {
        kept.push("buffer (the engine's pipe size)");
    }
    if running.metrics != new.metrics {
        kept.push("[metrics]");
    }
    if !kept.is_empty() {
        warn!(
            "reload: {} apply at start only; restart to change them",
            kept.join(", ")
        );
    }
}
