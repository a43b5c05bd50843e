//! Bar charts: a sweep's Gbit/s by write size, and the demo's paths side by side in two
//! panels (Gbit/s, and the relay's CPU-seconds per GiB moved, which is what a relay costs
//! and what a faster machine does not hide). Bars start at zero; each carries its value and
//! label above it, so the picture reads without the axis. A path with no value (the direct
//! path has no relay CPU) gets its label and "none" instead of a bar.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::axis;
use super::style::{COLORS, SIZE, plot_err};
use crate::error::Result;

/// One bar: its label and value (None: nothing to draw).
pub(super) type Bar = (String, Option<f64>);

fn number(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Draws `items` as bars on `area`, titled `title`, the y axis in `unit`.
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    path: &Path,
    title: &str,
    unit: &str,
    items: &[Bar],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let top = axis::y_top(items.iter().filter_map(|(_, v)| *v).fold(0.0, f64::max)) * 1.1;
    let n = items.len().max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
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
        .draw_series(items.iter().enumerate().filter_map(|(i, (_, v))| {
            let x = i as f64;
            v.map(|v| {
                Rectangle::new(
                    [(x + 0.15, 0.0), (x + 0.85, v)],
                    COLORS[i % COLORS.len()].filled(),
                )
            })
        }))
        .map_err(|e| plot_err(path, e))?;
    let centered = |size| {
        ("sans-serif", size)
            .into_text_style(area)
            .pos(Pos::new(HPos::Center, VPos::Bottom))
    };
    chart
        .draw_series(items.iter().enumerate().flat_map(|(i, (label, v))| {
            let x = i as f64 + 0.5;
            let y = v.unwrap_or(0.0);
            [
                Text::new(
                    v.map_or("none".to_string(), number),
                    (x, y + top * 0.01),
                    centered(15),
                ),
                Text::new(label.clone(), (x, y + top * 0.07), centered(15)),
            ]
        }))
        .map_err(|e| plot_err(path, e))?;
    Ok(())
}

/// One chart of bars in `path`.
pub(super) fn single(path: &Path, title: &str, unit: &str, items: &[Bar]) -> Result<()> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    panel(&root, path, title, unit, items)?;
    root.present().map_err(|e| plot_err(path, e))
}

/// Two panels of bars side by side in `path`, under one `title`: each panel its own title,
/// unit and bars.
pub(super) fn pair(path: &Path, title: &str, panels: [(&str, &str, &[Bar]); 2]) -> Result<()> {
    let root = SVGBackend::new(path, (SIZE.0 + 200, SIZE.1)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let root = root
        .titled(title, ("sans-serif", 22))
        .map_err(|e| plot_err(path, e))?;
    let (left, right) = root.split_horizontally(((SIZE.0 + 200) / 2) as i32);
    for (area, (name, unit, items)) in [left, right].iter().zip(panels) {
        panel(area, path, name, unit, items)?;
    }
    root.present().map_err(|e| plot_err(path, e))
}
