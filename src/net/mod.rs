//! Opening the relay's ends: name resolution, off the workers where it may block
//! (`resolve`), socket options (`sockopt`), connecting and listening (`open`), the
//! non-blocking dial a worker drives ([`dial`]) and its poll(2) driver (`blocking`), the
//! hybrid-vsock reply (`hybrid`), an opened end ([`endpoint`]), admitting an accepted socket
//! (`admit`), and which socket a listening address binds (`bindkey`).

pub(crate) mod admit;
pub(crate) mod bindkey;
pub(crate) mod blocking;
pub mod dial;
pub mod endpoint;
pub(crate) mod hybrid;
pub(crate) mod open;
pub(crate) mod own;
pub(crate) mod peer;
pub(crate) mod resolve;
pub(crate) mod sockopt;
pub(crate) mod udp;
