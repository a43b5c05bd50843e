//! `--plot FILE.svg`: pictures of a bench run, drawn with `plotters` (SVG backend, so the
//! pictures are text that a test can parse and a README can show).
//!
//! What is drawn depends on the run: a latency spectrum for `--rr`/`--crr` (`spectrum.rs`),
//! throughput per interval with the sum of the streams (`throughput.rs`), Gbit/s by write size
//! for `--sweep`, and the demo's paths side by side (`bars.rs`): Gbit/s and relay CPU-s/GiB, or
//! one latency line per path with `--rr`/`--crr`. The axis maths is pure and lives in
//! [`axis`]; this file only picks the picture.

pub(crate) mod axis;
mod bars;
mod spectrum;
mod style;
mod throughput;

use std::path::Path;

use super::report::TestReport;
use super::rr::LatencyReport;
use crate::error::Result;

/// The legend of a latency line: its name and transactions per second.
fn latency_name(name: &str, l: &LatencyReport) -> String {
    format!("{name}: {:.0} trans/s", l.transactions_per_second)
}

/// A `--rr`/`--crr` run's latency spectrum, or a throughput run's intervals.
pub(crate) fn run(path: &Path, r: &TestReport) -> Result<()> {
    let Some(l) = &r.latency else {
        return throughput::draw(path, r);
    };
    let what = workload_name(r);
    let streams = r.params.streams;
    let name = format!("{streams} stream{}", if streams == 1 { "" } else { "s" });
    let title = format!("{}: {what} latency by percentile", r.address);
    spectrum::draw(
        path,
        &title,
        &[spectrum::Line {
            name: latency_name(&name, l),
            points: &l.spectrum,
        }],
    )
}

fn workload_name(r: &TestReport) -> &'static str {
    match r.params.workload {
        super::proto::Workload::Crr => "--crr",
        _ => "--rr",
    }
}

/// Receiver Gbit/s for each write size of a sweep.
pub(crate) fn sweep(path: &Path, reports: &[TestReport]) -> Result<()> {
    let items: Vec<bars::Bar> = reports
        .iter()
        .map(|r| {
            (
                super::report::human_size(r.params.len),
                Some(r.receiver_bits_per_second() / 1e9),
            )
        })
        .collect();
    let title = match reports.first() {
        Some(r) => format!("{}: Gbit/s by write size", r.address),
        None => "Gbit/s by write size".into(),
    };
    bars::single(path, &title, "Gbit/s", &items)
}

/// One path of the demo, as the pictures need it.
pub(crate) struct DemoPath<'a> {
    pub name: String,
    pub gbit_per_s: f64,
    /// The relay's CPU-seconds per GiB moved (None for the direct path).
    pub relay_cpu_s_per_gib: Option<f64>,
    pub latency: Option<&'a LatencyReport>,
}

/// The demo's paths side by side: two panels of bars (Gbit/s, relay CPU-s/GiB), or with
/// `--rr`/`--crr` (every path has latencies) one latency line per path.
pub(crate) fn demo(path: &Path, title: &str, paths: &[DemoPath<'_>]) -> Result<()> {
    let latencies: Option<Vec<spectrum::Line<'_>>> = paths
        .iter()
        .map(|p| {
            p.latency.map(|l| spectrum::Line {
                name: latency_name(&p.name, l),
                points: &l.spectrum,
            })
        })
        .collect();
    if let Some(lines) = latencies.filter(|l| !l.is_empty()) {
        return spectrum::draw(path, &format!("{title}: latency by percentile"), &lines);
    }
    let gbit: Vec<bars::Bar> = paths
        .iter()
        .map(|p| (p.name.clone(), Some(p.gbit_per_s)))
        .collect();
    let cpu: Vec<bars::Bar> = paths
        .iter()
        .map(|p| (p.name.clone(), p.relay_cpu_s_per_gib))
        .collect();
    bars::pair(
        path,
        title,
        [
            ("throughput (higher is better)", "Gbit/s", &gbit),
            (
                "relay CPU per GiB moved (lower is better)",
                "CPU-s/GiB",
                &cpu,
            ),
        ],
    )
}
