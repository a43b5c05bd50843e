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
    UdpConnect(Family),
    UdpListen(Family),
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
    ("UDP", KindTag::UdpConnect(Family::Any)),
    ("UDP-CONNECT", KindTag::UdpConnect(Family::Any)),
    ("UDP4", KindTag::UdpConnect(Family::V4)),
    ("UDP4-CONNECT", KindTag::UdpConnect(Family::V4)),
    ("UDP6", KindTag::UdpConnect(Family::V6)),
    ("UDP6-CONNECT", KindTag::UdpConnect(Family::V6)),
    ("UDP-LISTEN", KindTag::UdpListen(Family::Any)),
    ("UDP-L", KindTag::UdpListen(Family::Any)),
    ("UDP4-LISTEN", KindTag::UdpListen(Family::V4)),
    ("UDP6-LISTEN", KindTag::UdpListen(Family::V6)),
];

impl KindTag {
    /// Every keyword of the table, aliases included (for the help and README checks).
    pub fn keywords() -> impl Iterator<Item = &'static str> {
        KEYWORDS.iter().map(|(k, _)| *k)
    }

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
            KindTag::UdpConnect(Family::Any) => "UDP",
            KindTag::UdpConnect(Family::V4) => "UDP4",
            KindTag::UdpConnect(Family::V6) => "UDP6",
            KindTag::UdpListen(Family::Any) => "UDP-LISTEN",
            KindTag::UdpListen(Family::V4) => "UDP4-LISTEN",
            KindTag::UdpListen(Family::V6) => "UDP6-LISTEN",
        }
    }

    /// The parameters the address type takes, as shown in "needs ..." messages.
    pub(super) fn form(self) -> &'static str {
        match self {
            KindTag::TcpConnect(_) | KindTag::UdpConnect(_) => "host:port",
            KindTag::TcpListen(_) | KindTag::VsockListen | KindTag::UdpListen(_) => "port",
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
