//! Address options (`fork`, `bind=`, `connect-timeout=`, ...): the validated [`Options`] an
//! address carries, the table of option names and aliases with the address types each applies
//! to, and the parsing of their values. An option that does not apply to the address type is an
//! error here, never silently ignored.

use std::time::Duration;

use super::allow::{Allow, AllowRule};
use super::bind::parse_bind;
use super::error::AddressError;
use super::kind::{Bind, KindTag};
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
    SendProxy,
    ProxyCrc,
    ProxyUniqueId,
    AcceptProxy,
    ProxyTimeout,
    AllowSource,
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
    ("send-proxy", OptName::SendProxy),
    ("proxy-crc", OptName::ProxyCrc),
    ("proxy-unique-id", OptName::ProxyUniqueId),
    ("accept-proxy", OptName::AcceptProxy),
    ("proxy-timeout", OptName::ProxyTimeout),
    ("allow-source", OptName::AllowSource),
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
                    | KindTag::UnixConnect
                    | KindTag::VsockConnect
                    | KindTag::VsockListen
            ),
            OptName::ConnectTimeout | OptName::Retry | OptName::Interval => tag.is_connector(),
            OptName::RcvBuf | OptName::SndBuf => tag.is_socket(),
            OptName::UnlinkEarly => {
                matches!(tag, KindTag::UnixListen | KindTag::VsockUdsListen)
            }
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
            OptName::ConnectTimeout | OptName::Interval | OptName::ProxyTimeout => "=SECONDS",
            OptName::RcvBuf | OptName::SndBuf => "=SIZE",
            OptName::Allow | OptName::AllowSource => "=ENTRY",
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
            let mut rules = opts
                .allow_source
                .take()
                .map(|a| a.rules().to_vec())
                .unwrap_or_default();
            rules.push(rule);
            opts.allow_source = Allow::from_rules(rules);
        }
        _ => unreachable!("value options handled above"),
    }
    Ok(())
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
