//! Stage two of the configuration file: every raw value given its meaning with the same code
//! the command line uses (the address grammar, the allow and dest entries, the size and
//! duration parsers, [`crate::addr::check_pair`]), the keys that stand for address options
//! merged into their addresses, and the sockets of all services checked against each other.

use std::collections::HashMap;
use std::path::Path;

use toml::Spanned;

use super::plan::{
    ConfigError, DEFAULT_DRAIN_TIMEOUT, GlobalOptions, OneWay, ServePlan, ServiceOptions,
    ServicePlan,
};
use super::raw::{Item, RawConfig, RawService, Source, count, duration, size};
use crate::addr::allow::Allow;
use crate::addr::{Address, AddressError, Kind};
use crate::engine::Mode;
use crate::net::bindkey::BindKey;

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
}

/// Stage two: reads `text` (the contents of `file`) into a checked plan.
pub(crate) fn resolve(file: &Path, text: &str) -> Result<ServePlan, ConfigError> {
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
        BindKey::Datagram(local) => format!("UDP {local}"),
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
