//! What can be wrong with an address: every message names the token at fault.

use super::lex::LexError;

/// Why an address string was rejected. Each message names the offending token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("{0}")]
    Lex(LexError),
    #[error("unknown address type \"{0}\"")]
    UnknownType(String),
    #[error("{kind} needs {form}")]
    Parameters {
        kind: &'static str,
        form: &'static str,
    },
    #[error("{kind} takes no parameters")]
    NoParameters { kind: &'static str },
    #[error("port {0} out of range 0-65535")]
    PortRange(String),
    #[error("port \"{0}\" is not a number")]
    PortNotNumber(String),
    #[error("vsock port \"{0}\" is not a number 0-4294967295 (or -1 for any)")]
    VsockPort(String),
    #[error("cid \"{0}\" is not a number 0-4294967295 (or -1 for any)")]
    Cid(String),
    #[error("descriptor \"{0}\" is not a number 0-2147483647")]
    Fd(String),
    #[error("empty host in {0}")]
    EmptyHost(&'static str),
    #[error("empty path in {0}")]
    EmptyPath(&'static str),
    #[error("UNIX socket path \"{path}\" is {len} bytes, longer than the kernel's 107")]
    PathTooLong { path: String, len: usize },
    /// `path` is shown escaped (`\0`): a socket path is a C string, it cannot hold a NUL.
    #[error("{kind} path \"{path}\" holds a NUL byte, which no socket path can")]
    PathNul { kind: &'static str, path: String },
    /// An allow list that can never match a peer of its listener (the message names both).
    #[error("{0}")]
    AllowNeverMatches(String),
    /// A proxy address without what it needs (the message names the keyword).
    #[error("{0}")]
    Proxy(String),
    #[error("option \"{option}\" is not valid for {kind}")]
    OptionNotValid { option: String, kind: &'static str },
    #[error("option \"{option}\" needs a value ({option}{hint})")]
    OptionNeedsValue { option: String, hint: &'static str },
    #[error("invalid value \"{value}\" for option \"{option}\": {why}")]
    OptionValue {
        option: String,
        value: String,
        why: String,
    },
}
