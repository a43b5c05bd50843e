//! What every picture shares: its size, the series colours (matplotlib's first six, which
//! readers know apart) and the error a failed drawing becomes. A leaf, so the pictures'
//! files import it and not each other.

use std::path::Path;

use plotters::style::RGBColor;

use crate::error::Error;

pub(super) const SIZE: (u32, u32) = (900, 500);
pub(super) const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

pub(super) fn plot_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Bench(format!("--plot {}: {e}", path.display()))
}
