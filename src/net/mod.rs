//! Opening the relay's ends: name resolution, off the workers where it may block
//! ([`resolve`]), socket options ([`sockopt`]), connecting and listening ([`open`]), the non-blocking dial a worker drives ([`dial`]),
//! an opened end ([`endpoint`]), and admitting an accepted socket ([`admit`]).

pub mod admit;
pub mod dial;
pub mod endpoint;
pub mod open;
pub mod resolve;
pub mod sockopt;
