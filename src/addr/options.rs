//! Address options (`fork`, `bind=`, `connect-timeout=`, ...): the validated [`Options`] an
//! address carries, the table of option names and aliases with the address types each applies
//! to, and the parsing of their values. An option that does not apply to the address type is an
//! error here, never silently ignored.

use std::path::PathBuf;
use std::time::Duration;

use super::allow::{Allow, AllowRule};
use super::bind::parse_bind;
use super::dest::{DestList, DestRule};
use super::error::AddressError;
use super::kind::{Bind, Framing, KindTag, SocketType};
use super::lex::RawOption;
use super::size::{parse_duration, parse_size};

/// The address options vsplice understands, after validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    pub fork: bool,
    pub max_children: Option<usize>,
    pub backlog: Option<u32>,
    /// `None` means the type's default (on for TCP listeners, as in socat 1.8).
    pub reuseaddr: Option<bool>,
    pub reuseport: bool,
    pub bind: Option<Bind>,
    pub connect_timeout: Option<Duration>,
    pub rcvbuf: Option<usize>,
    pub sndbuf: Option<usize>,
    pub nodelay: bool,
    pub keepalive: bool,
    pub keepidle: Option<u32>,
    pub keepintvl: Option<u32>,
    pub keepcnt: Option<u32>,
    pub unlink_early: bool,
    /// Extra connect attempts after the first fails.
    pub retry: u32,
    /// Pause between connect attempts (`interval=`).
    pub interval: Option<Duration>,
    /// Peers a listener serves (`allow=`, repeated for several entries); `None`: everyone.
    pub allow: Option<Allow>,
    /// `socktype=`: SOCK_SEQPACKET on UNIX and vsock addresses; `None`: a stream.
    pub socktype: Option<SocketType>,
    /// `framing=len16`: a stream that carries messages, each behind its 2-byte length.
    pub framing: Option<Framing>,
    /// Write a PROXY protocol header first on each dialed connection (`send-proxy[=v1|v2]`).
    pub send_proxy: Option<ProxyVersion>,
    /// Add a CRC32C TLV to a v2 header (`proxy-crc`).
    pub proxy_crc: bool,
    /// Add a per-connection unique id TLV to a v2 header, and log it (`proxy-unique-id`).
    pub proxy_unique_id: bool,
    /// Read a PROXY protocol header (v1 or v2) first on each accepted connection.
    pub accept_proxy: bool,
    /// How long that header may take to arrive whole (`proxy-timeout=`; default 5 s).
    pub proxy_timeout: Option<Duration>,
    /// Declared sources a listener with `accept-proxy` serves (`allow-source=`); `None`: all.
    pub allow_source: Option<Allow>,
    /// `VSOCK-UDS-LISTEN`'s guest CID (`guest-cid=`): its connections are declared as from
    /// this vsock CID to host port P, for `send-proxy`.
    pub guest_cid: Option<u32>,
    /// The proxy addresses' options (boxed: most addresses have none).
    pub proxy: Box<ProxyOptions>,
}

/// The options only proxy addresses (`SOCKS5-SERVER`, `HTTP-CONNECT-SERVER`) take.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyOptions {
    /// Where a proxy address may connect its clients (`dest=`, repeated). On the `TCP:`
    /// address a proxy dials for a client, the same list filters the resolved addresses.
    pub dest: Option<DestList>,
    /// The user a proxy address requires (`user=`, with `password-file=`).
    pub user: Option<String>,
    /// The file holding that user's password (its first line).
    pub password_file: Option<PathBuf>,
    /// The password read from `password-file=` ([`super::secret::load_password`]; never
    /// by parsing).
    pub password: Option<Secret>,
}

/// A password, never printed.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(hidden)")
    }
}

/// The PROXY protocol version `send-proxy` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    /// The text line (`PROXY TCP4 ...\r\n`): TCP clients only, others `UNKNOWN`.
    V1,
    /// The binary header, with vsplice's TLV for vsock and UNIX clients.
    V2,
}

/// How long an `accept-proxy` header may take when `proxy-timeout` is not given.
pub const DEFAULT_PROXY_TIMEOUT: Duration = Duration::from_secs(5);

/// Option names and their aliases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OptName {
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
    fn lookup(name: &str) -> Option<OptName> {
        OPTION_NAMES
            .iter()
            .find(|(n, _, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, o, _)| *o)
    }

    /// Whether the option means anything for this address type.
    fn applies_to(self, tag: KindTag) -> bool {
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
            OptName::UnlinkEarly => {
                matches!(tag, KindTag::UnixListen | KindTag::VsockUdsListen)
            }
            OptName::GuestCid => tag == KindTag::VsockUdsListen,
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
    fn value_hint(self) -> &'static str {
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

    fn is_flag(self) -> bool {
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

fn parse_bool_value(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "yes" | "true" | "on" => Some(true),
        "0" | "no" | "false" | "off" => Some(false),
        _ => None,
    }
}

fn option_value_error(option: &str, value: &str, why: impl Into<String>) -> AddressError {
    AddressError::OptionValue {
        option: option.to_string(),
        value: value.to_string(),
        why: why.into(),
    }
}

fn parse_number<T: std::str::FromStr>(option: &str, value: &str) -> Result<T, AddressError> {
    value
        .parse::<T>()
        .map_err(|_| option_value_error(option, value, "not a number"))
}

/// The kernel's limits for the keepalive options (include/net/tcp.h): a value outside
/// makes setsockopt fail with EINVAL when the socket is opened, so they are checked here.
const MAX_TCP_KEEPIDLE: u32 = 32767;
const MAX_TCP_KEEPINTVL: u32 = 32767;
const MAX_TCP_KEEPCNT: u32 = 127;

fn parse_in_range(option: &str, value: &str, min: u32, max: u32) -> Result<u32, AddressError> {
    match value.parse::<u32>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(option_value_error(
            option,
            value,
            format!("not a number {min}-{max}"),
        )),
    }
}

/// `guest-cid=`'s value: a guest's CID, not one of the reserved 0 (hypervisor), 1 (local),
/// 2 (host) nor -1 (any).
pub fn parse_guest_cid(option: &str, value: &str) -> Result<u32, AddressError> {
    match value.parse::<u32>() {
        Ok(n) if (3..u32::MAX).contains(&n) => Ok(n),
        _ => Err(option_value_error(
            option,
            value,
            "not a guest CID 3-4294967294 (0-2 and -1 are reserved)",
        )),
    }
}

/// `socktype=`'s value: socat's numbers (1 stream, 5 seqpacket) or their names.
fn parse_socktype(tag: KindTag, option: &str, value: &str) -> Result<SocketType, AddressError> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "stream" => Ok(SocketType::Stream),
        "5" | "seqpacket" => Ok(SocketType::Seqpacket),
        "2" | "dgram" | "datagram" => Err(option_value_error(
            option,
            value,
            format!(
                "{} has no datagram type (vsock has none; for datagrams use UDP addresses)",
                tag.name()
            ),
        )),
        _ => Err(option_value_error(
            option,
            value,
            "expected 1 (stream) or 5 (seqpacket)",
        )),
    }
}

/// Applies one raw option to `opts`, checking that it belongs to `tag`.
pub(super) fn apply_option(
    opts: &mut Options,
    tag: KindTag,
    raw: &RawOption,
) -> Result<(), AddressError> {
    let name = raw.name.as_str();
    let not_valid = || AddressError::OptionNotValid {
        option: name.to_string(),
        kind: tag.name(),
    };
    let opt = OptName::lookup(name).ok_or_else(not_valid)?;
    if !opt.applies_to(tag) {
        return Err(not_valid());
    }
    if opt == OptName::SendProxy {
        opts.send_proxy = match raw.value.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("v2") | Some("2") => Some(ProxyVersion::V2),
            Some("v1") | Some("1") => Some(ProxyVersion::V1),
            Some(_) => {
                let value = raw.value.as_deref().unwrap_or_default();
                return Err(option_value_error(name, value, "expected v1 or v2"));
            }
        };
        return Ok(());
    }
    if opt.is_flag() {
        let on = match &raw.value {
            None => true,
            Some(v) => {
                parse_bool_value(v).ok_or_else(|| option_value_error(name, v, "expected 0 or 1"))?
            }
        };
        match opt {
            OptName::Fork => opts.fork = on,
            OptName::ReuseAddr => opts.reuseaddr = Some(on),
            OptName::ReusePort => opts.reuseport = on,
            OptName::NoDelay => opts.nodelay = on,
            OptName::KeepAlive => opts.keepalive = on,
            OptName::UnlinkEarly => opts.unlink_early = on,
            OptName::ProxyCrc => opts.proxy_crc = on,
            OptName::ProxyUniqueId => opts.proxy_unique_id = on,
            OptName::AcceptProxy => opts.accept_proxy = on,
            _ => unreachable!("flag options are listed in is_flag"),
        }
        return Ok(());
    }
    let value = raw
        .value
        .as_deref()
        .ok_or_else(|| AddressError::OptionNeedsValue {
            option: name.to_string(),
            hint: opt.value_hint(),
        })?;
    match opt {
        OptName::MaxChildren => {
            let n: usize = parse_number(name, value)?;
            if n == 0 {
                return Err(option_value_error(name, value, "must be at least 1"));
            }
            opts.max_children = Some(n);
        }
        OptName::Backlog => {
            let n: u32 = parse_number(name, value)?;
            if n == 0 {
                return Err(option_value_error(name, value, "must be at least 1"));
            }
            opts.backlog = Some(n);
        }
        OptName::Bind => {
            if value.is_empty() {
                return Err(AddressError::OptionNeedsValue {
                    option: name.to_string(),
                    hint: opt.value_hint(),
                });
            }
            opts.bind =
                Some(parse_bind(tag, value).map_err(|why| option_value_error(name, value, why))?)
        }
        OptName::ConnectTimeout => {
            let timeout =
                parse_duration(value).map_err(|why| option_value_error(name, value, why))?;
            if timeout.is_zero() {
                return Err(option_value_error(
                    name,
                    value,
                    "must be more than 0 seconds (leave the option out to wait as long as \
                     the system does)",
                ));
            }
            opts.connect_timeout = Some(timeout);
        }
        OptName::Interval => {
            opts.interval =
                Some(parse_duration(value).map_err(|why| option_value_error(name, value, why))?)
        }
        OptName::RcvBuf => {
            opts.rcvbuf =
                Some(parse_size(value).map_err(|why| option_value_error(name, value, why))?)
        }
        OptName::SndBuf => {
            opts.sndbuf =
                Some(parse_size(value).map_err(|why| option_value_error(name, value, why))?)
        }
        OptName::KeepIdle => {
            opts.keepidle = Some(parse_in_range(name, value, 1, MAX_TCP_KEEPIDLE)?);
            opts.keepalive = true;
        }
        OptName::KeepIntvl => {
            opts.keepintvl = Some(parse_in_range(name, value, 1, MAX_TCP_KEEPINTVL)?);
            opts.keepalive = true;
        }
        OptName::KeepCnt => {
            opts.keepcnt = Some(parse_in_range(name, value, 1, MAX_TCP_KEEPCNT)?);
            opts.keepalive = true;
        }
        OptName::Retry => opts.retry = parse_number(name, value)?,
        OptName::GuestCid => opts.guest_cid = Some(parse_guest_cid(name, value)?),
        OptName::Allow => {
            let rule =
                AllowRule::parse(value).map_err(|why| option_value_error(name, value, why))?;
            let allow = with_rule(opts.allow.take(), rule);
            allow
                .fits(tag)
                .map_err(|why| option_value_error(name, value, why))?;
            opts.allow = Some(allow);
        }
        OptName::Dest => {
            let rule =
                DestRule::parse(value).map_err(|why| option_value_error(name, value, why))?;
            let mut rules = opts
                .proxy
                .dest
                .take()
                .map(|d| d.rules().to_vec())
                .unwrap_or_default();
            rules.push(rule);
            opts.proxy.dest = DestList::from_rules(rules);
        }
        OptName::User => {
            if value.is_empty() || value.len() > 255 || value.contains(':') {
                return Err(option_value_error(
                    name,
                    value,
                    "1-255 bytes, without ':' (HTTP Basic separates user and password with it)",
                ));
            }
            opts.proxy.user = Some(value.to_string());
        }
        OptName::PasswordFile => {
            if value.is_empty() {
                return Err(AddressError::OptionNeedsValue {
                    option: name.to_string(),
                    hint: opt.value_hint(),
                });
            }
            opts.proxy.password_file = Some(PathBuf::from(value));
        }
        OptName::ProxyTimeout => {
            let timeout =
                parse_duration(value).map_err(|why| option_value_error(name, value, why))?;
            if timeout.is_zero() {
                return Err(option_value_error(
                    name,
                    value,
                    "must be more than 0 seconds",
                ));
            }
            opts.proxy_timeout = Some(timeout);
        }
        OptName::AllowSource => {
            let rule =
                AllowRule::parse(value).map_err(|why| option_value_error(name, value, why))?;
            opts.allow_source = Some(with_rule(opts.allow_source.take(), rule));
        }
        OptName::SockType => opts.socktype = Some(parse_socktype(tag, name, value)?),
        OptName::Framing => {
            if !value.eq_ignore_ascii_case("len16") {
                return Err(option_value_error(
                    name,
                    value,
                    "the only framing is len16 (a 2-byte big-endian length before each message)",
                ));
            }
            opts.framing = Some(Framing::Len16);
        }
        _ => unreachable!("value options handled above"),
    }
    Ok(())
}

/// `allow` (or `allow-source`) with one more entry: a repeated option adds to its list.
fn with_rule(allow: Option<Allow>, rule: AllowRule) -> Allow {
    let mut rules = allow.map(|a| a.rules().to_vec()).unwrap_or_default();
    rules.push(rule);
    Allow::from_rules(rules).expect("one rule at least")
}

/// Checks the options that only mean something together with another (run after all
/// options are applied): `proxy-crc` and `proxy-unique-id` need `send-proxy` v2,
/// `proxy-timeout` and `allow-source` need `accept-proxy`. Each error names the option.
pub fn check_combinations(opts: &Options) -> Result<(), AddressError> {
    let needs = |option: &str, value: &str, why: &str| Err(option_value_error(option, value, why));
    if opts.proxy_crc && opts.send_proxy != Some(ProxyVersion::V2) {
        return needs("proxy-crc", "1", "needs send-proxy=v2 (v1 has no TLVs)");
    }
    if opts.proxy_unique_id && opts.send_proxy != Some(ProxyVersion::V2) {
        return needs(
            "proxy-unique-id",
            "1",
            "needs send-proxy=v2 (v1 has no TLVs)",
        );
    }
    if let (Some(t), false) = (opts.proxy_timeout, opts.accept_proxy) {
        return needs(
            "proxy-timeout",
            &format!("{}", t.as_secs_f64()),
            "needs accept-proxy",
        );
    }
    if let (Some(a), false) = (&opts.allow_source, opts.accept_proxy) {
        return needs("allow-source", &a.to_string(), "needs accept-proxy");
    }
    Ok(())
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
