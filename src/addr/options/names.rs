//! The table of address options, one definition per option: every name and alias
//! ([`OPTION_NAMES`]), the address types each option applies to, how its value is written, and
//! its help. `--help`, the man page and `docs/manual.md` read their option tables from here
//! ([`option_docs`], [`option_names`]), and [`super::apply_option`] looks names up here, so a
//! new option is one row and one match arm in each method of [`OptName`].

use crate::addr::kind::KindTag;

/// Option names and their aliases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OptName {
    Fork,
    MaxChildren,
    Backlog,
    ReuseAddr,
    ReusePort,
    Bind,
    ConnectTimeout,
    RcvBuf,
    SndBuf,
    NoDelay,
    KeepAlive,
    KeepIdle,
    KeepIntvl,
    KeepCnt,
    UnlinkEarly,
    Retry,
    Interval,
    Allow,
    Dest,
    User,
    PasswordFile,
    SendProxy,
    ProxyCrc,
    ProxyUniqueId,
    AcceptProxy,
    ProxyTimeout,
    AllowSource,
    GuestCid,
    SockType,
    Framing,
}

/// Option names and their aliases, with each option's help, written once for `--help`, the
/// man page and `docs/manual.md`: the first row of an option carries its help (`code` in backquotes),
/// the rows of its aliases carry [`ALIAS`].
const OPTION_NAMES: &[(&str, OptName, Option<OptionHelp>)] = &[
    (
        "fork",
        OptName::Fork,
        help(
            "listeners",
            "keep accepting; serve connections concurrently (no processes)",
        ),
    ),
    (
        "max-children",
        OptName::MaxChildren,
        help(
            "listeners with `fork`",
            "at most N connections at once; further clients wait in the backlog",
        ),
    ),
    (
        "backlog",
        OptName::Backlog,
        help("listeners", "listen backlog (default 1024)"),
    ),
    (
        "reuseaddr",
        OptName::ReuseAddr,
        help("TCP", "SO_REUSEADDR (on by default for TCP listeners)"),
    ),
    ("so-reuseaddr", OptName::ReuseAddr, ALIAS),
    ("reuseport", OptName::ReusePort, help("TCP", "SO_REUSEPORT")),
    ("so-reuseport", OptName::ReusePort, ALIAS),
    (
        "bind",
        OptName::Bind,
        help(
            "TCP, UDP (`host[:port]`), UNIX-CONNECT (`path`), VSOCK (`[cid][:port]`)",
            "local address",
        ),
    ),
    (
        "connect-timeout",
        OptName::ConnectTimeout,
        help(
            "connect addresses",
            "bound each connect attempt (and the hybrid-vsock handshake)",
        ),
    ),
    (
        "rcvbuf",
        OptName::RcvBuf,
        help(
            "sockets",
            "SO_RCVBUF; on vsock it sets the vsock buffer size",
        ),
    ),
    ("so-rcvbuf", OptName::RcvBuf, ALIAS),
    ("sndbuf", OptName::SndBuf, help("sockets", "SO_SNDBUF")),
    ("so-sndbuf", OptName::SndBuf, ALIAS),
    ("nodelay", OptName::NoDelay, help("TCP", "TCP_NODELAY")),
    ("tcp-nodelay", OptName::NoDelay, ALIAS),
    ("keepalive", OptName::KeepAlive, help("TCP", "SO_KEEPALIVE")),
    ("so-keepalive", OptName::KeepAlive, ALIAS),
    (
        "keepidle",
        OptName::KeepIdle,
        help(
            "TCP",
            "seconds without data before the first keepalive probe (TCP_KEEPIDLE, 1-32767; implies `keepalive`)",
        ),
    ),
    ("tcp-keepidle", OptName::KeepIdle, ALIAS),
    (
        "keepintvl",
        OptName::KeepIntvl,
        help(
            "TCP",
            "seconds between keepalive probes (TCP_KEEPINTVL, 1-32767; implies `keepalive`)",
        ),
    ),
    ("tcp-keepintvl", OptName::KeepIntvl, ALIAS),
    (
        "keepcnt",
        OptName::KeepCnt,
        help(
            "TCP",
            "probes without answer before the connection is dropped (TCP_KEEPCNT, 1-127; implies `keepalive`)",
        ),
    ),
    ("tcp-keepcnt", OptName::KeepCnt, ALIAS),
    (
        "unlink-early",
        OptName::UnlinkEarly,
        help(
            "UNIX-LISTEN, VSOCK-UDS-LISTEN",
            "remove a stale socket file before binding",
        ),
    ),
    (
        "retry",
        OptName::Retry,
        help(
            "connect addresses",
            "N more connect attempts after the first fails, `interval` apart",
        ),
    ),
    (
        "interval",
        OptName::Interval,
        help(
            "connect addresses",
            "pause between connect attempts (default 1 s)",
        ),
    ),
    (
        "allow",
        OptName::Allow,
        help(
            "listeners (repeat it)",
            "serve only peers that fit an entry: an IP network (`10.0.0.0/8`), `cid:N[-M]` (vsock), `uid:N[-M]` (UNIX); others are refused (TCP with a reset) before anything is dialed",
        ),
    ),
    (
        "dest",
        OptName::Dest,
        help(
            "`SOCKS5-SERVER`, `HTTP-CONNECT-SERVER` (required; repeat it)",
            "a destination the proxy may connect to: `HOST:PORT`, `*.example.com:443`, `10.0.0.0/8:5432`, ports as `N-M`; a name entry never dials the machine's own or loopback addresses, a network entry matches the resolved address",
        ),
    ),
    (
        "user",
        OptName::User,
        help(
            "`SOCKS5-SERVER`, `HTTP-CONNECT-SERVER`",
            "the user name clients must give (RFC 1929, `Proxy-Authorization: Basic`), with `password-file`",
        ),
    ),
    (
        "password-file",
        OptName::PasswordFile,
        help(
            "`SOCKS5-SERVER`, `HTTP-CONNECT-SERVER`",
            "the file whose first line is that user's password (read again at reload)",
        ),
    ),
    (
        "send-proxy",
        OptName::SendProxy,
        help(
            "connect addresses",
            "write a PROXY protocol header (`v1` or `v2`; bare: `v2`) first on each dialed connection, naming the accepted client (a vsock client's CID and port in a TLV of type 0xE3)",
        ),
    ),
    (
        "proxy-crc",
        OptName::ProxyCrc,
        help(
            "connect addresses with `send-proxy=v2`",
            "add a CRC32C TLV to the header",
        ),
    ),
    (
        "proxy-unique-id",
        OptName::ProxyUniqueId,
        help(
            "connect addresses with `send-proxy=v2`",
            "add a per-connection unique id TLV (0x05), also logged",
        ),
    ),
    (
        "accept-proxy",
        OptName::AcceptProxy,
        help(
            "listeners",
            "read a PROXY protocol header (v1 or v2) first on each connection: its declared client is what logs and a `send-proxy` carry on; a bad, oversized or late header resets that connection before anything is dialed",
        ),
    ),
    (
        "proxy-timeout",
        OptName::ProxyTimeout,
        help(
            "listeners with `accept-proxy`",
            "how long the header may take to arrive whole (default 5 s)",
        ),
    ),
    (
        "allow-source",
        OptName::AllowSource,
        help(
            "listeners with `accept-proxy` (repeat it)",
            "serve only declared clients that fit an entry (the entries of `allow`, which still checks the real peer)",
        ),
    ),
    (
        "guest-cid",
        OptName::GuestCid,
        help(
            "VSOCK-UDS-LISTEN",
            "the guest's CID, 3-4294967294: `send-proxy` declares each connection (the guest's, to host port P) as from vsock CID N to CID 2 port P; the guest's own port is unknown and written as 4294967295",
        ),
    ),
    (
        "socktype",
        OptName::SockType,
        help(
            "UNIX-LISTEN, UNIX-CONNECT, VSOCK-LISTEN, VSOCK-CONNECT",
            "`5` or `seqpacket`: a SOCK_SEQPACKET socket, each message kept whole (`1`: a stream)",
        ),
    ),
    ("so-type", OptName::SockType, ALIAS),
    (
        "framing",
        OptName::Framing,
        help(
            "stream addresses opposite a message address",
            "each message travels on the stream behind a 2-byte big-endian length (DNS over TCP, RFC 7766)",
        ),
    ),
];

/// What an option's help says: whom it applies to and what it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHelp {
    pub applies_to: &'static str,
    pub meaning: &'static str,
}

const fn help(applies_to: &'static str, meaning: &'static str) -> Option<OptionHelp> {
    Some(OptionHelp {
        applies_to,
        meaning,
    })
}

/// The help column of an alias row: the alias shares its option's help.
const ALIAS: Option<OptionHelp> = None;

/// One option as the help shows it, read from the table of option names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionDoc {
    /// How the option is written: `fork`, `max-children=N`.
    pub usage: String,
    pub aliases: Vec<&'static str>,
    pub help: OptionHelp,
}

/// Every option in table order, with its aliases and help.
pub fn option_docs() -> Vec<OptionDoc> {
    let mut docs: Vec<(OptName, OptionDoc)> = Vec::new();
    for &(name, opt, help) in OPTION_NAMES {
        match docs.iter_mut().find(|(o, _)| *o == opt) {
            Some((_, doc)) => doc.aliases.push(name),
            None => docs.push((
                opt,
                OptionDoc {
                    usage: format!("{name}{}", opt.value_hint()),
                    aliases: Vec::new(),
                    help: help
                        .unwrap_or_else(|| panic!("{name}: an option's first row has its help")),
                },
            )),
        }
    }
    docs.into_iter().map(|(_, doc)| doc).collect()
}

/// Every option name, aliases included, and whether it is its option's first (canonical)
/// spelling (for the help and manual checks).
pub fn option_names() -> impl Iterator<Item = (&'static str, bool)> {
    OPTION_NAMES.iter().enumerate().map(|(i, (name, opt, _))| {
        let first = OPTION_NAMES[..i].iter().all(|(_, o, _)| o != opt);
        (*name, first)
    })
}

impl OptName {
    pub(super) fn lookup(name: &str) -> Option<OptName> {
        OPTION_NAMES
            .iter()
            .find(|(n, _, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, o, _)| *o)
    }

    /// Whether the option means anything for this address type.
    pub(super) fn applies_to(self, tag: KindTag) -> bool {
        match self {
            OptName::Fork | OptName::MaxChildren | OptName::Backlog | OptName::Allow => {
                tag.is_listener()
            }
            OptName::AcceptProxy | OptName::ProxyTimeout | OptName::AllowSource => {
                tag.is_listener()
            }
            OptName::SendProxy | OptName::ProxyCrc | OptName::ProxyUniqueId => tag.is_connector(),
            OptName::ReuseAddr | OptName::ReusePort | OptName::NoDelay => tag.is_tcp(),
            OptName::KeepAlive | OptName::KeepIdle | OptName::KeepIntvl | OptName::KeepCnt => {
                tag.is_tcp()
            }
            OptName::Bind => matches!(
                tag,
                KindTag::TcpConnect(_)
                    | KindTag::TcpListen(_)
                    | KindTag::UdpConnect(_)
                    | KindTag::UdpListen(_)
                    | KindTag::UnixConnect
                    | KindTag::VsockConnect
                    | KindTag::VsockListen
            ),
            OptName::ConnectTimeout => tag.is_connector() || tag.is_proxy(),
            OptName::Retry | OptName::Interval => tag.is_connector(),
            OptName::Dest | OptName::User | OptName::PasswordFile => tag.is_proxy(),
            OptName::RcvBuf | OptName::SndBuf => tag.is_socket(),
            OptName::GuestCid => tag == KindTag::VsockUdsListen,
            OptName::UnlinkEarly => {
                matches!(tag, KindTag::UnixListen | KindTag::VsockUdsListen)
            }
            OptName::SockType => matches!(
                tag,
                KindTag::UnixConnect
                    | KindTag::UnixListen
                    | KindTag::VsockConnect
                    | KindTag::VsockListen
            ),
            OptName::Framing => tag.is_stream_socket(),
        }
    }

    /// How the value is written, for "needs a value" messages.
    pub(super) fn value_hint(self) -> &'static str {
        match self {
            OptName::MaxChildren
            | OptName::Backlog
            | OptName::KeepCnt
            | OptName::Retry
            | OptName::KeepIdle
            | OptName::KeepIntvl => "=N",
            OptName::Bind => "=ADDRESS",
            OptName::GuestCid => "=CID",
            OptName::ConnectTimeout | OptName::Interval | OptName::ProxyTimeout => "=SECONDS",
            OptName::RcvBuf | OptName::SndBuf => "=SIZE",
            OptName::Allow | OptName::AllowSource => "=ENTRY",
            OptName::Dest => "=HOST:PORT",
            OptName::User => "=NAME",
            OptName::PasswordFile => "=PATH",
            OptName::SockType => "=5",
            OptName::Framing => "=len16",
            _ => "",
        }
    }

    pub(super) fn is_flag(self) -> bool {
        matches!(
            self,
            OptName::Fork
                | OptName::ReuseAddr
                | OptName::ReusePort
                | OptName::NoDelay
                | OptName::KeepAlive
                | OptName::UnlinkEarly
                | OptName::ProxyCrc
                | OptName::ProxyUniqueId
                | OptName::AcceptProxy
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_first_row_of_each_option_carries_help() {
        for (i, (name, opt, help)) in OPTION_NAMES.iter().enumerate() {
            let first = OPTION_NAMES[..i].iter().all(|(_, o, _)| o != opt);
            assert_eq!(
                help.is_some(),
                first,
                "{name}: help on exactly an option's first row"
            );
        }
        let docs = option_docs();
        let reuseaddr = docs.iter().find(|d| d.usage == "reuseaddr").unwrap();
        assert_eq!(reuseaddr.aliases, ["so-reuseaddr"]);
        assert!(docs.iter().any(|d| d.usage == "max-children=N"));
    }
}
