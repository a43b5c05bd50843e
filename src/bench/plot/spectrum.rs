//! The latency spectrum of `--rr`/`--crr` runs, HdrHistogram style: latency (µs, from zero)
//! against the percentile on a log scale of `1 / (1 - p)` from p50 to p99.999 (see
//! [`super::axis`]), one line per series (a run, or each path of the demo). Bars of a few
//! percentiles hide the tail's shape; the spectrum shows where a relay's tail starts to rise.

use std::path::Path;

use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, ValueFormatter};
use plotters::prelude::*;

use super::axis;
use super::style::{COLORS, SIZE, plot_err};
use crate::error::Result;

/// The percentile axis for plotters: positions from [`axis::x_range`], ticks at
/// [`axis::TICKS`] labelled as percentages.
struct PercentileAxis;

impl Ranged for PercentileAxis {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        axis::pixel(*value, &axis::x_range(), limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, _hint: Hint) -> Vec<f64> {
        axis::tick_positions()
    }

    fn range(&self) -> std::ops::Range<f64> {
        axis::x_range()
    }
}

impl ValueFormatter<f64> for PercentileAxis {
    fn format(value: &f64) -> String {
        axis::tick_label(*value).to_string()
    }
}

/// One line of the spectrum: its legend and its (percentile fraction, µs) points.
pub(super) struct Line<'a> {
    pub name: String,
    pub points: &'a [(f64, u64)],
}

/// Draws `lines` as a latency spectrum into `path`.
pub(super) fn draw(path: &Path, title: &str, lines: &[Line<'_>]) -> Result<()> {
    let top = axis::y_top(
        lines
            .iter()
            .flat_map(|l| l.points.iter().map(|&(_, us)| us as f64))
            .fold(0.0, f64::max),
    );
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .margin_right(40)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(PercentileAxis, 0.0..top)
        .map_err(|e| plot_err(path, e))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (µs)")
        .y_label_formatter(&|us| format!("{us:.0}"))
        .draw()
        .map_err(|e| plot_err(path, e))?;
    for (i, line) in lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points = line
            .points
            .iter()
            .map(|&(p, us)| (axis::percentile_x(p), us as f64));
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| plot_err(path, e))?
            .label(line.name.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
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
