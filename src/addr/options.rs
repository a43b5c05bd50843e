//! Address options (`fork`, `bind=`, `connect-timeout=`, ...): the validated [`Options`] an
//! address carries, the table of option names and aliases with the address types each applies
//! to, and the parsing of their values. An option that does not apply to the address type is an
//! error here, never silently ignored.

use std::time::Duration;

use super::allow::{Allow, AllowRule};
use super::bind::parse_bind;
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
}

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
    SockType,
    Framing,
}

const OPTION_NAMES: &[(&str, OptName)] = &[
    ("fork", OptName::Fork),
    ("max-children", OptName::MaxChildren),
    ("backlog", OptName::Backlog),
    ("reuseaddr", OptName::ReuseAddr),
    ("so-reuseaddr", OptName::ReuseAddr),
    ("reuseport", OptName::ReusePort),
    ("so-reuseport", OptName::ReusePort),
    ("bind", OptName::Bind),
    ("connect-timeout", OptName::ConnectTimeout),
    ("rcvbuf", OptName::RcvBuf),
    ("so-rcvbuf", OptName::RcvBuf),
    ("sndbuf", OptName::SndBuf),
    ("so-sndbuf", OptName::SndBuf),
    ("nodelay", OptName::NoDelay),
    ("tcp-nodelay", OptName::NoDelay),
    ("keepalive", OptName::KeepAlive),
    ("so-keepalive", OptName::KeepAlive),
    ("keepidle", OptName::KeepIdle),
    ("tcp-keepidle", OptName::KeepIdle),
    ("keepintvl", OptName::KeepIntvl),
    ("tcp-keepintvl", OptName::KeepIntvl),
    ("keepcnt", OptName::KeepCnt),
    ("tcp-keepcnt", OptName::KeepCnt),
    ("unlink-early", OptName::UnlinkEarly),
    ("retry", OptName::Retry),
    ("interval", OptName::Interval),
    ("allow", OptName::Allow),
    ("socktype", OptName::SockType),
    ("so-type", OptName::SockType),
    ("framing", OptName::Framing),
];

/// Every option name, aliases included, and whether it is its option's first (canonical)
/// spelling (for the help and README checks).
pub fn option_names() -> impl Iterator<Item = (&'static str, bool)> {
    OPTION_NAMES.iter().enumerate().map(|(i, (name, opt))| {
        let first = OPTION_NAMES[..i].iter().all(|(_, o)| o != opt);
        (*name, first)
    })
}

impl OptName {
    fn lookup(name: &str) -> Option<OptName> {
        OPTION_NAMES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, o)| *o)
    }

    /// Whether the option means anything for this address type.
    fn applies_to(self, tag: KindTag) -> bool {
        match self {
            OptName::Fork | OptName::MaxChildren | OptName::Backlog | OptName::Allow => {
                tag.is_listener()
            }
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
            OptName::ConnectTimeout | OptName::Retry | OptName::Interval => tag.is_connector(),
            OptName::RcvBuf | OptName::SndBuf => tag.is_socket(),
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
    fn value_hint(self) -> &'static str {
        match self {
            OptName::MaxChildren
            | OptName::Backlog
            | OptName::KeepCnt
            | OptName::Retry
            | OptName::KeepIdle
            | OptName::KeepIntvl => "=N",
            OptName::Bind => "=ADDRESS",
            OptName::ConnectTimeout | OptName::Interval => "=SECONDS",
            OptName::RcvBuf | OptName::SndBuf => "=SIZE",
            OptName::Allow => "=ENTRY",
            OptName::SockType => "=5 or =seqpacket",
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
        OptName::Allow => {
            let rule =
                AllowRule::parse(value).map_err(|why| option_value_error(name, value, why))?;
            let mut rules = opts
                .allow
                .take()
                .map(|a| a.rules().to_vec())
                .unwrap_or_default();
            rules.push(rule);
            let allow = Allow::from_rules(rules).expect("one rule at least");
            allow
                .fits(tag)
                .map_err(|why| option_value_error(name, value, why))?;
            opts.allow = Some(allow);
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
