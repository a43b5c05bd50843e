//! Stage one of the configuration file: the TOML as serde reads it, every value with its
//! position ([`toml::Spanned`]), unknown keys refused; [`Source`], which turns a position into
//! the line an error names; and the readers of one value as a duration, a size or a count.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::{Spanned, Value};

use super::plan::ConfigError;
use crate::addr::{parse_duration, parse_size};

pub(super) type Item = Option<Spanned<Value>>;

/// Stage one: the file as serde reads it, every value with its position.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawConfig {
    pub(super) drain_timeout: Item,
    pub(super) threads: Item,
    pub(super) receive_budget: Item,
    pub(super) pin: Item,
    pub(super) idle_timeout: Item,
    pub(super) linger: Item,
    pub(super) one_way: Item,
    pub(super) buffer: Item,
    pub(super) mode: Item,
    pub(super) metrics: Option<Spanned<RawMetrics>>,
    #[serde(default)]
    pub(super) service: Vec<Spanned<RawService>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawMetrics {
    pub(super) listen: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawService {
    pub(super) name: Spanned<String>,
    pub(super) listen: Spanned<String>,
    pub(super) connect: Spanned<String>,
    pub(super) allow: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) dest: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) max_children: Item,
    pub(super) idle_timeout: Item,
    pub(super) linger: Item,
    pub(super) one_way: Item,
    pub(super) buffer: Item,
    pub(super) mode: Item,
    /// `"v1"` or `"v2"`: the connect address's `send-proxy`.
    pub(super) send_proxy: Item,
    /// The listen address's `accept-proxy`.
    pub(super) accept_proxy: Item,
    /// The listen address's `allow-source` entries.
    pub(super) allow_source: Option<Spanned<Vec<Spanned<String>>>>,
    /// The listen address's `proxy-timeout`.
    pub(super) proxy_timeout: Item,
    /// A `VSOCK-UDS-LISTEN` listen address's `guest-cid`.
    pub(super) guest_cid: Item,
}

/// Positions into the text, turned into line numbers for errors.
pub(super) struct Source<'a> {
    pub(super) file: &'a Path,
    pub(super) text: &'a str,
}

impl Source<'_> {
    pub(super) fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }

    pub(super) fn error(
        &self,
        offset: usize,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
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

    pub(super) fn at<T>(
        &self,
        value: &Spanned<T>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        self.error(value.span().start, key, message)
    }

    /// A serde error, with the key taken from the line it points at when serde's message
    /// does not say (type errors point at the value).
    pub(super) fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
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

/// A duration: seconds as a number, or a string of seconds or with a unit (`500ms`, `30s`,
/// `10m`, `1h`).
pub(super) fn duration(
    src: &Source,
    v: &Spanned<Value>,
    key: &str,
) -> Result<Duration, ConfigError> {
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
pub(super) fn size(src: &Source, v: &Spanned<Value>, key: &str) -> Result<usize, ConfigError> {
    match v.get_ref() {
        Value::Integer(n) if *n >= 0 => Ok(*n as usize),
        Value::String(s) => parse_size(s).map_err(|e| src.at(v, key, e)),
        other => Err(src.at(v, key, format!("{other} is not a size like \"1M\""))),
    }
}

pub(super) fn count(
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
