//! The address grammar: socat-style address strings turned into resolved [`Address`] values.
//!
//! Parsing is pure (no name lookups, no sockets), so every rule and error message here is
//! unit-tested. Stage one ([`lex()`]) splits the text; stage two ([`Address::parse`]) gives the
//! pieces meaning: it picks the address type from the keyword table (socat's aliases, case
//! insensitive), checks parameter counts and ranges, and checks that every option applies to
//! the address type, so that a typo fails before anything is opened.

mod address;
pub(crate) mod allow;
mod bind;
pub(crate) mod dest;
mod error;
mod kind;
mod lex;
mod options;
mod pair;
mod param;
mod secret;
pub(crate) mod size;

pub use lex::{LexError, RawAddress, RawOption, lex};
pub use size::{check_idle_timeout, parse_duration, parse_size};

pub use address::Address;
pub use error::AddressError;
pub use kind::{Bind, Family, Framing, KeywordDoc, Kind, KindTag, SocketType, keyword_docs};
pub use options::Secret;
pub use options::{
    DEFAULT_PROXY_TIMEOUT, OptionDoc, OptionHelp, Options, ProxyOptions, ProxyVersion,
    check_combinations as check_proxy_options, option_docs, option_names, parse_guest_cid,
};
pub use pair::{check_message_pair, check_pair};
pub use param::{UNIX_PATH_MAX, strip_brackets};
pub use secret::load_password;

#[cfg(test)]
mod proxy_tests;
#[cfg(test)]
mod tests;
