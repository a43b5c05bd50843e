//! Opening the relay's ends: name resolution, off the workers where it may block
//! ([`resolve`]), socket options ([`sockopt`]), connecting and listening ([`open`]), the
//! non-blocking dial a worker drives ([`dial`]) and its poll(2) driver ([`blocking`]), the
//! hybrid-vsock reply ([`hybrid`]), an opened end ([`endpoint`]), admitting an accepted socket
//! ([`admit`]), and which socket a listening address binds ([`bindkey`]).

pub mod admit;
pub mod bindkey;
pub mod blocking;
pub mod dial;
pub mod endpoint;
pub mod hybrid;
pub mod open;
pub mod own;
pub mod peer;
pub mod resolve;
pub mod sockopt;
pub mod udp;
