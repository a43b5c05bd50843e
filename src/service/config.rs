//! The service configuration file: TOML in, a checked [`ServePlan`] out, before anything is
//! opened.
//!
//! Two stages, like the command line: serde reads the text into raw structures that keep
//! every value's position ([`toml::Spanned`]), then [`resolve`] gives each value meaning with
//! the same code the command line uses (the address grammar, the size and duration parsers,
//! [`crate::addr::check_pair`]). Every error names the file, the line and the key; unknown
//! keys are errors, not silently ignored, so a typo never leaves an option unset.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::{Spanned, Value};

use crate::addr::allow::Allow;
use crate::addr::{Address, AddressError, Kind, parse_duration, parse_size};
use crate::engine::Mode;
use crate::error::Error;
use crate::net::bindkey::BindKey;

/// How long connections may go on after a stop before they are cut, when the file says nothing.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A configuration error: where it is and what is wrong. Exit status 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when the error has no position (the file cannot be read).
    pub line: usize,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Error {
        Error::Usage(e.to_string())
    }
}

/// Which direction a one-way service moves (`-u` / `-U`). "first" is the listening side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OneWay {
    FirstToSecond,
    SecondToFirst,
}

/// The per-relay options a service takes, named after the command line's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceOptions {
    /// `-T`: close a connection after this long without data.
    pub idle_timeout: Option<Duration>,
    /// `-t`: after one side's EOF, how long the other direction may go on.
    pub linger: Option<Duration>,
    /// `-u` / `-U`.
    pub one_way: Option<OneWay>,
    /// `-b`: pipe / buffer size per direction.
    pub buffer: Option<usize>,
    /// `--mode`.
    pub mode: Option<Mode>,
}

impl ServiceOptions {
    /// Which directions run: [first->second, second->first].
    pub fn directions(&self) -> [bool; 2] {
        match self.one_way {
            None => [true, true],
            Some(OneWay::FirstToSecond) => [true, false],
            Some(OneWay::SecondToFirst) => [false, true],
        }
    }

    /// These options, with the unset ones taken from `defaults`.
    fn or(&self, defaults: &ServiceOptions) -> ServiceOptions {
        ServiceOptions {
            idle_timeout: self.idle_timeout.or(defaults.idle_timeout),
            linger: self.linger.or(defaults.linger),
            one_way: self.one_way.or(defaults.one_way),
            buffer: self.buffer.or(defaults.buffer),
            mode: self.mode.or(defaults.mode),
        }
    }
}

/// Options of the whole process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalOptions {
    /// After a stop, how long open connections may go on before they are cut.
    pub drain_timeout: Duration,
    /// `--threads`; `None`: one per core.
    pub threads: Option<usize>,
    /// `--receive-budget`; `Some(0)`: never cap; `None`: the system's default.
    pub receive_budget: Option<usize>,
    /// `--pin` (true) / `--no-pin` (false); `None`: the command line's policy.
    pub pin: Option<bool>,
    /// Per-relay options given at the top of the file: every service's defaults.
    pub defaults: ServiceOptions,
}

/// One service, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePlan {
    pub name: String,
    /// A listening address with `fork`; its `allow` and `max-children` include the service's
    /// `allow` and `max-children` keys.
    pub listen: Address,
    /// A connecting address.
    pub connect: Address,
    /// The service's own options over the file's defaults.
    pub options: ServiceOptions,
}

impl ServicePlan {
    /// Who may connect; `None`: everyone.
    pub fn allow(&self) -> Option<&Allow> {
        self.listen.options.allow.as_ref()
    }

    pub fn max_children(&self) -> Option<usize> {
        self.listen.options.max_children
    }
}

/// A configuration file, checked and ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServePlan {
    pub file: PathBuf,
    pub global: GlobalOptions,
    /// Where Prometheus scrapes `GET /metrics`.
    pub metrics: Option<Address>,
    pub services: Vec<ServicePlan>,
}

impl ServePlan {
    /// Reads and resolves a configuration file.
    pub fn load(file: &Path) -> Result<ServePlan, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
            file: file.to_path_buf(),
            line: 0,
            key: String::new(),
            message: format!("cannot read: {e}"),
        })?;
        resolve(file, &text)
    }

    /// What `serve --check` prints: one line per service.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "{}: {} service{}",
            self.file.display(),
            self.services.len(),
            if self.services.len() == 1 { "" } else { "s" }
        );
        match &self.metrics {
            Some(m) => out.push_str(&format!(", metrics at {m}\n")),
            None => out.push_str(", no metrics\n"),
        }
        let width = self
            .services
            .iter()
            .map(|s| s.name.len())
            .max()
            .unwrap_or(0);
        for s in &self.services {
            out.push_str(&format!(
                "  {:width$}  {} -> {}  allow {}",
                s.name,
                s.listen,
                s.connect,
                s.allow().map_or("everyone".to_string(), |a| a.to_string()),
            ));
            let o = &s.options;
            if let Some(t) = o.idle_timeout {
                out.push_str(&format!("  idle-timeout {}s", t.as_secs_f64()));
            }
            if let Some(t) = o.linger {
                out.push_str(&format!("  linger {}s", t.as_secs_f64()));
            }
            match o.one_way {
                Some(OneWay::FirstToSecond) => out.push_str("  one-way first-to-second"),
                Some(OneWay::SecondToFirst) => out.push_str("  one-way second-to-first"),
                None => {}
            }
            if let Some(b) = o.buffer {
                out.push_str(&format!("  buffer {b}"));
            }
            if let Some(m) = o.mode {
                out.push_str(&format!("  mode {}", m.name()));
            }
            if let Some(cid) = s.listen.options.guest_cid {
                out.push_str(&format!("  guest-cid {cid}"));
            }
            out.push('\n');
        }
        out
    }
}

type Item = Option<Spanned<Value>>;

/// Stage one: the file as serde reads it, every value with its position.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConfig {
    drain_timeout: Item,
    threads: Item,
    receive_budget: Item,
    pin: Item,
    idle_timeout: Item,
    linger: Item,
    one_way: Item,
    buffer: Item,
    mode: Item,
    metrics: Option<Spanned<RawMetrics>>,
    #[serde(default)]
    service: Vec<Spanned<RawService>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawMetrics {
    listen: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawService {
    name: Spanned<String>,
    listen: Spanned<String>,
    connect: Spanned<String>,
    allow: Option<Spanned<Vec<Spanned<String>>>>,
    dest: Option<Spanned<Vec<Spanned<String>>>>,
    max_children: Item,
    idle_timeout: Item,
    linger: Item,
    one_way: Item,
    buffer: Item,
    mode: Item,
    /// `"v1"` or `"v2"`: the connect address's `send-proxy`.
    send_proxy: Item,
    /// The listen address's `accept-proxy`.
    accept_proxy: Item,
    /// The listen address's `allow-source` entries.
    allow_source: Option<Spanned<Vec<Spanned<String>>>>,
    /// The listen address's `proxy-timeout`.
    proxy_timeout: Item,
    /// A `VSOCK-UDS-LISTEN` listen address's `guest-cid`.
    guest_cid: Item,
}

/// Positions into the text, turned into line numbers for errors.
struct Source<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }

    fn error(&self, offset: usize, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            line: if self.text.is_empty() {
                0
            } else {
                self.line(offset)
            },
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn at<T>(&self, value: &Spanned<T>, key: &str, message: impl Into<String>) -> ConfigError {
        self.error(value.span().start, key, message)
    }

    /// A serde error, with the key taken from the line it points at when serde's message
    /// does not say (type errors point at the value).
    fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let offset = e.span().map_or(0, |s| s.start);
        let line_start = self.text[..offset.min(self.text.len())]
            .rfind('\n')
            .map_or(0, |i| i + 1);
        let line = &self.text[line_start..];
        let key = line
            .split_once('=')
            .map(|(k, _)| k.trim())
            .filter(|k| {
                !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            })
            .unwrap_or("");
        self.error(offset, key, e.message().trim().replace('`', "\""))
    }
}

/// Stage two: reads `text` (the contents of `file`) into a checked plan.
pub fn resolve(file: &Path, text: &str) -> Result<ServePlan, ConfigError> {
    let src = Source { file, text };
    let raw: RawConfig = toml::from_str(text).map_err(|e| src.toml_error(&e))?;
    let defaults = relay_options(
        &src,
        [
            &raw.idle_timeout,
            &raw.linger,
            &raw.one_way,
            &raw.buffer,
            &raw.mode,
        ],
    )?;
    let global = GlobalOptions {
        drain_timeout: match &raw.drain_timeout {
            Some(v) => duration(&src, v, "drain-timeout")?,
            None => DEFAULT_DRAIN_TIMEOUT,
        },
        threads: match &raw.threads {
            Some(v) => Some(count(&src, v, "threads", 1, 1024)?),
            None => None,
        },
        receive_budget: match &raw.receive_budget {
            Some(v) => Some(size(&src, v, "receive-budget")?),
            None => None,
        },
        pin: match &raw.pin {
            Some(v) => Some(
                v.get_ref()
                    .as_bool()
                    .ok_or_else(|| src.at(v, "pin", "expected true or false"))?,
            ),
            None => None,
        },
        defaults,
    };
    let metrics = match &raw.metrics {
        Some(m) => {
            let text = &m.get_ref().listen;
            let address = listening_address(&src, text, "metrics.listen", None)?;
            if let Kind::AcceptFd { .. } = address.kind {
                return Err(src.at(
                    text,
                    "metrics.listen",
                    "an inherited socket (ACCEPT-FD) cannot serve metrics yet",
                ));
            }
            Some(address)
        }
        None => None,
    };
    if raw.service.is_empty() {
        return Err(src.error(0, "service", "no [[service]] declared"));
    }
    let mut services: Vec<ServicePlan> = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    // Sockets taken so far: what each binds, with who took it and how it was written.
    let mut taken: Vec<(BindKey, String)> = Vec::new();
    if let (Some(m), Some(raw)) = (&metrics, &raw.metrics) {
        let key = bind_key(&src, m, &raw.get_ref().listen, "metrics.listen")?;
        taken.push((key, "[metrics]".to_string()));
    }
    for raw_service in &raw.service {
        let service = resolve_service(&src, raw_service.get_ref(), &global.defaults)?;
        let name = raw_service.get_ref().name.clone();
        if let Some(line) = names.insert(service.name.clone(), src.line(name.span().start)) {
            return Err(src.at(
                &name,
                "name",
                format!(
                    "service \"{}\" is declared twice (first at line {line})",
                    service.name
                ),
            ));
        }
        let listen = &raw_service.get_ref().listen;
        let key = bind_key(&src, &service.listen, listen, "listen")?;
        if let Some((_, owner)) = taken.iter().find(|(k, _)| k.collides(&key)) {
            return Err(src.at(
                listen,
                "listen",
                format!(
                    "service \"{}\": \"{}\" would bind {}, where {owner} already listens",
                    service.name,
                    service.listen.text,
                    shown(&key),
                ),
            ));
        }
        taken.push((key, format!("service \"{}\"", service.name)));
        services.push(service);
    }
    Ok(ServePlan {
        file: file.to_path_buf(),
        global,
        metrics,
        services,
    })
}

fn resolve_service(
    src: &Source,
    raw: &RawService,
    defaults: &ServiceOptions,
) -> Result<ServicePlan, ConfigError> {
    let name = raw.name.get_ref().trim();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(src.at(
            &raw.name,
            "name",
            format!("\"{name}\" is not a service name (letters, digits, - _ . only)"),
        ));
    }
    let mut listen = listening_address(src, &raw.listen, "listen", Some(name))?;
    if !listen.options.fork {
        return Err(src.at(
            &raw.listen,
            "listen",
            format!(
                "\"{}\" serves one connection only: a service needs \",fork\"",
                listen.text
            ),
        ));
    }
    let connect_text = with_dest_key(src, &raw.connect, raw.dest.as_ref())?;
    let mut connect = parse_address(src, &connect_text, "connect", Some(name))?;
    crate::addr::load_password(&mut connect).map_err(|e| src.at(&raw.connect, "connect", e))?;
    if connect.is_listener() || !(connect.is_connector() || connect.is_proxy()) {
        return Err(src.at(
            &raw.connect,
            "connect",
            format!("\"{}\" is not a connecting address", connect.text),
        ));
    }
    if let Some(v) = &raw.max_children {
        if listen.options.max_children.is_some() {
            return Err(src.at(
                v,
                "max-children",
                "given twice: as a key and in the listen address",
            ));
        }
        listen.options.max_children = Some(count(src, v, "max-children", 1, usize::MAX)?);
    }
    if let Some(entries) = &raw.allow {
        if listen.options.allow.is_some() {
            return Err(src.at(
                entries,
                "allow",
                "given twice: as a key and as allow= in the listen address",
            ));
        }
        let mut rules = Vec::new();
        for entry in entries.get_ref() {
            let rule = crate::addr::allow::AllowRule::parse(entry.get_ref())
                .map_err(|e| src.at(entry, "allow", e))?;
            rules.push(rule);
        }
        let Some(allow) = Allow::from_rules(rules) else {
            return Err(src.at(
                entries,
                "allow",
                "an empty list would refuse everyone: remove the key to allow everyone",
            ));
        };
        allow
            .fits_listener(&listen.kind, listen.options.bind.as_ref())
            .map_err(|e| src.at(entries, "allow", format!("service \"{name}\": {e}")))?;
        listen.options.allow = Some(allow);
    }
    proxy_keys(src, raw, &mut listen, &mut connect)?;
    crate::addr::check_pair(&listen, &connect).map_err(|e| src.at(&raw.name, "", e))?;
    if let crate::addr::Kind::UdpListen { .. } = listen.kind {
        return Err(src.at(
            &raw.name,
            "listen",
            format!(
                "service \"{name}\": \"{}\": UDP-LISTEN is served by the relay command \
                 (vsplice {} ...), not yet by serve",
                listen.text, listen.text
            ),
        ));
    }
    let own = relay_options(
        src,
        [
            &raw.idle_timeout,
            &raw.linger,
            &raw.one_way,
            &raw.buffer,
            &raw.mode,
        ],
    )?;
    Ok(ServicePlan {
        name: name.to_string(),
        listen,
        connect,
        options: own.or(defaults),
    })
}

/// The `connect` address with the `dest` key's entries appended as `dest=` options (each
/// checked first, so an entry cannot smuggle in other options); the key and `dest=` in the
/// address are not both allowed.
fn with_dest_key(
    src: &Source,
    connect: &Spanned<String>,
    dest: Option<&Spanned<Vec<Spanned<String>>>>,
) -> Result<Spanned<String>, ConfigError> {
    let Some(entries) = dest else {
        return Ok(connect.clone());
    };
    if connect.get_ref().to_ascii_lowercase().contains("dest=") {
        return Err(src.at(
            entries,
            "dest",
            "given twice: as a key and as dest= in the connect address",
        ));
    }
    if entries.get_ref().is_empty() {
        return Err(src.at(
            entries,
            "dest",
            "an empty list would allow no destination: a proxy needs at least one entry",
        ));
    }
    let mut text = connect.get_ref().clone();
    for entry in entries.get_ref() {
        crate::addr::dest::DestRule::parse(entry.get_ref())
            .map_err(|e| src.at(entry, "dest", e))?;
        text.push_str(",dest=");
        text.push_str(entry.get_ref());
    }
    Ok(Spanned::new(connect.span(), text))
}

/// The PROXY protocol keys, as the address options they stand for: `send-proxy = "v2"` on
/// the connect address; `accept-proxy = true`, `allow-source = [...]`, `proxy-timeout` on
/// the listen address; `guest-cid = N` on a `VSOCK-UDS-LISTEN` listen address (who its
/// connections are declared from). A key given also as an option in the address is an error.
fn proxy_keys(
    src: &Source,
    raw: &RawService,
    listen: &mut Address,
    connect: &mut Address,
) -> Result<(), ConfigError> {
    let twice = |key: &str| format!("given twice: as a key and as {key} in the address");
    if let Some(v) = &raw.send_proxy {
        if connect.options.send_proxy.is_some() {
            return Err(src.at(v, "send-proxy", twice("send-proxy")));
        }
        connect.options.send_proxy = Some(match v.get_ref().as_str() {
            Some("v1") => crate::addr::ProxyVersion::V1,
            Some("v2") => crate::addr::ProxyVersion::V2,
            _ => {
                let why = format!("{} is not \"v1\" or \"v2\"", v.get_ref());
                return Err(src.at(v, "send-proxy", why));
            }
        });
    }
    if let Some(v) = &raw.accept_proxy {
        let Some(on) = v.get_ref().as_bool() else {
            let why = format!("{} is not true or false", v.get_ref());
            return Err(src.at(v, "accept-proxy", why));
        };
        listen.options.accept_proxy |= on;
    }
    if let Some(v) = &raw.proxy_timeout {
        if listen.options.proxy_timeout.is_some() {
            return Err(src.at(v, "proxy-timeout", twice("proxy-timeout=")));
        }
        let timeout = duration(src, v, "proxy-timeout")?;
        if timeout.is_zero() {
            return Err(src.at(v, "proxy-timeout", "must be more than 0 seconds"));
        }
        listen.options.proxy_timeout = Some(timeout);
    }
    if let Some(entries) = &raw.allow_source {
        if listen.options.allow_source.is_some() {
            return Err(src.at(entries, "allow-source", twice("allow-source=")));
        }
        let mut rules = Vec::new();
        for entry in entries.get_ref() {
            let rule = crate::addr::allow::AllowRule::parse(entry.get_ref())
                .map_err(|e| src.at(entry, "allow-source", e))?;
            rules.push(rule);
        }
        listen.options.allow_source = Some(Allow::from_rules(rules).ok_or_else(|| {
            src.at(
                entries,
                "allow-source",
                "an empty list would refuse everyone",
            )
        })?);
    }
    if let Some(v) = &raw.guest_cid {
        if listen.options.guest_cid.is_some() {
            return Err(src.at(v, "guest-cid", twice("guest-cid=")));
        }
        if !matches!(listen.kind, crate::addr::Kind::VsockUdsListen { .. }) {
            let why = "only for a VSOCK-UDS-LISTEN listen address (hybrid vsock)";
            return Err(src.at(v, "guest-cid", why));
        }
        let text = match v.get_ref() {
            toml::Value::Integer(n) => n.to_string(),
            other => other.to_string(),
        };
        let cid = crate::addr::parse_guest_cid("guest-cid", &text)
            .map_err(|e| src.at(v, "guest-cid", e.to_string()))?;
        listen.options.guest_cid = Some(cid);
    }
    for (address, key) in [(&*listen, &raw.listen), (&*connect, &raw.connect)] {
        crate::addr::check_proxy_options(&address.options)
            .map_err(|e| src.at(key, "", format!("service \"{}\": {e}", raw.name.get_ref())))?;
    }
    Ok(())
}

/// Parses an address of the file; `service` names the service it belongs to in errors about
/// what the address text itself cannot hold (a NUL in a path).
fn parse_address(
    src: &Source,
    text: &Spanned<String>,
    key: &str,
    service: Option<&str>,
) -> Result<Address, ConfigError> {
    Address::parse(text.get_ref()).map_err(|e| {
        let whose = match (&e, service) {
            (AddressError::PathNul { .. }, Some(name)) => format!("service \"{name}\": "),
            _ => String::new(),
        };
        src.at(
            text,
            key,
            format!(
                "{whose}invalid address \"{}\": {e}",
                text.get_ref().replace('\0', "\\0")
            ),
        )
    })
}

fn listening_address(
    src: &Source,
    text: &Spanned<String>,
    key: &str,
    service: Option<&str>,
) -> Result<Address, ConfigError> {
    let address = parse_address(src, text, key, service)?;
    if !address.is_listener() {
        return Err(src.at(text, key, format!("\"{}\" does not listen", address.text)));
    }
    Ok(address)
}

/// What a listening address binds, resolved now (a `bind=` name is looked up, as opening it
/// would): two services whose sockets collide cannot both start.
fn bind_key(
    src: &Source,
    address: &Address,
    text: &Spanned<String>,
    key: &str,
) -> Result<BindKey, ConfigError> {
    BindKey::of(address).map_err(|e| src.at(text, key, e.to_string()))
}

/// A bind key as a message shows it.
fn shown(key: &BindKey) -> String {
    match key {
        BindKey::Local(local) => local.to_string(),
        BindKey::Fd(fd) => format!("descriptor {fd}"),
    }
}

/// The five per-relay options, in the order idle-timeout, linger, one-way, buffer, mode.
fn relay_options(src: &Source, items: [&Item; 5]) -> Result<ServiceOptions, ConfigError> {
    let [idle, linger, one_way, buffer, mode] = items;
    let mut out = ServiceOptions::default();
    if let Some(v) = idle {
        let timeout = duration(src, v, "idle-timeout")?;
        // As written in the file: TOML would print 1e-12 back as 0.000000000001.
        let token = src.text[v.span()].trim_matches(['"', '\'']);
        out.idle_timeout = Some(
            crate::addr::check_idle_timeout(token, timeout)
                .map_err(|e| src.at(v, "idle-timeout", e))?,
        );
    }
    if let Some(v) = linger {
        out.linger = Some(duration(src, v, "linger")?);
    }
    if let Some(v) = one_way {
        out.one_way = Some(match v.get_ref().as_str() {
            Some("first-to-second") => OneWay::FirstToSecond,
            Some("second-to-first") => OneWay::SecondToFirst,
            _ => {
                return Err(src.at(
                    v,
                    "one-way",
                    format!(
                        "{} is not \"first-to-second\" (-u) or \"second-to-first\" (-U)",
                        v.get_ref()
                    ),
                ));
            }
        });
    }
    if let Some(v) = buffer {
        let n = size(src, v, "buffer")?;
        if !(4096..=1 << 30).contains(&n) {
            return Err(src.at(v, "buffer", format!("{n} is not a size from 4K to 1G")));
        }
        out.buffer = Some(n);
    }
    if let Some(v) = mode {
        let text = v.get_ref().as_str().unwrap_or("");
        out.mode = Some(
            <Mode as clap::ValueEnum>::from_str(text, true).map_err(|_| {
                src.at(
                    v,
                    "mode",
                    format!(
                        "{} is not a data path (splice, uring-splice, copy, recv, recv-zc)",
                        v.get_ref()
                    ),
                )
            })?,
        );
    }
    Ok(out)
}

/// A duration: seconds as a number, or a string of seconds or with a unit (`500ms`, `30s`,
/// `10m`, `1h`).
fn duration(src: &Source, v: &Spanned<Value>, key: &str) -> Result<Duration, ConfigError> {
    let text = match v.get_ref() {
        Value::Integer(n) => n.to_string(),
        Value::Float(f) => f.to_string(),
        Value::String(s) => s.trim().to_string(),
        other => return Err(src.at(v, key, format!("{other} is not a duration like \"30s\""))),
    };
    let (number, scale) = [("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)]
        .iter()
        .find_map(|(unit, scale)| text.strip_suffix(unit).map(|n| (n, *scale)))
        .unwrap_or((text.as_str(), 1.0));
    let secs = parse_duration(number)
        .map_err(|_| {
            src.at(
                v,
                key,
                format!("\"{text}\" is not a duration (seconds, or with ms, s, m, h)"),
            )
        })?
        .as_secs_f64();
    Ok(Duration::from_secs_f64(secs * scale))
}

/// A size: bytes as a number, or a string with K, M, G.
fn size(src: &Source, v: &Spanned<Value>, key: &str) -> Result<usize, ConfigError> {
    match v.get_ref() {
        Value::Integer(n) if *n >= 0 => Ok(*n as usize),
        Value::String(s) => parse_size(s).map_err(|e| src.at(v, key, e)),
        other => Err(src.at(v, key, format!("{other} is not a size like \"1M\""))),
    }
}

fn count(
    src: &Source,
    v: &Spanned<Value>,
    key: &str,
    min: usize,
    max: usize,
) -> Result<usize, ConfigError> {
    match v.get_ref() {
        Value::Integer(n) if *n >= 0 && (min..=max).contains(&(*n as usize)) => Ok(*n as usize),
        other => Err(src.at(
            v,
            key,
            format!("{other} is not a whole number from {min} to {max}"),
        )),
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
