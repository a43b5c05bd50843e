//! A resolved address ([`Address`]): stage two of parsing, which gives the lexed pieces
//! meaning: picks the type from the keyword table, checks parameter counts and ranges, and
//! applies each option, failing on one that does not apply to the type.

use std::fmt;

use super::error::AddressError;
use super::kind::{Kind, KindTag, SocketType};
use super::lex::lex;
use super::options::{Options, apply_option};
use super::param::{
    UNIX_PATH_MAX, parse_cid, parse_host, parse_path, parse_port, parse_vsock_port,
};

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

/// A proxy needs a destination allow list (no open proxy), and `user=` and
/// `password-file=` together or not at all.
fn check_proxy(tag: KindTag, options: &Options) -> Result<(), AddressError> {
    if options.proxy.dest.is_none() {
        return Err(AddressError::Proxy(format!(
            "{} needs at least one dest=HOST:PORT entry: an open proxy is never started",
            tag.name()
        )));
    }
    if options.proxy.user.is_some() != options.proxy.password_file.is_some() {
        return Err(AddressError::Proxy(format!(
            "{} needs user= and password-file= together",
            tag.name()
        )));
    }
    Ok(())
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
        super::options::check_combinations(&options)?;
        // After every option: `bind=` may come after `allow=`.
        if let Some(allow) = &options.allow {
            allow
                .fits_listener(&kind, options.bind.as_ref())
                .map_err(AddressError::AllowNeverMatches)?;
        }
        if tag.is_proxy() {
            check_proxy(tag, &options)?;
        }
        if options.framing.is_some() && options.socktype == Some(SocketType::Seqpacket) {
            return Err(AddressError::OptionValue {
                option: "framing".into(),
                value: "len16".into(),
                why: "framing carries messages over a stream, and socktype=seqpacket keeps \
                      them without it: use one of the two"
                    .into(),
            });
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
            (KindTag::UdpConnect(family), [host, port]) => Kind::UdpConnect {
                host: parse_host(host, name)?,
                port: parse_port(port)?,
                family,
            },
            (KindTag::UdpListen(family), [port]) => Kind::UdpListen {
                port: parse_port(port)?,
                family,
            },
            (KindTag::Stdio, []) => Kind::Stdio,
            (KindTag::Socks5Server, []) => Kind::Socks5Server,
            (KindTag::HttpConnectServer, []) => Kind::HttpConnectServer,
            (KindTag::Stdio | KindTag::Socks5Server | KindTag::HttpConnectServer, _) => {
                return Err(AddressError::NoParameters { kind: name });
            }
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

    /// A proxy address (`SOCKS5-SERVER`, `HTTP-CONNECT-SERVER`).
    pub fn is_proxy(&self) -> bool {
        self.kind.tag().is_proxy()
    }

    pub fn is_connector(&self) -> bool {
        self.kind.tag().is_connector()
    }

    /// Whether the address carries messages, each with its boundaries (SOCK_SEQPACKET), as
    /// far as its text says (an inherited descriptor's type is read when it is taken).
    pub fn is_message(&self) -> bool {
        self.options.socktype == Some(SocketType::Seqpacket) || self.kind.tag().is_udp()
    }
}
