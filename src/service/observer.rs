//! What the engine tells a service about its connections: [`ServiceObserver`] is the engine's
//! [`ConnObserver`] for one service name, turning each event (bytes delivered, dial answered
//! or failed, close and its reason) into that service's metrics, and counting the service's
//! open connections for `max-children` and for logs. Everything here runs on worker threads
//! in the data path: atomics only, plus one eventfd write per close when someone waits.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::metrics::{DirectionLabel, ReasonLabel as Reason, ServiceMetrics};
use crate::engine::ConnObserver;
use crate::engine::{CloseReason, Direction as EngineDirection};
use crate::net::dial::DialError;
use crate::protocols::proxy_server;

/// One service's view of its connections (kept across reloads while the name stays).
#[derive(Debug)]
pub(crate) struct ServiceObserver {
    metrics: ServiceMetrics,
    /// Connections accepted and not yet closed.
    live: AtomicUsize,
}

impl ServiceObserver {
    pub(crate) fn new(metrics: ServiceMetrics) -> std::io::Result<ServiceObserver> {
        Ok(ServiceObserver {
            metrics,
            live: AtomicUsize::new(0),
        })
    }

    pub(crate) fn metrics(&self) -> &ServiceMetrics {
        &self.metrics
    }

    /// A connection was accepted and is about to be handed to the engine.
    pub(crate) fn on_accept(&self) {
        self.live.fetch_add(1, Ordering::SeqCst);
        self.metrics.on_accept();
    }

    /// Connections of this service open now.
    pub(crate) fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }
}

impl ConnObserver for ServiceObserver {
    fn service(&self) -> Option<&str> {
        Some(self.metrics.name())
    }

    fn delivered(&self, dir: EngineDirection, bytes: u64) {
        let direction = match dir {
            EngineDirection::Forward => DirectionLabel::first_to_second,
            EngineDirection::Backward => DirectionLabel::second_to_first,
        };
        self.metrics.add_bytes(direction, bytes);
    }

    fn messages(&self, dir: EngineDirection, messages: u64) {
        let direction = match dir {
            EngineDirection::Forward => DirectionLabel::first_to_second,
            EngineDirection::Backward => DirectionLabel::second_to_first,
        };
        self.metrics.add_messages(direction, messages);
    }

    fn dialed(&self, latency: Duration) {
        self.metrics.on_dial(latency);
    }

    fn dial_failed(&self, error: &DialError) {
        self.metrics.on_dial_failure(&errno_label(error));
    }

    fn prelude_ended(&self, prelude: &'static str, result: &'static str) {
        if let Some(result) = proxy_server::result_label(prelude, result) {
            self.metrics.on_proxy_request(result);
        }
    }

    fn prelude_failed(&self, prelude: &'static str, reason: &'static str) {
        if prelude == "proxy" {
            self.metrics.on_proxy_header_error(reason);
        }
    }

    fn closed(&self, reason: &CloseReason, lasted: Duration) {
        self.metrics.on_close(reason_label(reason), lasted);
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The `reason` label of a close: the engine's own reasons, one label each.
pub(crate) fn reason_label(reason: &CloseReason) -> Reason {
    match reason {
        CloseReason::Done => Reason::eof,
        CloseReason::Failed { .. } => Reason::error,
        CloseReason::DialFailed(_) => Reason::dial_failed,
        CloseReason::PreludeFailed(_) => Reason::error,
        CloseReason::IdleTimeout => Reason::idle_timeout,
        CloseReason::LingerExpired => Reason::linger_timeout,
        CloseReason::Stopped => Reason::stopped,
    }
}

/// The `errno` label of a failed dial: the symbolic errno of the last attempt
/// (`ECONNREFUSED`), `ETIMEDOUT` for a connect that timed out, `resolve` for a name that did
/// not resolve, `other` otherwise.
pub(crate) fn errno_label(error: &DialError) -> String {
    let why = match error {
        DialError::Resolve(_) => return "resolve".to_string(),
        DialError::Connect { why, .. } | DialError::GuestPort { why, .. } => why,
        DialError::NotAllowed { .. } => return "not_allowed".to_string(),
        DialError::NoAddress | DialError::Finished => return "other".to_string(),
    };
    // The dial keeps the OS error as text ("Connection refused (os error 111)").
    let code = why
        .rsplit_once("(os error ")
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .and_then(|n| n.parse::<i32>().ok());
    match code {
        Some(code) => format!("{:?}", nix::errno::Errno::from_raw(code)),
        None if why.contains("timed out") => "ETIMEDOUT".to_string(),
        None => "other".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_dial_is_labelled_with_its_errno() {
        let target = crate::sys::socket::SockAddr::Inet("127.0.0.1:1".parse().unwrap());
        let refused = DialError::Connect {
            target: target.clone(),
            why: std::io::Error::from_raw_os_error(libc::ECONNREFUSED).to_string(),
        };
        assert_eq!(errno_label(&refused), "ECONNREFUSED");
        let slow = DialError::Connect {
            target,
            why: "connect timed out".into(),
        };
        assert_eq!(errno_label(&slow), "ETIMEDOUT");
        assert_eq!(errno_label(&DialError::Resolve("x".into())), "resolve");
    }
}
