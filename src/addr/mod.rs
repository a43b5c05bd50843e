//! The address grammar: socat-style address strings turned into resolved [`Address`] values.
//!
//! Parsing is pure (no name lookups, no sockets), so every rule and error message here is
//! unit-tested. Stage one ([`lex`]) splits the text; stage two ([`Address::parse`]) gives the
//! pieces meaning: it picks the address type from the keyword table (socat's aliases, case
//! insensitive), checks parameter counts and ranges, and checks that every option applies to
//! the address type, so that a typo fails before anything is opened.

pub mod allow;
mod bind;
mod lex;
mod options;
mod pair;
pub mod size;

use std::fmt;
use std::path::PathBuf;

pub use lex::{LexError, RawAddress, RawOption, lex};
pub use size::{check_idle_timeout, parse_duration, parse_size};

pub use options::Options;
pub use pair::check_pair;

use options::apply_option;

/// IP family restriction of a TCP address (`TCP4`, `TCP6`, or either).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Any,
    V4,
    V6,
}

/// What an address opens, with its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    TcpConnect {
        host: String,
        port: u16,
        family: Family,
    },
    TcpListen {
        port: u16,
        family: Family,
    },
    UnixConnect {
        path: PathBuf,
    },
    UnixListen {
        path: PathBuf,
    },
    VsockConnect {
        cid: u32,
        port: u32,
    },
    VsockListen {
        port: u32,
    },
    /// Connect to a VMM's hybrid-vsock UNIX socket and ask for a guest port.
    VsockUdsConnect {
        path: PathBuf,
        port: u32,
    },
    /// Accept guest connections to host port `port`, delivered at `<path>_<port>`.
    VsockUdsListen {
        path: PathBuf,
        port: u32,
    },
    Stdio,
    /// A listening socket inherited as descriptor `fd` (systemd socket activation; socat
    /// 1.8's name).
    AcceptFd {
        fd: i32,
    },
}

/// Address types without their parameters: the rows of the keyword table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KindTag {
    TcpConnect(Family),
    TcpListen(Family),
    UnixConnect,
    UnixListen,
    VsockConnect,
    VsockListen,
    VsockUdsConnect,
    VsockUdsListen,
    Stdio,
    AcceptFd,
}

/// Keywords and their aliases, as socat spells them.
const KEYWORDS: &[(&str, KindTag)] = &[
    ("TCP", KindTag::TcpConnect(Family::Any)),
    ("TCP-CONNECT", KindTag::TcpConnect(Family::Any)),
    ("TCP4", KindTag::TcpConnect(Family::V4)),
    ("TCP4-CONNECT", KindTag::TcpConnect(Family::V4)),
    ("TCP6", KindTag::TcpConnect(Family::V6)),
    ("TCP6-CONNECT", KindTag::TcpConnect(Family::V6)),
    ("TCP-LISTEN", KindTag::TcpListen(Family::Any)),
    ("TCP-L", KindTag::TcpListen(Family::Any)),
    ("TCP4-LISTEN", KindTag::TcpListen(Family::V4)),
    ("TCP4-L", KindTag::TcpListen(Family::V4)),
    ("TCP6-LISTEN", KindTag::TcpListen(Family::V6)),
    ("TCP6-L", KindTag::TcpListen(Family::V6)),
    ("UNIX-CONNECT", KindTag::UnixConnect),
    ("UNIX", KindTag::UnixConnect),
    ("UNIX-LISTEN", KindTag::UnixListen),
    ("UNIX-L", KindTag::UnixListen),
    ("VSOCK-CONNECT", KindTag::VsockConnect),
    ("VSOCK", KindTag::VsockConnect),
    ("VSOCK-LISTEN", KindTag::VsockListen),
    ("VSOCK-L", KindTag::VsockListen),
    ("VSOCK-UDS-CONNECT", KindTag::VsockUdsConnect),
    ("VSOCK-UDS", KindTag::VsockUdsConnect),
    ("VSOCK-UDS-LISTEN", KindTag::VsockUdsListen),
    ("VSOCK-UDS-L", KindTag::VsockUdsListen),
    ("STDIO", KindTag::Stdio),
    ("-", KindTag::Stdio),
    ("ACCEPT-FD", KindTag::AcceptFd),
];

impl KindTag {
    /// Looks a keyword up, ignoring case.
    pub fn from_keyword(keyword: &str) -> Option<KindTag> {
        KEYWORDS
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(keyword))
            .map(|(_, tag)| *tag)
    }

    /// The canonical keyword, used in messages.
    pub fn name(self) -> &'static str {
        match self {
            KindTag::TcpConnect(Family::Any) => "TCP",
            KindTag::TcpConnect(Family::V4) => "TCP4",
            KindTag::TcpConnect(Family::V6) => "TCP6",
            KindTag::TcpListen(Family::Any) => "TCP-LISTEN",
            KindTag::TcpListen(Family::V4) => "TCP4-LISTEN",
            KindTag::TcpListen(Family::V6) => "TCP6-LISTEN",
            KindTag::UnixConnect => "UNIX-CONNECT",
            KindTag::UnixListen => "UNIX-LISTEN",
            KindTag::VsockConnect => "VSOCK-CONNECT",
            KindTag::VsockListen => "VSOCK-LISTEN",
            KindTag::VsockUdsConnect => "VSOCK-UDS-CONNECT",
            KindTag::VsockUdsListen => "VSOCK-UDS-LISTEN",
            KindTag::Stdio => "STDIO",
            KindTag::AcceptFd => "ACCEPT-FD",
        }
    }

    /// The parameters the address type takes, as shown in "needs ..." messages.
    fn form(self) -> &'static str {
        match self {
            KindTag::TcpConnect(_) => "host:port",
            KindTag::TcpListen(_) | KindTag::VsockListen => "port",
            KindTag::UnixConnect | KindTag::UnixListen => "path",
            KindTag::VsockConnect => "cid:port",
            KindTag::VsockUdsConnect | KindTag::VsockUdsListen => "path:port",
            KindTag::Stdio => "no parameters",
            KindTag::AcceptFd => "fd",
        }
    }

    pub fn is_listener(self) -> bool {
        matches!(
            self,
            KindTag::TcpListen(_)
                | KindTag::UnixListen
                | KindTag::VsockListen
                | KindTag::VsockUdsListen
                | KindTag::AcceptFd
        )
    }

    pub fn is_connector(self) -> bool {
        matches!(
            self,
            KindTag::TcpConnect(_)
                | KindTag::UnixConnect
                | KindTag::VsockConnect
                | KindTag::VsockUdsConnect
        )
    }

    fn is_tcp(self) -> bool {
        matches!(self, KindTag::TcpConnect(_) | KindTag::TcpListen(_))
    }

    fn is_socket(self) -> bool {
        self != KindTag::Stdio
    }
}

impl Kind {
    pub fn tag(&self) -> KindTag {
        match self {
            Kind::TcpConnect { family, .. } => KindTag::TcpConnect(*family),
            Kind::TcpListen { family, .. } => KindTag::TcpListen(*family),
            Kind::UnixConnect { .. } => KindTag::UnixConnect,
            Kind::UnixListen { .. } => KindTag::UnixListen,
            Kind::VsockConnect { .. } => KindTag::VsockConnect,
            Kind::VsockListen { .. } => KindTag::VsockListen,
            Kind::VsockUdsConnect { .. } => KindTag::VsockUdsConnect,
            Kind::VsockUdsListen { .. } => KindTag::VsockUdsListen,
            Kind::Stdio => KindTag::Stdio,
            Kind::AcceptFd { .. } => KindTag::AcceptFd,
        }
    }
}

/// Where a socket binds before it listens or connects (`bind=`), typed by address family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bind {
    /// `host[:port]`; an IPv6 host is written in brackets.
    Inet { host: String, port: Option<u16> },
    /// A client-side path for UNIX sockets.
    Unix(PathBuf),
    /// `[cid][:port]`.
    Vsock { cid: Option<u32>, port: Option<u32> },
}

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

/// A fully parsed address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// The address as the user wrote it, for messages.
    pub text: String,
    pub kind: Kind,
    pub options: Options,
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The longest UNIX socket path the kernel accepts (sun_path minus the terminating NUL).
pub const UNIX_PATH_MAX: usize = 107;

fn parse_port(text: &str) -> Result<u16, AddressError> {
    match text.parse::<u64>() {
        Ok(n) if n <= u16::MAX as u64 => Ok(n as u16),
        Ok(_) => Err(AddressError::PortRange(text.to_string())),
        Err(_) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => {
            Err(AddressError::PortRange(text.to_string()))
        }
        Err(_) => Err(AddressError::PortNotNumber(text.to_string())),
    }
}

/// Parses a u32 that may also be written `-1` (all ones: "any").
fn parse_u32_or_any(text: &str) -> Option<u32> {
    if text == "-1" {
        return Some(u32::MAX);
    }
    if let Some(hex) = text.strip_prefix("0x") {
        return u32::from_str_radix(hex, 16).ok();
    }
    text.parse::<u32>().ok()
}

fn parse_cid(text: &str) -> Result<u32, AddressError> {
    parse_u32_or_any(text).ok_or_else(|| AddressError::Cid(text.to_string()))
}

fn parse_vsock_port(text: &str) -> Result<u32, AddressError> {
    parse_u32_or_any(text).ok_or_else(|| AddressError::VsockPort(text.to_string()))
}

fn parse_path(text: &str, kind: &'static str) -> Result<PathBuf, AddressError> {
    if text.is_empty() {
        return Err(AddressError::EmptyPath(kind));
    }
    if text.contains('\0') {
        return Err(AddressError::PathNul {
            kind,
            path: text.replace('\0', "\\0"),
        });
    }
    if text.len() > UNIX_PATH_MAX {
        return Err(AddressError::PathTooLong {
            path: text.to_string(),
            len: text.len(),
        });
    }
    Ok(PathBuf::from(text))
}

/// Removes the brackets around an IPv6 literal: `[::1]` -> `::1`.
pub fn strip_brackets(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

fn parse_host(text: &str, kind: &'static str) -> Result<String, AddressError> {
    let host = strip_brackets(text);
    if host.is_empty() {
        return Err(AddressError::EmptyHost(kind));
    }
    Ok(host.to_string())
}

impl Address {
    /// Parses one address string (stage two: meaning, ranges, option applicability).
    pub fn parse(text: &str) -> Result<Address, AddressError> {
        let raw = lex(text).map_err(AddressError::Lex)?;
        let tag = KindTag::from_keyword(&raw.keyword)
            .ok_or_else(|| AddressError::UnknownType(raw.keyword.clone()))?;
        let kind = Self::kind_from_params(tag, &raw.params)?;
        let mut options = Options::default();
        for option in &raw.options {
            apply_option(&mut options, tag, option)?;
        }
        // After every option: `bind=` may come after `allow=`.
        if let Some(allow) = &options.allow {
            allow
                .fits_listener(&kind, options.bind.as_ref())
                .map_err(AddressError::AllowNeverMatches)?;
        }
        Ok(Address {
            text: text.to_string(),
            kind,
            options,
        })
    }

    fn kind_from_params(tag: KindTag, params: &[String]) -> Result<Kind, AddressError> {
        let wrong = || AddressError::Parameters {
            kind: tag.name(),
            form: tag.form(),
        };
        let name = tag.name();
        Ok(match (tag, params) {
            (KindTag::TcpConnect(family), [host, port]) => Kind::TcpConnect {
                host: parse_host(host, name)?,
                port: parse_port(port)?,
                family,
            },
            (KindTag::TcpListen(family), [port]) => Kind::TcpListen {
                port: parse_port(port)?,
                family,
            },
            (KindTag::UnixConnect, [path]) => Kind::UnixConnect {
                path: parse_path(path, name)?,
            },
            (KindTag::UnixListen, [path]) => Kind::UnixListen {
                path: parse_path(path, name)?,
            },
            (KindTag::VsockConnect, [cid, port]) => Kind::VsockConnect {
                cid: parse_cid(cid)?,
                port: parse_vsock_port(port)?,
            },
            (KindTag::VsockListen, [port]) => Kind::VsockListen {
                port: parse_vsock_port(port)?,
            },
            (KindTag::VsockUdsConnect, [path, port]) => Kind::VsockUdsConnect {
                path: parse_path(path, name)?,
                port: parse_vsock_port(port)?,
            },
            (KindTag::VsockUdsListen, [path, port]) => {
                let port = parse_vsock_port(port)?;
                let path = parse_path(path, name)?;
                // The VMM listens at `<path>_<port>`: that full path must fit too.
                let full = format!("{}_{}", path.display(), port);
                if full.len() > UNIX_PATH_MAX {
                    return Err(AddressError::PathTooLong {
                        len: full.len(),
                        path: full,
                    });
                }
                Kind::VsockUdsListen { path, port }
            }
            (KindTag::Stdio, []) => Kind::Stdio,
            (KindTag::Stdio, _) => return Err(AddressError::NoParameters { kind: name }),
            (KindTag::AcceptFd, [fd]) => Kind::AcceptFd {
                fd: fd
                    .parse::<i32>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| AddressError::Fd(fd.to_string()))?,
            },
            _ => return Err(wrong()),
        })
    }

    pub fn is_listener(&self) -> bool {
        self.kind.tag().is_listener()
    }

    pub fn is_connector(&self) -> bool {
        self.kind.tag().is_connector()
    }
}

#[cfg(test)]
mod tests;
