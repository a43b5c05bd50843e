//! The axis maths of the pictures, kept pure so it is unit-tested apart from any drawing.
//!
//! A latency spectrum (HdrHistogram's "percentile distribution") puts percentile `p` at
//! `x = log10(1 / (1 - p))`: p50 sits at 0.30, p90 at 1, p99 at 2, each further nine one step
//! to the right. The tail, where relays differ, then gets as much room as the median, which a
//! linear percentile axis squeezes into its last pixel. The axis runs from p50 to p99.999;
//! past that a run of seconds holds too few transactions for a percentile to mean anything.

/// The lowest percentile drawn (as a fraction).
pub(crate) const FIRST: f64 = 0.5;
/// The highest percentile drawn (as a fraction).
pub(crate) const LAST: f64 = 0.99999;

/// The labelled ticks of the percentile axis: each fraction with its label.
pub(crate) const TICKS: [(f64, &str); 6] = [
    (0.5, "50%"),
    (0.9, "90%"),
    (0.99, "99%"),
    (0.999, "99.9%"),
    (0.9999, "99.99%"),
    (0.99999, "99.999%"),
];

/// How many percentiles a spectrum samples between [`FIRST`] and [`LAST`].
pub(crate) const SAMPLES: usize = 97;

/// Where percentile `p` (a fraction below 1) sits on the x axis: `log10(1 / (1 - p))`.
pub(crate) fn percentile_x(p: f64) -> f64 {
    -(1.0 - p).log10()
}

/// The percentile (a fraction) at position `x` of the axis; the inverse of [`percentile_x`].
pub(crate) fn x_percentile(x: f64) -> f64 {
    1.0 - 10f64.powf(-x)
}

/// The x range of the axis, [`FIRST`] to [`LAST`].
pub(crate) fn x_range() -> std::ops::Range<f64> {
    percentile_x(FIRST)..percentile_x(LAST)
}

/// The pixel at which position `x` of the axis lands, for an axis from `range.start` at
/// pixel `limit.0` to `range.end` at pixel `limit.1` (linear in `x`, so logarithmic in
/// `1 / (1 - p)`).
pub(crate) fn pixel(x: f64, range: &std::ops::Range<f64>, limit: (i32, i32)) -> i32 {
    let span = (range.end - range.start).max(f64::MIN_POSITIVE);
    let at = (x - range.start) / span * f64::from(limit.1 - limit.0);
    limit.0 + at.round() as i32
}

/// The x positions of the labelled ticks, left to right.
pub(crate) fn tick_positions() -> Vec<f64> {
    TICKS.iter().map(|&(p, _)| percentile_x(p)).collect()
}

/// The label of the tick at `x`, or an empty string between ticks (plotters asks for labels
/// at its key points, which are the ticks; a float that went through the mapping is matched
/// within a rounding error).
pub(crate) fn tick_label(x: f64) -> &'static str {
    TICKS
        .iter()
        .find(|&&(p, _)| (percentile_x(p) - x).abs() < 1e-6)
        .map_or("", |&(_, label)| label)
}

/// The percentiles a spectrum samples: [`SAMPLES`] fractions evenly spaced on the axis (not
/// in `p`), from [`FIRST`] to [`LAST`], both included.
pub(crate) fn sample_quantiles() -> Vec<f64> {
    let r = x_range();
    let step = (r.end - r.start) / (SAMPLES - 1) as f64;
    (0..SAMPLES)
        .map(|i| {
            if i == SAMPLES - 1 {
                LAST
            } else {
                x_percentile(r.start + step * i as f64)
            }
        })
        .collect()
}

/// The top of a y axis that starts at zero: `max` with headroom (`max * 1.15`), and 1 when
/// nothing was measured, so an empty or all-zero series still gets an axis.
pub(crate) fn y_top(max: f64) -> f64 {
    if max.is_finite() && max > 0.0 {
        max * 1.15
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn each_nine_of_the_percentile_is_one_step_to_the_right() {
        assert!(close(percentile_x(0.5), 2f64.log10()));
        assert!(close(percentile_x(0.9), 1.0));
        assert!(close(percentile_x(0.99), 2.0));
        assert!(close(percentile_x(0.999), 3.0));
        assert!(close(percentile_x(0.9999), 4.0));
        assert!((percentile_x(0.99999) - 5.0).abs() < 1e-6);
    }

    #[test]
    fn the_position_maps_back_to_its_percentile() {
        for p in [0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.99999] {
            assert!((x_percentile(percentile_x(p)) - p).abs() < 1e-12, "{p}");
        }
    }

    #[test]
    fn percentiles_land_on_pixels_one_nine_per_step() {
        let r = x_range();
        let limit = (100, 1100);
        assert_eq!(pixel(percentile_x(FIRST), &r, limit), 100);
        assert_eq!(pixel(percentile_x(LAST), &r, limit), 1100);
        let nine = |p: f64| pixel(percentile_x(p), &r, limit);
        let step = nine(0.999) - nine(0.99);
        assert!(step > 200, "{step}");
        for (a, b) in [
            (0.9, 0.99),
            (0.99, 0.999),
            (0.999, 0.9999),
            (0.9999, 0.99999),
        ] {
            assert!((nine(b) - nine(a) - step).abs() <= 1, "{a} {b}");
        }
        assert!(
            nine(0.9) - nine(0.5) < step,
            "p50 to p90 is less than a nine"
        );
    }

    #[test]
    fn ticks_run_left_to_right_from_p50_to_p99_999_and_label_themselves() {
        let xs = tick_positions();
        assert_eq!(xs.len(), 6);
        assert!(xs.windows(2).all(|w| w[0] < w[1]), "{xs:?}");
        assert!(close(xs[0], x_range().start) && close(xs[5], x_range().end));
        let labels: Vec<&str> = xs.iter().map(|&x| tick_label(x)).collect();
        assert_eq!(labels, ["50%", "90%", "99%", "99.9%", "99.99%", "99.999%"]);
        assert_eq!(tick_label(1.5), "", "no label between ticks");
    }

    #[test]
    fn samples_cover_the_axis_evenly_and_end_on_its_ends() {
        let q = sample_quantiles();
        assert_eq!(q.len(), SAMPLES);
        assert!(close(q[0], FIRST));
        assert_eq!(*q.last().unwrap(), LAST);
        assert!(q.windows(2).all(|w| w[0] < w[1]));
        let xs: Vec<f64> = q.iter().map(|&p| percentile_x(p)).collect();
        let step = xs[1] - xs[0];
        assert!(xs.windows(2).all(|w| (w[1] - w[0] - step).abs() < 1e-6));
        assert!(q.iter().all(|&p| p < 1.0), "p100 would sit at infinity");
    }

    #[test]
    fn y_axes_start_at_zero_with_headroom_and_survive_an_empty_run() {
        assert!(close(y_top(100.0), 115.0));
        assert_eq!(y_top(0.0), 1.0);
        assert_eq!(y_top(f64::NAN), 1.0);
    }
}
