//! The metric families of a service-mode process: the counters, gauges and histograms (kept
//! by the `prometheus-client` crate, which also writes the OpenMetrics text) and the
//! per-service handles the data path bumps.
//!
//! The data path never takes a lock for a metric: [`Metrics::service`] resolves one service's
//! label set once, and its [`ServiceMetrics`] holds clones of the counters (each an atomic
//! shared with the registry). Only labels that vary per event (close reason, errno) look their
//! series up, once per connection. A scrape encodes under the registry's own locks, which the
//! data path does not take.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: String,
}

/// Why a connection ended (label `reason` of `vsplice_connections_closed_total`).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ReasonLabel {
    /// Both directions reached end of file.
    eof,
    /// `idle-timeout` passed without a byte moved.
    idle_timeout,
    /// `linger` passed after one direction ended.
    linger_timeout,
    /// A socket error (reset, broken pipe, ...).
    error,
    /// The connect address could not be reached.
    dial_failed,
    /// Cut by the relay stopping (the end of a drain).
    stopped,
}

impl ReasonLabel {
    pub const ALL: [ReasonLabel; 6] = [
        ReasonLabel::eof,
        ReasonLabel::idle_timeout,
        ReasonLabel::linger_timeout,
        ReasonLabel::error,
        ReasonLabel::dial_failed,
        ReasonLabel::stopped,
    ];
}

/// Which way bytes went (label `direction` of `vsplice_bytes_total`): "first" is the
/// listening side's connection, "second" the dialed one.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum DirectionLabel {
    first_to_second,
    second_to_first,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClosedLabels {
    service: String,
    reason: ReasonLabel,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrnoLabels {
    service: String,
    errno: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    service: String,
    result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProxyErrorLabels {
    service: String,
    reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    service: String,
    direction: DirectionLabel,
}

/// One metric family, defined once: the registry registers it from here, and the metrics table
/// of `docs/service.md` (Running as a service, Metrics) is checked against this list by a test, so the name, type,
/// help and labels an operator reads cannot drift from what a scrape shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricDef {
    /// The name as registered: without the `vsplice_` prefix, a counter's `_total` and the
    /// unit suffix, all of which the encoder adds.
    pub name: &'static str,
    pub kind: MetricKind,
    pub unit: Option<&'static str>,
    /// The `# HELP` text.
    pub help: &'static str,
    /// What the labels are (the metrics table's fourth column, in `docs/service.md`).
    pub labels: &'static str,
}

/// The OpenMetrics type of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

impl MetricKind {
    pub fn name(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        }
    }
}

impl MetricDef {
    /// The name a scrape shows: `vsplice_`, the name, the unit, and `_total` for a counter.
    pub fn exposed_name(&self) -> String {
        let unit = self.unit.map(|u| format!("_{u}")).unwrap_or_default();
        let total = if self.kind == MetricKind::Counter {
            "_total"
        } else {
            ""
        };
        format!("vsplice_{}{unit}{total}", self.name)
    }
}

const fn def(
    name: &'static str,
    kind: MetricKind,
    unit: Option<&'static str>,
    help: &'static str,
    labels: &'static str,
) -> MetricDef {
    MetricDef {
        name,
        kind,
        unit,
        help,
        labels,
    }
}

/// Every metric family of `vsplice serve`, in the order a scrape lists them.
pub const METRICS: &[MetricDef] = &[
    def(
        "connections_accepted",
        MetricKind::Counter,
        None,
        "Connections accepted and handed to the relay",
        "`service`",
    ),
    def(
        "connections_denied",
        MetricKind::Counter,
        None,
        "Connections closed at once because the allow list refused the peer",
        "`service`",
    ),
    def(
        "connections_active",
        MetricKind::Gauge,
        None,
        "Connections open now",
        "`service`",
    ),
    def(
        "connections_closed",
        MetricKind::Counter,
        None,
        "Connections ended, by reason",
        "`service`, `reason`: `eof` (both directions ended), `error` (a read, write or shutdown \
         failed: reset, broken pipe), `dial_failed`, `idle_timeout` (`-T`), `linger_timeout` \
         (`-t`), `stopped` (cut at the end of a drain)",
    ),
    def(
        "dial_failures",
        MetricKind::Counter,
        None,
        "Failed connects to a service's connect address, by errno",
        "`service`, `errno` (`ECONNREFUSED`, `ETIMEDOUT`, ...; `resolve` for a name that did \
         not resolve)",
    ),
    def(
        "proxy_requests",
        MetricKind::Counter,
        None,
        "Requests a SOCKS5-SERVER or HTTP-CONNECT-SERVER answered, by result",
        "`service`, `result`: `connected`, `denied` (no `dest=` entry allows the destination or \
         what it resolved to), `dial_failed`, `auth_failed`, `bad_request`, `unsupported` \
         (BIND, UDP ASSOCIATE, an unknown address type or method), `timeout`, `closed`",
    ),
    def(
        "proxy_header_errors",
        MetricKind::Counter,
        None,
        "Connections of an accept-proxy service ended for a bad or missing PROXY header, by reason",
        "`service`, `reason` (`bad-signature`, `bad-v1`, `bad-version`, `bad-command`, \
         `bad-family`, `bad-length`, `bad-tlv`, `bad-crc`, `too-long`, `timeout`, `closed`, \
         `read-error`, `source-denied`)",
    ),
    def(
        "bytes",
        MetricKind::Counter,
        None,
        "Bytes relayed, by direction",
        "`service`, `direction` (`first_to_second`, `second_to_first`)",
    ),
    def(
        "messages",
        MetricKind::Counter,
        None,
        "Messages relayed whole (SEQPACKET, UDP, framed streams), by direction",
        "`service`, `direction` (`first_to_second`, `second_to_first`)",
    ),
    def(
        "connection_duration",
        MetricKind::Histogram,
        Some("seconds"),
        "How long connections lasted",
        "`service` (1 ms to 9 h)",
    ),
    def(
        "dial_latency",
        MetricKind::Histogram,
        Some("seconds"),
        "Time from accept to the connect address answering",
        "`service` (from hand-over to a worker to connected; 50 µs to 13 s)",
    ),
    def(
        "engine_workers",
        MetricKind::Gauge,
        None,
        "Worker threads",
        "none",
    ),
    def(
        "engine_parked_connections",
        MetricKind::Gauge,
        None,
        "Connections whose sockets sit in io_uring fixed-file tables",
        "none",
    ),
    def(
        "engine_pipes_in_use",
        MetricKind::Gauge,
        None,
        "Splice pipes open: held by connections or pooled for reuse",
        "none",
    ),
    def(
        "engine_receive_cap",
        MetricKind::Gauge,
        Some("bytes"),
        "Per-socket TCP receive buffer the receive budget sets now (0: uncapped)",
        "none",
    ),
    def(
        "log_lines_dropped",
        MetricKind::Counter,
        None,
        "Log lines dropped because standard error did not keep up",
        "none",
    ),
];

/// The definition of family `name` (a name missing from [`METRICS`] is a bug: it panics in
/// every test that builds [`Metrics`]).
fn metric(name: &str) -> &'static MetricDef {
    METRICS
        .iter()
        .find(|d| d.name == name)
        .unwrap_or_else(|| panic!("metric {name} has no definition in METRICS"))
}

/// Registers family `name` from its definition.
fn register(r: &mut Registry, name: &str, family: impl prometheus_client::registry::Metric) {
    let d = metric(name);
    match d.unit {
        None => r.register(d.name, d.help, family),
        Some("seconds") => r.register_with_unit(d.name, d.help, Unit::Seconds, family),
        Some("bytes") => r.register_with_unit(d.name, d.help, Unit::Bytes, family),
        Some(other) => panic!("metric {name}: no unit {other}"),
    }
}

type HistogramFamily = Family<ServiceLabel, Histogram, fn() -> Histogram>;

/// Connection durations: 1 ms to about 9 hours.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 4.0, 12))
}

/// Dial latencies: 50 µs to about 13 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.00005, 4.0, 10))
}

/// Engine-wide gauges (no `service` label), set by whoever samples the engine.
#[derive(Debug, Default, Clone)]
pub struct EngineGauges {
    pub workers: Gauge,
    pub parked_connections: Gauge,
    pub pipes_in_use: Gauge,
    /// The receive budget's current per-socket cap in bytes; 0 when uncapped.
    pub receive_cap_bytes: Gauge,
    /// Log lines dropped because standard error did not keep up (sampled from
    /// [`crate::log::dropped_total`] with [`EngineGauges::sample_log_lines_dropped`]).
    pub log_lines_dropped: Counter,
}

impl EngineGauges {
    /// Brings the dropped-lines counter up to `total` (it only ever grows).
    pub fn sample_log_lines_dropped(&self, total: u64) {
        let seen = self.log_lines_dropped.get();
        if total > seen {
            self.log_lines_dropped.inc_by(total - seen);
        }
    }
}

type ScrapeHook = Box<dyn Fn(&EngineGauges) + Send + Sync>;

/// Every metric of the process, and the registry that writes them out.
pub struct Metrics {
    registry: Registry,
    accepted: Family<ServiceLabel, Counter>,
    denied: Family<ServiceLabel, Counter>,
    active: Family<ServiceLabel, Gauge>,
    closed: Family<ClosedLabels, Counter>,
    dial_failures: Family<ErrnoLabels, Counter>,
    proxy_requests: Family<ResultLabels, Counter>,
    proxy_errors: Family<ProxyErrorLabels, Counter>,
    bytes: Family<DirectionLabels, Counter>,
    messages: Family<DirectionLabels, Counter>,
    durations: HistogramFamily,
    dial_latency: HistogramFamily,
    engine: EngineGauges,
    before_scrape: Mutex<Option<ScrapeHook>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::with_prefix("vsplice"),
            accepted: Family::default(),
            denied: Family::default(),
            active: Family::default(),
            closed: Family::default(),
            dial_failures: Family::default(),
            proxy_requests: Family::default(),
            proxy_errors: Family::default(),
            bytes: Family::default(),
            messages: Family::default(),
            durations: Family::new_with_constructor(duration_histogram),
            dial_latency: Family::new_with_constructor(latency_histogram),
            engine: EngineGauges::default(),
            before_scrape: Mutex::new(None),
        };
        let r = &mut m.registry;
        // Counters get their `_total` suffix from the encoder; names, help and units come
        // from METRICS.
        register(r, "connections_accepted", m.accepted.clone());
        register(r, "connections_denied", m.denied.clone());
        register(r, "connections_active", m.active.clone());
        register(r, "connections_closed", m.closed.clone());
        register(r, "dial_failures", m.dial_failures.clone());
        register(r, "proxy_requests", m.proxy_requests.clone());
        register(r, "proxy_header_errors", m.proxy_errors.clone());
        register(r, "bytes", m.bytes.clone());
        register(r, "messages", m.messages.clone());
        register(r, "connection_duration", m.durations.clone());
        register(r, "dial_latency", m.dial_latency.clone());
        let e = &m.engine;
        register(r, "engine_workers", e.workers.clone());
        register(r, "engine_parked_connections", e.parked_connections.clone());
        register(r, "engine_pipes_in_use", e.pipes_in_use.clone());
        register(r, "engine_receive_cap", e.receive_cap_bytes.clone());
        register(r, "log_lines_dropped", e.log_lines_dropped.clone());
        m
    }

    /// The handles one service's connections bump. Creating it makes the service's series
    /// appear (at zero) in the next scrape.
    pub fn service(&self, name: &str) -> ServiceMetrics {
        let label = ServiceLabel {
            service: name.to_string(),
        };
        let direction = |direction| DirectionLabels {
            service: name.to_string(),
            direction,
        };
        ServiceMetrics {
            name: name.to_string(),
            accepted: self.accepted.get_or_create_owned(&label),
            denied: self.denied.get_or_create_owned(&label),
            active: self.active.get_or_create_owned(&label),
            bytes: [
                self.bytes
                    .get_or_create_owned(&direction(DirectionLabel::first_to_second)),
                self.bytes
                    .get_or_create_owned(&direction(DirectionLabel::second_to_first)),
            ],
            messages: [
                self.messages
                    .get_or_create_owned(&direction(DirectionLabel::first_to_second)),
                self.messages
                    .get_or_create_owned(&direction(DirectionLabel::second_to_first)),
            ],
            duration: self.durations.get_or_create_owned(&label),
            dial_latency: self.dial_latency.get_or_create_owned(&label),
            closed: ReasonLabel::ALL.map(|reason| {
                self.closed.get_or_create_owned(&ClosedLabels {
                    service: name.to_string(),
                    reason,
                })
            }),
            dial_failures: self.dial_failures.clone(),
            proxy_requests: self.proxy_requests.clone(),
            proxy_errors: self.proxy_errors.clone(),
        }
    }

    /// The engine-wide gauges.
    pub fn engine(&self) -> &EngineGauges {
        &self.engine
    }

    /// Runs `hook` before each scrape, to sample values kept elsewhere (the engine's
    /// counters) into the gauges.
    pub fn before_scrape(&self, hook: impl Fn(&EngineGauges) + Send + Sync + 'static) {
        *self.before_scrape.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(hook));
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn encode(&self) -> String {
        if let Some(hook) = &*self.before_scrape.lock().unwrap_or_else(|e| e.into_inner()) {
            hook(&self.engine);
        }
        let mut out = String::with_capacity(4096);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// One service's metrics, cheap to bump from any thread (atomics, no locks).
#[derive(Debug, Clone)]
pub struct ServiceMetrics {
    name: String,
    accepted: Counter,
    denied: Counter,
    active: Gauge,
    bytes: [Counter; 2],
    messages: [Counter; 2],
    duration: Histogram,
    dial_latency: Histogram,
    /// One counter per [`ReasonLabel`], resolved up front: a close touches no lock.
    closed: [Counter; ReasonLabel::ALL.len()],
    dial_failures: Family<ErrnoLabels, Counter>,
    proxy_requests: Family<ResultLabels, Counter>,
    proxy_errors: Family<ProxyErrorLabels, Counter>,
}

impl ServiceMetrics {
    /// A proxy request ended with `result` (one of a fixed set: see METRICS).
    pub fn on_proxy_request(&self, result: &str) {
        self.proxy_requests
            .get_or_create(&ResultLabels {
                service: self.name.clone(),
                result: result.to_string(),
            })
            .inc();
    }

    /// A connection's PROXY header was bad, missing or late (`reason`: a fixed word).
    pub fn on_proxy_header_error(&self, reason: &str) {
        self.proxy_errors
            .get_or_create(&ProxyErrorLabels {
                service: self.name.clone(),
                reason: reason.to_string(),
            })
            .inc();
    }

    /// A connection was accepted and handed to the relay.
    pub fn on_accept(&self) {
        self.accepted.inc();
        self.active.inc();
    }

    /// A peer was refused by the allow list (and closed with no byte relayed).
    pub fn on_deny(&self) {
        self.denied.inc();
    }

    /// The connect address answered, `latency` after the accept.
    pub fn on_dial(&self, latency: Duration) {
        self.dial_latency.observe(latency.as_secs_f64());
    }

    /// The connect address could not be reached (the connection then closes with
    /// [`ReasonLabel::dial_failed`]).
    /// `errno` names the error (`ECONNREFUSED`).
    pub fn on_dial_failure(&self, errno: &str) {
        self.dial_failures
            .get_or_create(&ErrnoLabels {
                service: self.name.clone(),
                errno: errno.to_string(),
            })
            .inc();
    }

    /// Bytes delivered in one direction.
    pub fn add_bytes(&self, direction: DirectionLabel, bytes: u64) {
        self.bytes[direction as usize].inc_by(bytes);
    }

    /// Messages delivered whole in one direction.
    pub fn add_messages(&self, direction: DirectionLabel, messages: u64) {
        self.messages[direction as usize].inc_by(messages);
    }

    /// A connection counted by [`ServiceMetrics::on_accept`] ended after `lasted`.
    pub fn on_close(&self, reason: ReasonLabel, lasted: Duration) {
        self.active.dec();
        self.duration.observe(lasted.as_secs_f64());
        self.closed[reason as usize].inc();
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The service's counters in one line, for the log a process leaves at exit (a process
    /// that handed over at an upgrade serves no scrape any more).
    pub fn summary(&self) -> String {
        let closed: u64 = self.closed.iter().map(Counter::get).sum();
        format!(
            "accepted {}, denied {}, closed {closed}, open {}, bytes {} first-to-second, {} second-to-first",
            self.accepted.get(),
            self.denied.get(),
            self.active.get(),
            self.bytes[0].get(),
            self.bytes[1].get()
        )
    }
}

#[cfg(test)]
mod tests {
    /// The metrics table of `docs/service.md`, row for row, as [`METRICS`] defines it.
    fn readme_table() -> String {
        METRICS
            .iter()
            .map(|d| {
                format!(
                    "| `{}` | {} | {} | {} |\n",
                    d.exposed_name(),
                    d.kind.name(),
                    d.help,
                    d.labels
                )
            })
            .collect()
    }

    #[test]
    fn the_service_doc_lists_every_metric_with_the_name_type_help_and_labels_a_scrape_shows() {
        let readme = include_str!("../../../docs/service.md");
        let rows: String = readme
            .lines()
            .filter(|l| l.starts_with("| `vsplice_"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            rows,
            readme_table(),
            "docs/service.md's metrics table differs from METRICS; it should read:\n{}",
            readme_table()
        );
    }

    #[test]
    fn a_scrape_shows_exactly_the_defined_families_with_their_help() {
        let metrics = Metrics::new();
        let _service = metrics.service("s"); // labelled families appear once a service has them
        let text = metrics.encode();
        let helps: Vec<&str> = text.lines().filter(|l| l.starts_with("# HELP ")).collect();
        let wanted: Vec<String> = METRICS
            .iter()
            .map(|d| {
                let name = d.exposed_name();
                let family = name.strip_suffix("_total").unwrap_or(&name).to_string();
                format!("# HELP {family} {}.", d.help)
            })
            .collect();
        for help in &helps {
            assert!(
                wanted.iter().any(|w| w == help),
                "{help}: a family without a definition in METRICS, or with other help"
            );
        }
        // Every family shows once a service exists, but for dial failures, proxy requests and
        // PROXY header errors, whose series appear with their first errno, result or reason.
        for want in wanted.iter().filter(|w| {
            !w.contains("dial_failures ")
                && !w.contains("proxy_requests ")
                && !w.contains("proxy_header_errors ")
        }) {
            assert!(
                helps.contains(&want.as_str()),
                "{want} is not in the scrape"
            );
        }
    }

    use super::*;

    #[test]
    fn a_service_appears_at_zero_and_counts_its_connections() {
        let m = Metrics::new();
        let text = m.encode();
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(!text.contains("service=\"api\""));
        let api = m.service("api");
        let text = m.encode();
        assert!(text.contains("vsplice_connections_accepted_total{service=\"api\"} 0\n"));
        api.on_accept();
        api.on_accept();
        api.on_deny();
        api.add_bytes(DirectionLabel::first_to_second, 1000);
        api.add_bytes(DirectionLabel::second_to_first, 7);
        api.on_dial(Duration::from_millis(2));
        api.on_dial_failure("ECONNREFUSED");
        api.on_close(ReasonLabel::eof, Duration::from_secs(3));
        m.engine().workers.set(4);
        let text = m.encode();
        for line in [
            "vsplice_connections_accepted_total{service=\"api\"} 2",
            "vsplice_connections_denied_total{service=\"api\"} 1",
            "vsplice_connections_active{service=\"api\"} 1",
            "vsplice_connections_closed_total{service=\"api\",reason=\"eof\"} 1",
            "vsplice_dial_failures_total{service=\"api\",errno=\"ECONNREFUSED\"} 1",
            "vsplice_bytes_total{service=\"api\",direction=\"first_to_second\"} 1000",
            "vsplice_bytes_total{service=\"api\",direction=\"second_to_first\"} 7",
            "vsplice_connection_duration_seconds_count{service=\"api\"} 1",
            "vsplice_dial_latency_seconds_count{service=\"api\"} 1",
            "vsplice_engine_workers 4",
            "vsplice_engine_receive_cap_bytes 0",
            "vsplice_log_lines_dropped_total 0",
        ] {
            assert!(
                text.contains(&format!("{line}\n")),
                "{line} missing in\n{text}"
            );
        }
    }

    #[test]
    fn the_scrape_hook_samples_engine_gauges() {
        let m = Metrics::new();
        m.before_scrape(|e| {
            e.parked_connections.set(12);
        });
        assert!(
            m.encode()
                .contains("vsplice_engine_parked_connections 12\n")
        );
    }
}
