//! What a worker is handed: a connection whose first end is open ([`Job`]), with its second
//! end open or still to be dialed ([`Second`]).

use std::sync::Arc;

use crate::addr::Address;
use crate::net::endpoint::Endpoint;

/// The second end of a new connection: already open, or to be dialed by the worker.
#[derive(Debug)]
pub enum Second {
    Ready(Endpoint),
    Dial(Arc<Address>),
}

/// A connection handed to a worker.
#[derive(Debug)]
pub struct Job {
    pub first: Endpoint,
    pub second: Second,
}
