//! Throughput per interval: one thin line per stream (and per direction of a `--bidir`
//! stream), and the sum of the streams of each direction drawn thick, which is the figure a
//! reader compares with other runs. Both axes start at zero, so a dip is drawn at its true
//! size rather than magnified by a clipped axis.

use std::path::Path;

use plotters::prelude::*;

use super::axis;
use super::style::{COLORS, SIZE, plot_err};
use crate::bench::report::TestReport;
use crate::error::Result;

/// One line: its legend, its (seconds, Gbit/s) points, and whether it is a sum.
struct Line {
    name: String,
    points: Vec<(f64, f64)>,
    sum: bool,
}

/// The lines of a run: for each direction the streams send in, its streams and their sum
/// (a sum only when there is more than one stream).
fn lines(r: &TestReport) -> Vec<Line> {
    let client = r.params.direction.client_sends();
    let server = r.params.direction.server_sends();
    let both = client && server;
    let streams = r.intervals.first().map_or(0, |i| i.streams.len());
    let gbit =
        |bytes: u64, start: f64, end: f64| bytes as f64 * 8.0 / (end - start).max(1e-9) / 1e9;
    let mut out = Vec::new();
    for (sends, tx, tag) in [
        (client, true, "client->server"),
        (server, false, "server->client"),
    ] {
        if !sends {
            continue;
        }
        let tag = if both {
            format!(" {tag}")
        } else {
            String::new()
        };
        let bytes = |row: &crate::bench::report::IntervalStream| {
            if tx { row.tx_bytes } else { row.rx_bytes }
        };
        for s in 0..streams {
            let points = r
                .intervals
                .iter()
                .map(|i| (i.end, gbit(bytes(&i.streams[s]), i.start, i.end)))
                .collect();
            out.push(Line {
                name: format!("stream {}{tag}", s + 1),
                points,
                sum: false,
            });
        }
        if streams > 1 {
            let points = r
                .intervals
                .iter()
                .map(|i| {
                    (
                        i.end,
                        gbit(i.streams.iter().map(bytes).sum(), i.start, i.end),
                    )
                })
                .collect();
            out.push(Line {
                name: format!("sum of {streams} streams{tag}"),
                points,
                sum: true,
            });
        }
    }
    out
}

/// Draws `r`'s intervals into `path`.
pub(super) fn draw(path: &Path, r: &TestReport) -> Result<()> {
    if r.intervals.is_empty() {
        return Err(plot_err(
            path,
            "no intervals to draw (--interval 0): use an interval",
        ));
    }
    let lines = lines(r);
    let top = axis::y_top(
        lines
            .iter()
            .flat_map(|l| l.points.iter().map(|&(_, y)| y))
            .fold(0.0, f64::max),
    ) * 1.2;
    let end = r.intervals.last().map_or(1.0, |i| i.end);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{}: throughput per interval", r.address),
            ("sans-serif", 20),
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
    let (mut streams, mut sums) = (0, 0);
    for line in &lines {
        let style = if line.sum {
            sums += 1;
            [BLACK, RGBColor(120, 120, 120)][(sums - 1) % 2].stroke_width(4)
        } else {
            streams += 1;
            COLORS[(streams - 1) % COLORS.len()].stroke_width(2)
        };
        chart
            .draw_series(LineSeries::new(line.points.clone(), style))
            .map_err(|e| plot_err(path, e))?
            .label(line.name.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| plot_err(path, e))?;
    root.present().map_err(|e| plot_err(path, e))
}
