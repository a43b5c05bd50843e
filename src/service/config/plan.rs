//! The checked plan a configuration file becomes ([`ServePlan`]: the process's options and
//! one [`ServicePlan`] per service), what `serve --check` prints of it, and the error that
//! names the file, line and key of whatever the file got wrong. Nothing here reads TOML:
//! [`super::resolve`] builds these values.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::addr::Address;
use crate::addr::allow::Allow;
use crate::engine::Mode;
use crate::error::Error;

/// How long connections may go on after a stop before they are cut, when the file says nothing.
pub(crate) const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

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
    pub(super) fn or(&self, defaults: &ServiceOptions) -> ServiceOptions {
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
