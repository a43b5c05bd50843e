//! Wire protocols a connection speaks before (or at the start of) its relayed bytes, as pure
//! machines on byte slices: no socket, no clock, no engine. The engine drives them from thin
//! loops (its prelude phase, the dial), so every rule of a protocol is tested on byte literals.
//!
//! - [`prelude`]: the generic interface of a handshake run on an accepted socket before the
//!   second address is dialed (what it may yield: a declared origin, a dial target, a reply);
//! - [`proxy_protocol`]: HAProxy's PROXY protocol, v1 and v2: the encoder for `send-proxy`
//!   and the incremental parser behind `accept-proxy`.
//!
//! The layer sits just above `addr` (it names addresses and allow lists) and below `net`
//! (the dial writes PROXY headers).

pub mod prelude;
pub mod proxy_protocol;
