//! How one line looks. Three shapes, chosen once per process:
//!
//! - text (the default, socat's): `2026/11/25 15:04:05 vsplice[1234] W message`; structured
//!   fields stay out of it, so the text is what it always was;
//! - JSON (`--log-format json`): one object a line, `timestamp` (RFC 3339, UTC, ms), `level`,
//!   `pid`, `message`, then the event's fields (`conn_id`, `peer`, `bytes_first_to_second`,
//!   ...) as numbers or strings;
//! - under systemd, when standard error *is* the journal stream (`JOURNAL_STREAM` names its
//!   device and inode, checked with `fstat` as sd-daemon does, so a child that merely
//!   inherited the variable is not fooled), each line starts with sd-daemon's `<N>` priority
//!   and drops the timestamp and `vsplice[pid]` journald records itself; `journalctl -p
//!   warning` then filters on vsplice's levels. JSON lines get the prefix too (journald strips
//!   it, so the stored message is the plain object).
//!
//! [`Lines`] is the `tracing-subscriber` event formatter; [`render`] is the same shape for the
//! logger's own notes (dropped lines, suppressed lines), which are not `tracing` events.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use super::level::Level;

/// The line format `--log-format` picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text = 0,
    Json = 1,
}

static FORMAT: AtomicU8 = AtomicU8::new(Format::Text as u8);

/// Picks the format of every line from now on.
pub fn set_format(format: Format) {
    FORMAT.store(format as u8, Ordering::Relaxed);
}

/// The shape of lines: the format, and whether standard error is the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Style {
    pub format: Format,
    pub journal: bool,
}

/// The process's style: `--log-format`, and the journal check (made once).
pub(crate) fn style() -> Style {
    static JOURNAL: OnceLock<bool> = OnceLock::new();
    let format = match FORMAT.load(Ordering::Relaxed) {
        1 => Format::Json,
        _ => Format::Text,
    };
    let journal = *JOURNAL.get_or_init(|| {
        let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
            return false;
        };
        let Ok(stat) = nix::sys::stat::fstat(std::io::stderr()) else {
            return false;
        };
        is_journal_stream(value.to_str().unwrap_or(""), stat.st_dev, stat.st_ino)
    });
    Style { format, journal }
}

/// Whether `JOURNAL_STREAM`'s `DEVICE:INODE` (decimal) names the file `dev`, `ino`.
pub(crate) fn is_journal_stream(value: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.split_once(':') else {
        return false;
    };
    d.parse() == Ok(dev) && i.parse() == Ok(ino)
}

/// A structured field's value, typed for JSON.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    U64(u64),
    I64(i64),
    F64(f64),
    Bool(bool),
    Str(String),
}

impl Value {
    fn json(&self) -> serde_json::Value {
        match self {
            Value::U64(v) => (*v).into(),
            Value::I64(v) => (*v).into(),
            Value::F64(v) => (*v).into(),
            Value::Bool(v) => (*v).into(),
            Value::Str(v) => v.as_str().into(),
        }
    }
}

/// One line, with its newline, in `style`.
pub(crate) fn render(
    style: Style,
    level: Level,
    message: &str,
    fields: &[(&str, Value)],
) -> String {
    let mut line = String::with_capacity(64 + message.len());
    if style.journal {
        let _ = write!(line, "<{}>", level.priority());
    }
    match style.format {
        Format::Text if style.journal => line.push_str(message),
        Format::Text => {
            let _ = write!(
                line,
                "{} vsplice[{}] {} {message}",
                text_timestamp(now()),
                std::process::id(),
                level.letter()
            );
        }
        Format::Json => {
            let mut object = serde_json::Map::new();
            object.insert("timestamp".into(), rfc3339(now()).into());
            object.insert("level".into(), level.name().into());
            object.insert("pid".into(), std::process::id().into());
            object.insert("message".into(), message.into());
            for (name, value) in fields {
                object.insert((*name).to_string(), value.json());
            }
            line.push_str(&serde_json::Value::Object(object).to_string());
        }
    }
    line.push('\n');
    line
}

/// The `tracing-subscriber` event formatter: an event's message and fields, in [`style`].
#[derive(Debug, Default)]
pub(crate) struct Lines;

impl<S, N> FormatEvent<S, N> for Lines
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let level = Level::from_tracing(*event.metadata().level());
        writer.write_str(&render(style(), level, &fields.message, &fields.fields))
    }
}

/// Collects an event's message and fields.
#[derive(Debug, Default)]
struct Fields {
    message: String,
    fields: Vec<(&'static str, Value)>,
}

impl Visit for Fields {
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields.push((field.name(), Value::U64(value)));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields.push((field.name(), Value::I64(value)));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.fields.push((field.name(), Value::F64(value)));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields.push((field.name(), Value::Bool(value)));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.fields
            .push((field.name(), Value::Str(value.to_string())));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        // The message is `format_args!`, whose Debug is its Display; `%field` values arrive
        // here wrapped the same way.
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.fields.push((field.name(), Value::Str(text)));
        }
    }
}

/// Now, in milliseconds since 1970.
fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Date and time of day (UTC) of `millis` since 1970.
fn civil(millis: i64) -> (i64, u32, u32, i64, i64, i64, i64) {
    let secs = millis.div_euclid(1000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    (
        y,
        m,
        d,
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        millis.rem_euclid(1000),
    )
}

/// `2026/11/25 15:04:05` (socat's, UTC).
fn text_timestamp(millis: i64) -> String {
    let (y, m, d, h, min, s, _) = civil(millis);
    format!("{y:04}/{m:02}/{d:02} {h:02}:{min:02}:{s:02}")
}

/// `2026-11-25T15:04:05.123Z`.
fn rfc3339(millis: i64) -> String {
    let (y, m, d, h, min, s, ms) = civil(millis);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{s:02}.{ms:03}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_417), (2025, 11, 25));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(rfc3339(1_764_083_045_123), "2025-11-25T15:04:05.123Z");
        assert_eq!(text_timestamp(1_764_083_045_999), "2025/11/25 15:04:05");
    }

    #[test]
    fn a_text_line_reads_as_socat_writes_it_and_leaves_fields_out() {
        let style = Style {
            format: Format::Text,
            journal: false,
        };
        let line = render(style, Level::Warn, "hello", &[("conn_id", Value::U64(7))]);
        let pid = std::process::id();
        assert!(
            line.ends_with(&format!(" vsplice[{pid}] W hello\n")),
            "{line}"
        );
        let rest = format!(" vsplice[{pid}] W hello\n");
        assert_eq!(
            line.len(),
            "2026/11/25 15:04:05".len() + rest.len(),
            "{line}"
        );
    }

    #[test]
    fn a_journal_line_starts_with_its_priority_and_has_no_timestamp() {
        let style = Style {
            format: Format::Text,
            journal: true,
        };
        assert_eq!(render(style, Level::Warn, "hello", &[]), "<4>hello\n");
        assert_eq!(render(style, Level::Error, "x", &[]), "<3>x\n");
        assert_eq!(render(style, Level::Notice, "x", &[]), "<5>x\n");
        assert_eq!(render(style, Level::Info, "x", &[]), "<6>x\n");
        assert_eq!(render(style, Level::Debug, "x", &[]), "<7>x\n");
    }

    #[test]
    fn a_json_line_is_one_object_with_the_fields_typed() {
        let style = Style {
            format: Format::Json,
            journal: false,
        };
        let line = render(
            style,
            Level::Notice,
            "closed \"quoted\"\n",
            &[
                ("conn_id", Value::U64(7)),
                ("peer", Value::Str("TCP 1.2.3.4:5".into())),
                ("duration_s", Value::F64(0.5)),
            ],
        );
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "notice");
        assert_eq!(v["pid"], std::process::id());
        assert_eq!(v["message"], "closed \"quoted\"\n");
        assert_eq!(v["conn_id"], 7);
        assert_eq!(v["peer"], "TCP 1.2.3.4:5");
        assert_eq!(v["duration_s"], 0.5);
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn the_journal_stream_must_name_this_very_file() {
        assert!(is_journal_stream("8:12345", 8, 12345));
        assert!(!is_journal_stream("8:12345", 8, 12346));
        assert!(!is_journal_stream("9:12345", 8, 12345));
        assert!(!is_journal_stream("", 8, 12345));
        assert!(!is_journal_stream("8:x", 8, 12345));
    }
}
