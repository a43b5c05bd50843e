//! Address options (`fork`, `bind=`, `connect-timeout=`, ...): the validated [`Options`] an
//! address carries and [`apply_option`], which checks one raw option against the address type
//! and sets its field. An option that does not apply to the address type is an error here,
//! never silently ignored. The table of names, aliases and help is [`names`]; the parsers of
//! values several options share are [`value`].

mod names;
mod value;

use std::path::PathBuf;
use std::time::Duration;

use super::allow::{Allow, AllowRule};
use super::bind::parse_bind;
use super::dest::{DestList, DestRule};
use super::error::AddressError;
use super::kind::{Bind, Framing, KindTag, SocketType};
use super::lex::RawOption;
use super::size::{parse_duration, parse_size};
use names::OptName;
pub use names::{OptionDoc, OptionHelp, option_docs, option_names};
pub use value::parse_guest_cid;
use value::{
    MAX_TCP_KEEPCNT, MAX_TCP_KEEPIDLE, MAX_TCP_KEEPINTVL, option_value_error, parse_bool_value,
    parse_in_range, parse_number, parse_socktype,
};

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
