//! Protocols spoken on a connection before it relays, one file each, as pure parsers and
//! state machines fed bytes (tested on byte literals) that thin loops in the engine drive.

pub mod auth;
pub mod http_connect;
pub mod socks5;
pub mod target;
