//! Live reload (SIGHUP, `systemctl reload`): reads the file again and moves the running
//! services to it without touching a connection already open.
//!
//! A service is matched by name: one that is new starts, one that is gone stops accepting
//! (its listening socket closes) while its connections run to their end, and one whose
//! entry changed serves new connections with the new entry. Listening sockets are matched by
//! the listen address as written: a service that keeps its address keeps its socket (no
//! connection attempt is refused meanwhile), even under a new name. Everything that can fail
//! (reading the file, opening new listening sockets) happens before anything changes, so a
//! reload that fails leaves the old services running as they were.

use std::collections::HashMap;
use std::sync::Arc;

use super::acceptor::{ListenSocket, Service};
use super::config::ServePlan;
use super::run::Server;
use crate::error::{Error, Result};
use crate::{notice, warn};

/// Reloads `server.plan.file`; returns a summary ("1 added, 1 removed, 0 changed").
pub fn reload(server: &mut Server) -> Result<String> {
    let plan = ServePlan::load(&server.plan.file).map_err(Error::from)?;
    warn_about_global_changes(&server.plan, &plan);
    // The running services' listen addresses, and which service holds each.
    let held: HashMap<String, String> = server
        .services
        .values()
        .map(|a| {
            let s = a.service();
            (s.plan.listen.text.clone(), s.plan.name.clone())
        })
        .collect();
    // Stage 1: open what is new. Dropping `opened` on failure closes those sockets again.
    let mut opened: HashMap<String, ListenSocket> = HashMap::new();
    for s in &plan.services {
        if !held.contains_key(&s.listen.text) {
            let socket = server.open_listener(s)?;
            opened.insert(s.name.clone(), socket);
        }
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
        let holder = &held[&s.listen.text];
        let acceptor = old
            .remove(holder)
            .expect("held addresses belong to running services");
        if holder == &s.name {
            if acceptor.service().plan == *s {
                unchanged += 1;
            } else {
                let observer = server.observer(&s.name)?;
                acceptor.switch(Arc::new(Service::new(s, observer)));
                notice!("{}: changed; new connections get the new entry", s.name);
                changed += 1;
            }
            server.services.insert(s.name.clone(), acceptor);
        } else {
            // The address moved to another name: the socket moves with it.
            match acceptor.stop() {
                Some(socket) => start.push((s.clone(), socket)),
                None => warn!("{holder}: its acceptor had died; {} not started", s.name),
            }
            if plan.services.iter().any(|n| n.name == *holder) {
                changed += 1;
            } else {
                added += 1;
            }
        }
    }
    let mut removed = 0;
    for (name, acceptor) in old {
        let live = acceptor.service().observer.live();
        drop(acceptor.stop());
        notice!("{name}: removed; stopped accepting, {live} connections run to their end");
        removed += 1;
    }
    for (s, socket) in start {
        server.start_service(&s, socket)?;
    }
    server.plan = plan;
    Ok(format!(
        "{added} added, {removed} removed, {changed} changed, {unchanged} unchanged"
    ))
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
