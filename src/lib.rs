//! vsplice: a socat-compatible relay that moves bulk bytes between AF_VSOCK, TCP and UNIX
//! sockets (and STDIO) with splice(2), on a thread-per-core io_uring engine, plus an
//! iperf-style benchmark for vsock throughput.
//!
//! Layout: [`addr`] parses the address grammar (pure); [`cli`] parses the command line in two
//! stages; [`net`] opens addresses (resolve, socket options, listen, dial) into endpoints;
//! [`engine`] runs connections on io_uring workers; `relay` (crate-private) is the accept loop; [`bench`](mod@bench)
//! measures; [`sys`] holds every raw system call behind safe wrappers.
//!
//! What is `pub` here is what the binary, the integration tests and the benches use; the wire
//! protocols and the relay command are crate-private, and so is every submodule those three
//! do not name (each top-level module re-exports the few items they need), and
//! `unreachable_pub` keeps every item that nothing outside its module tree can reach at
//! `pub(crate)` or narrower, so the compiler reports dead code instead of keeping it public.

#![warn(unreachable_pub)]

pub mod addr;
pub mod bench;
pub mod cli;
pub mod engine;
pub mod error;
pub mod log;
pub mod net;
pub(crate) mod protocols;
pub(crate) mod relay;
pub mod service;
pub mod sys;

pub use error::{Error, Result};
