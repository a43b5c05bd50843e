//! Wire protocols a connection speaks before (or at the start of) its relayed bytes, as pure
//! machines on byte slices: no socket, no clock, no engine. The engine drives them from thin
//! loops (its prelude phase, the dial), so every rule of a protocol is tested on byte literals.
//!
//! - [`prelude`]: the generic interface of a handshake run on an accepted socket before the
//!   second address is dialed (what it may yield: a declared origin, a dial target, a reply);
//! - [`proxy_protocol`]: HAProxy's PROXY protocol, v1 and v2: the encoder for `send-proxy`
//!   and the incremental parser behind `accept-proxy`;
//! - [`socks5`] and [`http_connect`]: the server sides of SOCKS5 (RFC 1928, RFC 1929) and HTTP
//!   CONNECT up to the request, with [`target`] (what a client asks for) and [`auth`] (the
//!   user and password they may require); [`proxy_server`] is their prelude, behind
//!   `SOCKS5-SERVER` and `HTTP-CONNECT-SERVER`.
//!
//! The layer sits just above `addr` (it names addresses and allow lists) and below `net`
//! (the dial writes PROXY headers).

pub(crate) mod auth;
pub(crate) mod http_connect;
pub(crate) mod prelude;
pub(crate) mod proxy_protocol;
pub(crate) mod proxy_server;
pub(crate) mod socks5;
pub(crate) mod target;
