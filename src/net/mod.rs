//! Opening the relay's ends: name resolution, off the workers where it may block
//! ([`resolve`]), socket options ([`sockopt`]), connecting and listening ([`open`]), the non-blocking dial a worker drives ([`dial`]),
//! an opened end ([`endpoint`]), admitting an accepted socket ([`admit`]), and which socket a
//! listening address binds ([`bindkey`]).

pub mod admit;
pub mod bindkey;
pub mod dial;
pub mod endpoint;
pub mod open;
pub mod peer;
pub mod resolve;
pub mod sockopt;
pub mod udp;
