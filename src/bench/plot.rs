//! `--plot FILE.svg`: pictures of a bench run, drawn with `plotters` (SVG backend): throughput
//! per interval per stream, Gbit/s against write size for a sweep, latency percentiles for
//! `--rr`/`--crr`, and bars (direct, vsplice, socat) for the demo.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::report::TestReport;
use crate::error::{Error, Result};

const SIZE: (u32, u32) = (900, 500);
const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn plot_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Bench(format!("--plot {}: {e}", path.display()))
}

/// Bars, each with its label and value above it: the demo's paths, a sweep's sizes, or a
/// run's latency percentiles.
fn bars(path: &Path, title: &str, unit: &str, items: &[(String, f64)]) -> Result<()> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let top = items.iter().map(|(_, v)| *v).fold(0.0, f64::max).max(1e-9) * 1.2;
    let n = items.len().max(1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(10)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..n, 0.0..top)
        .map_err(|e| plot_err(path, e))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(unit)
        .draw()
        .map_err(|e| plot_err(path, e))?;
    chart
        .draw_series(items.iter().enumerate().map(|(i, (_, v))| {
            let x = i as f64;
            Rectangle::new(
                [(x + 0.15, 0.0), (x + 0.85, *v)],
                COLORS[i % COLORS.len()].filled(),
            )
        }))
        .map_err(|e| plot_err(path, e))?;
    let centered = |size| {
        ("sans-serif", size)
            .into_text_style(&root)
            .pos(Pos::new(HPos::Center, VPos::Bottom))
    };
    chart
        .draw_series(items.iter().enumerate().flat_map(|(i, (label, v))| {
            let x = i as f64 + 0.5;
            [
                Text::new(
                    if *v >= 100.0 {
                        format!("{v:.0}")
                    } else {
                        format!("{v:.2}")
                    },
                    (x, *v + top * 0.01),
                    centered(16),
                ),
                Text::new(label.clone(), (x, *v + top * 0.07), centered(16)),
            ]
        }))
        .map_err(|e| plot_err(path, e))?;
    root.present().map_err(|e| plot_err(path, e))
}

/// Throughput per interval for each stream (and each direction of a `--bidir` stream), or
/// the latency percentiles of a `--rr`/`--crr` run.
pub fn run(path: &Path, r: &TestReport) -> Result<()> {
    if let Some(l) = &r.latency {
        let items = [
            ("p50", l.p50_us),
            ("p90", l.p90_us),
            ("p99", l.p99_us),
            ("p99.9", l.p99_9_us),
            ("max", l.max_us),
        ]
        .map(|(k, v)| (k.to_string(), v as f64));
        let title = format!(
            "{}: {:.0} transactions/s, latency (µs)",
            r.address, l.transactions_per_second
        );
        return bars(path, &title, "µs", &items);
    }
    if r.intervals.is_empty() {
        return Err(plot_err(
            path,
            "no intervals to draw (--interval 0): use an interval",
        ));
    }
    let both = r.params.direction.client_sends() && r.params.direction.server_sends();
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    let streams = r.intervals[0].streams.len();
    for s in 0..streams {
        let pick = |tx: bool| -> Vec<(f64, f64)> {
            r.intervals
                .iter()
                .map(|i| {
                    let row = &i.streams[s];
                    let bytes = if tx { row.tx_bytes } else { row.rx_bytes };
                    (
                        i.end,
                        bytes as f64 * 8.0 / (i.end - i.start).max(1e-9) / 1e9,
                    )
                })
                .collect()
        };
        if r.params.direction.client_sends() {
            let tag = if both { " client->server" } else { "" };
            series.push((format!("stream {}{tag}", s + 1), pick(true)));
        }
        if r.params.direction.server_sends() {
            let tag = if both { " server->client" } else { "" };
            series.push((format!("stream {}{tag}", s + 1), pick(false)));
        }
    }
    let top = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.5;
    let end = r.intervals.last().map_or(1.0, |i| i.end);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{}: throughput per interval", r.address),
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..end, 0.0..top)
        .map_err(|e| plot_err(path, e))?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("Gbit/s")
        .draw()
        .map_err(|e| plot_err(path, e))?;
    for (i, (name, points)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(|e| plot_err(path, e))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| plot_err(path, e))?;
    root.present().map_err(|e| plot_err(path, e))
}

/// Receiver Gbit/s for each write size of a sweep.
pub fn sweep(path: &Path, reports: &[TestReport]) -> Result<()> {
    let items: Vec<(String, f64)> = reports
        .iter()
        .map(|r| {
            (
                super::report::human_size(r.params.len),
                r.receiver_bits_per_second() / 1e9,
            )
        })
        .collect();
    let title = match reports.first() {
        Some(r) => format!("{}: Gbit/s by write size", r.address),
        None => "Gbit/s by write size".into(),
    };
    bars(path, &title, "Gbit/s", &items)
}

/// The demo's paths side by side: Gbit/s, or transactions per second with `--rr`/`--crr`.
pub fn demo(path: &Path, title: &str, unit: &str, items: &[(String, f64)]) -> Result<()> {
    bars(path, title, unit, items)
}
