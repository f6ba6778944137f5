//! # vapt-plot
//!
//! Charts a person reads without a table beside them, drawn with `plotters` from plain numbers
//! (this crate knows nothing of runs or models): every chart has a title, the run or sweep it
//! comes from, axis labels, ticks, and a legend or a colour bar.
//!
//! * [`LineChart`] — panels of lines against a shared x (a run's loss, top-1 and lr by epoch).
//! * [`Heatmap`] / [`Heatmaps`] — a value per cell, written in the cell, with a colour bar and
//!   an optional marked cell (a sweep's lr × wd grid; the MoE view's block × head panels).
//! * [`SeedPoints`] — one point per seed per group, with mean ± std.
//!
//! [`svg`] draws a chart as SVG (text stays text), [`png`] as PNG (text rasterised from the
//! embedded DejaVu Sans, so nothing depends on the fonts a machine has); each caller draws only
//! what it writes.

mod font;
mod heatmap;
mod line;
mod points;

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

pub use heatmap::{Heatmap, Heatmaps};
pub use line::{LineChart, LinePanel, Series};
pub use points::{SeedGroup, SeedPoints};

/// A chart that failed to draw.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// plotters refused (a backend or layout error).
    #[error("cannot draw `{title}`: {message}")]
    Draw {
        /// The chart's title.
        title: String,
        /// What plotters said.
        message: String,
    },
    /// The PNG could not be encoded.
    #[error("cannot encode `{title}` as PNG: {message}")]
    Png {
        /// The chart's title.
        title: String,
        /// What the encoder said.
        message: String,
    },
}

/// Something that draws itself on any plotters backend.
pub trait Chart {
    /// The title (also names the chart in errors).
    fn title(&self) -> &str;
    /// Pixel size (width, height).
    fn size(&self) -> (u32, u32);
    /// Draws on `area` (already white).
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<(), String>;
}

fn draw_error(chart: &impl Chart) -> impl Fn(String) -> PlotError + '_ {
    |message| PlotError::Draw {
        title: chart.title().to_string(),
        message,
    }
}

/// `chart` as an SVG document (text stays text).
pub fn svg(chart: &impl Chart) -> Result<String, PlotError> {
    font::register();
    let draw_err = draw_error(chart);
    let mut svg = String::new();
    {
        let area = SVGBackend::with_string(&mut svg, chart.size()).into_drawing_area();
        area.fill(&WHITE).map_err(|e| draw_err(e.to_string()))?;
        chart.draw(&area).map_err(&draw_err)?;
        area.present().map_err(|e| draw_err(e.to_string()))?;
    }
    Ok(svg)
}

/// `chart` as a PNG file's bytes (text rasterised from the embedded font).
pub fn png(chart: &impl Chart) -> Result<Vec<u8>, PlotError> {
    font::register();
    let draw_err = draw_error(chart);
    let (w, h) = chart.size();
    let mut rgb = vec![255u8; (w * h * 3) as usize];
    {
        let area = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        chart.draw(&area).map_err(&draw_err)?;
        area.present().map_err(|e| draw_err(e.to_string()))?;
    }
    let png_err = |message: String| PlotError::Png {
        title: chart.title().to_string(),
        message,
    };
    let img = image::RgbImage::from_raw(w, h, rgb).ok_or_else(|| png_err("buffer size".into()))?;
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| png_err(e.to_string()))?;
    Ok(png)
}

/// The text of every `<text>` element of an SVG this crate drew, trimmed, in order: what a
/// reader (or a test) sees written on a chart.
pub fn texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| {
            let body = &t[t.find('>')? + 1..];
            Some(body[..body.find("</text>")?].trim().to_string())
        })
        .collect()
}

/// The legend of a chart's series, top right, in the house style.
pub(crate) fn legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(160, 160, 160))
        .label_font((FONT, 13))
        .draw()
        .map_err(err)
}

/// A plotters error as text.
pub(crate) fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// The font family every chart uses (the embedded DejaVu Sans).
pub(crate) const FONT: &str = "sans-serif";

/// Title and source line at the top of `area`; returns the area below them.
pub(crate) fn header<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    source: &str,
) -> Result<DrawingArea<DB, Shift>, String> {
    let (w, _) = area.dim_in_pixel();
    let (top, rest) = area.split_vertically(if source.is_empty() { 40 } else { 58 });
    let centre = |size: f64| {
        TextStyle::from((FONT, size).into_font()).pos(plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Center,
            plotters::style::text_anchor::VPos::Top,
        ))
    };
    top.draw(&Text::new(title.to_string(), (w as i32 / 2, 8), centre(22.0)))
        .map_err(|e| e.to_string())?;
    if !source.is_empty() {
        top.draw(&Text::new(
            source.to_string(),
            (w as i32 / 2, 36),
            centre(13.0).color(&RGBColor(90, 90, 90)),
        ))
        .map_err(|e| e.to_string())?;
    }
    Ok(rest)
}

/// A short, readable number: 3 significant digits, no trailing noise.
pub fn short(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let a = v.abs();
    if (1e-4..1e4).contains(&a) {
        let decimals = (2 - a.log10().floor() as i32).clamp(0, 6) as usize;
        let s = format!("{v:.decimals$}");
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    } else {
        format!("{v:.2e}")
    }
}

#[cfg(test)]
mod tests;
