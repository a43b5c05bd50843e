//! What an address opens: the address types with their parameters ([`Kind`]), the rows of
//! the keyword table without them ([`KindTag`], socat's aliases, case-insensitive), and the
//! local address a `bind=` option names ([`Bind`]).

use std::path::PathBuf;

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
    /// A second address that speaks SOCKS5 to the first side's clients and connects each to
    /// the destination it asks for, if the `dest=` list allows it.
    Socks5Server,
    /// As [`Kind::Socks5Server`], for `CONNECT host:port HTTP/1.1`.
    HttpConnectServer,
    /// A UDP socket connected to `host:port`: each datagram is a message.
    UdpConnect {
        host: String,
        port: u16,
        family: Family,
    },
    /// A UDP socket bound to `port`: each sender address is a session.
    UdpListen {
        port: u16,
        family: Family,
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
    Socks5Server,
    HttpConnectServer,
    UdpConnect(Family),
    UdpListen(Family),
}

/// Keywords and their aliases, as socat spells them, with each address type's help, written
/// once for `--help`, the man page and `docs/manual.md`: the first row of a type carries its help
/// (`code` in backquotes), the rows after it are its aliases and carry [`ALIAS`].
const KEYWORDS: &[(&str, KindTag, Option<&str>)] = &[
    (
        "TCP",
        KindTag::TcpConnect(Family::Any),
        Some("connect; the name is resolved for every connection"),
    ),
    ("TCP-CONNECT", KindTag::TcpConnect(Family::Any), ALIAS),
    (
        "TCP4",
        KindTag::TcpConnect(Family::V4),
        Some("like `TCP`, IPv4 only"),
    ),
    ("TCP4-CONNECT", KindTag::TcpConnect(Family::V4), ALIAS),
    (
        "TCP6",
        KindTag::TcpConnect(Family::V6),
        Some("like `TCP`, IPv6 only"),
    ),
    ("TCP6-CONNECT", KindTag::TcpConnect(Family::V6), ALIAS),
    (
        "TCP-LISTEN",
        KindTag::TcpListen(Family::Any),
        Some("listen; dual-stack (`[::]`, IPv4 too)"),
    ),
    ("TCP-L", KindTag::TcpListen(Family::Any), ALIAS),
    (
        "TCP4-LISTEN",
        KindTag::TcpListen(Family::V4),
        Some("listen on IPv4 only"),
    ),
    ("TCP4-L", KindTag::TcpListen(Family::V4), ALIAS),
    (
        "TCP6-LISTEN",
        KindTag::TcpListen(Family::V6),
        Some("listen on IPv6 only"),
    ),
    ("TCP6-L", KindTag::TcpListen(Family::V6), ALIAS),
    (
        "UNIX-CONNECT",
        KindTag::UnixConnect,
        Some("connect to a UNIX stream socket"),
    ),
    ("UNIX", KindTag::UnixConnect, ALIAS),
    (
        "UNIX-LISTEN",
        KindTag::UnixListen,
        Some("listen; fails if the path exists (unless `unlink-early`); removes it on exit"),
    ),
    ("UNIX-L", KindTag::UnixListen, ALIAS),
    (
        "VSOCK-CONNECT",
        KindTag::VsockConnect,
        Some("connect; CID 2 is the host, 1 the local machine, `-1` any"),
    ),
    ("VSOCK", KindTag::VsockConnect, ALIAS),
    (
        "VSOCK-LISTEN",
        KindTag::VsockListen,
        Some("listen on any CID (`bind=CID` to restrict)"),
    ),
    ("VSOCK-L", KindTag::VsockListen, ALIAS),
    (
        "VSOCK-UDS-CONNECT",
        KindTag::VsockUdsConnect,
        Some(
            "hybrid vsock (Firecracker, cloud-hypervisor): connect to the VMM's UNIX socket and ask for guest port `port` (`CONNECT port`)",
        ),
    ),
    ("VSOCK-UDS", KindTag::VsockUdsConnect, ALIAS),
    (
        "VSOCK-UDS-LISTEN",
        KindTag::VsockUdsListen,
        Some(
            "hybrid vsock, guest-initiated: serve guest connections to host port `port`, which the VMM delivers at `path_port`",
        ),
    ),
    ("VSOCK-UDS-L", KindTag::VsockUdsListen, ALIAS),
    ("STDIO", KindTag::Stdio, Some("standard input and output")),
    ("-", KindTag::Stdio, ALIAS),
    (
        "ACCEPT-FD",
        KindTag::AcceptFd,
        Some(
            "a listening socket inherited as descriptor `fd` (systemd socket activation), with `fork`",
        ),
    ),
    (
        "SOCKS5-SERVER",
        KindTag::Socks5Server,
        Some(
            "second address only: a SOCKS5 proxy (RFC 1928, CONNECT) for the first side's clients, each connected where it asks if a `dest=` entry allows it",
        ),
    ),
    (
        "HTTP-CONNECT-SERVER",
        KindTag::HttpConnectServer,
        Some("second address only: the same for `CONNECT host:port HTTP/1.1` requests"),
    ),
    (
        "UDP",
        KindTag::UdpConnect(Family::Any),
        Some("a UDP socket connected to host:port; each datagram is a message"),
    ),
    ("UDP-CONNECT", KindTag::UdpConnect(Family::Any), ALIAS),
    (
        "UDP4",
        KindTag::UdpConnect(Family::V4),
        Some("like `UDP`, IPv4 only"),
    ),
    ("UDP4-CONNECT", KindTag::UdpConnect(Family::V4), ALIAS),
    (
        "UDP6",
        KindTag::UdpConnect(Family::V6),
        Some("like `UDP`, IPv6 only"),
    ),
    ("UDP6-CONNECT", KindTag::UdpConnect(Family::V6), ALIAS),
    (
        "UDP-LISTEN",
        KindTag::UdpListen(Family::Any),
        Some(
            "first address only: a session per sender (with `fork`: every sender; without: the first), ended after `-T` idle seconds (60 s by default for UDP)",
        ),
    ),
    ("UDP-L", KindTag::UdpListen(Family::Any), ALIAS),
    (
        "UDP4-LISTEN",
        KindTag::UdpListen(Family::V4),
        Some("like `UDP-LISTEN`, IPv4 only"),
    ),
    (
        "UDP6-LISTEN",
        KindTag::UdpListen(Family::V6),
        Some("like `UDP-LISTEN`, IPv6 only"),
    ),
];

/// The help column of an alias row: the alias shares its address type's help.
const ALIAS: Option<&str> = None;

/// One address type as the help shows it: read from the keyword table, so `--help`, the man page
/// and `docs/manual.md` list every keyword and alias the grammar accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeywordDoc {
    pub tag: KindTag,
    /// How the address is written: `TCP:host:port`, `STDIO`.
    pub usage: String,
    /// The other spellings, each with its `:` when the type takes parameters.
    pub aliases: Vec<String>,
    /// What it does (`code` in backquotes).
    pub help: &'static str,
}

/// Every address type in table order, with its aliases and help.
pub fn keyword_docs() -> Vec<KeywordDoc> {
    let spell = |keyword: &str, tag: KindTag| match tag.form() {
        NO_PARAMETERS => keyword.to_string(),
        _ => format!("{keyword}:"),
    };
    let mut docs: Vec<KeywordDoc> = Vec::new();
    for &(keyword, tag, help) in KEYWORDS {
        match docs.iter_mut().find(|d| d.tag == tag) {
            Some(doc) => doc.aliases.push(spell(keyword, tag)),
            None => docs.push(KeywordDoc {
                tag,
                usage: match tag.form() {
                    NO_PARAMETERS => keyword.to_string(),
                    form => format!("{keyword}:{form}"),
                },
                aliases: Vec::new(),
                help: help.unwrap_or_else(|| panic!("{keyword}: a type's first row has its help")),
            }),
        }
    }
    docs
}

/// [`KindTag::form`] of a type that takes no parameters.
const NO_PARAMETERS: &str = "no parameters";

impl KindTag {
    /// Every keyword of the table, aliases included (for the help and manual checks).
    pub fn keywords() -> impl Iterator<Item = &'static str> {
        KEYWORDS.iter().map(|(k, _, _)| *k)
    }

    /// Looks a keyword up, ignoring case.
    pub fn from_keyword(keyword: &str) -> Option<KindTag> {
        KEYWORDS
            .iter()
            .find(|(name, _, _)| name.eq_ignore_ascii_case(keyword))
            .map(|(_, tag, _)| *tag)
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
            KindTag::Socks5Server => "SOCKS5-SERVER",
            KindTag::HttpConnectServer => "HTTP-CONNECT-SERVER",
            KindTag::UdpConnect(Family::Any) => "UDP",
            KindTag::UdpConnect(Family::V4) => "UDP4",
            KindTag::UdpConnect(Family::V6) => "UDP6",
            KindTag::UdpListen(Family::Any) => "UDP-LISTEN",
            KindTag::UdpListen(Family::V4) => "UDP4-LISTEN",
            KindTag::UdpListen(Family::V6) => "UDP6-LISTEN",
        }
    }

    /// The parameters the address type takes, as shown in "needs ..." messages.
    pub fn form(self) -> &'static str {
        match self {
            KindTag::TcpConnect(_) | KindTag::UdpConnect(_) => "host:port",
            KindTag::TcpListen(_) | KindTag::VsockListen | KindTag::UdpListen(_) => "port",
            KindTag::UnixConnect | KindTag::UnixListen => "path",
            KindTag::VsockConnect => "cid:port",
            KindTag::VsockUdsConnect | KindTag::VsockUdsListen => "path:port",
            KindTag::Stdio | KindTag::Socks5Server | KindTag::HttpConnectServer => NO_PARAMETERS,
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
                | KindTag::UdpListen(_)
        )
    }

    pub fn is_connector(self) -> bool {
        matches!(
            self,
            KindTag::TcpConnect(_)
                | KindTag::UnixConnect
                | KindTag::VsockConnect
                | KindTag::VsockUdsConnect
                | KindTag::UdpConnect(_)
        )
    }

    /// A proxy: the second address, connecting each client where it asks to go.
    pub fn is_proxy(self) -> bool {
        matches!(self, KindTag::Socks5Server | KindTag::HttpConnectServer)
    }

    /// Whether the address is UDP (its datagrams are messages).
    pub fn is_udp(self) -> bool {
        matches!(self, KindTag::UdpConnect(_) | KindTag::UdpListen(_))
    }

    pub(super) fn is_tcp(self) -> bool {
        matches!(self, KindTag::TcpConnect(_) | KindTag::TcpListen(_))
    }

    /// Whether the address is a stream socket (or may be one: an inherited descriptor), which
    /// `framing=` can carry messages over.
    pub(super) fn is_stream_socket(self) -> bool {
        !matches!(self, KindTag::Stdio) && !self.is_udp()
    }

    pub(super) fn is_socket(self) -> bool {
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
            Kind::Socks5Server => KindTag::Socks5Server,
            Kind::HttpConnectServer => KindTag::HttpConnectServer,
            Kind::UdpConnect { family, .. } => KindTag::UdpConnect(*family),
            Kind::UdpListen { family, .. } => KindTag::UdpListen(*family),
        }
    }
}

/// The socket type an address asks for (`socktype=`, socat's numbers: 1 stream, 5 seqpacket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketType {
    Stream,
    /// SOCK_SEQPACKET: a connection that keeps each message's boundaries.
    Seqpacket,
}

/// How messages travel over a stream (`framing=`): `len16` is a 2-byte big-endian length,
/// then the message (DNS over TCP, RFC 1035 4.2.2, RFC 7766).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Len16,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_first_row_of_each_address_type_carries_help() {
        for (i, (keyword, tag, help)) in KEYWORDS.iter().enumerate() {
            let first = KEYWORDS[..i].iter().all(|(_, t, _)| t != tag);
            assert_eq!(
                help.is_some(),
                first,
                "{keyword}: help on exactly a type's first row"
            );
            if first {
                assert_eq!(
                    *keyword,
                    tag.name(),
                    "a type's first row is its canonical name"
                );
            }
        }
        let docs = keyword_docs();
        assert_eq!(docs[0].usage, "TCP:host:port");
        assert_eq!(docs[0].aliases, ["TCP-CONNECT:"]);
        let stdio = docs.iter().find(|d| d.tag == KindTag::Stdio).unwrap();
        assert_eq!(
            (stdio.usage.as_str(), &stdio.aliases[..]),
            ("STDIO", &["-".to_string()][..])
        );
    }
}
