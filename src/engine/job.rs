//! What a worker is handed: a connection whose first end is open ([`Job`]), with its second
//! end open or still to be dialed ([`Second`]), and possibly a handshake to run on the first
//! end before anything is dialed ([`PreludeJob`]).

use std::sync::Arc;
use std::time::Duration;

use crate::addr::allow::Allow;
use crate::addr::{Address, DEFAULT_PROXY_TIMEOUT};
use crate::net::endpoint::Endpoint;
use crate::protocols::prelude::Prelude;
use crate::protocols::proxy_protocol::AcceptProxy;
use crate::protocols::proxy_server::{DEFAULT_CONNECT_TIMEOUT, ProxyServer};

/// The second end of a new connection: already open, or to be dialed by the worker.
#[derive(Debug)]
pub enum Second {
    Ready(Endpoint),
    Dial(Arc<Address>),
}

/// A handshake the worker runs on the first end before it opens the second (see
/// `protocols::prelude`): the machine, how long it may take, and which declared
/// sources the listener serves.
#[derive(Debug)]
pub struct PreludeJob {
    pub machine: Box<dyn Prelude>,
    /// The whole handshake must be read within this (`proxy-timeout`); a reply written
    /// after the dial gets as long again.
    pub timeout: Duration,
    /// Declared sources served (`allow-source=`); `None`: every one. With none declared, the
    /// socket's own peer is checked.
    pub allow_source: Option<Allow>,
}

/// A connection handed to a worker.
#[derive(Debug)]
pub struct Job {
    pub first: Endpoint,
    pub second: Second,
    /// Run on `first` before `second` is opened; `None`: relay at once.
    pub prelude: Option<PreludeJob>,
}

/// The prelude a connection accepted on `listen` runs before its dial, from the listening
/// address's keyword and options, or from the second address when it is a proxy
/// (`SOCKS5-SERVER`, `HTTP-CONNECT-SERVER`: their handshake, bounded by `connect-timeout`,
/// default 10 s); `None`: none. The one place that maps addresses to handshakes, for the
/// relay command and service mode alike. One handshake per connection: `check_pair` refuses
/// `accept-proxy` in front of a proxy.
pub(crate) fn prelude_for(listen: &Address, second: &Arc<Address>) -> Option<PreludeJob> {
    if second.is_proxy() {
        return Some(PreludeJob {
            machine: Box::new(ProxyServer::new(second.clone())),
            timeout: second
                .options
                .connect_timeout
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            allow_source: None,
        });
    }
    let options = &listen.options;
    if options.accept_proxy {
        return Some(PreludeJob {
            machine: Box::new(AcceptProxy::default()),
            timeout: options.proxy_timeout.unwrap_or(DEFAULT_PROXY_TIMEOUT),
            allow_source: options.allow_source.clone(),
        });
    }
    None
}
