//! Panels of lines against a shared x axis.

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::{err, header, legend, short, Chart, FONT};

/// Colours of the series, in order (colour-blind safe: Okabe–Ito).
pub(crate) const PALETTE: [RGBColor; 6] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(230, 159, 0),
];

/// One line: its legend label and its points.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// `(x, y)` points in order; non-finite values are left out.
    pub points: Vec<(f64, f64)>,
}

/// One panel: its y-axis label and lines.
#[derive(Debug, Clone, PartialEq)]
pub struct LinePanel {
    /// Y-axis label.
    pub y_label: String,
    /// The lines.
    pub series: Vec<Series>,
}

/// Panels side by side sharing an x-axis label.
#[derive(Debug, Clone, PartialEq)]
pub struct LineChart {
    /// Title.
    pub title: String,
    /// Where the numbers come from (a run folder), under the title.
    pub source: String,
    /// X-axis label of every panel.
    pub x_label: String,
    /// Whether x takes whole numbers only (epochs): ticks on integers.
    pub x_integers: bool,
    /// The panels, left to right.
    pub panels: Vec<LinePanel>,
}

impl Chart for LineChart {
    fn title(&self) -> &str {
        &self.title
    }

    fn size(&self) -> (u32, u32) {
        (420 * self.panels.len().max(1) as u32, 400)
    }

    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let body = header(area, &self.title, &self.source)?;
        let areas = body.split_evenly((1, self.panels.len().max(1)));
        for (panel, area) in self.panels.iter().zip(areas.iter()) {
            let points: Vec<(f64, f64)> = panel
                .series
                .iter()
                .flat_map(|s| s.points.iter().copied())
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect();
            let (x0, x1) = bounds(points.iter().map(|p| p.0), 0.0);
            // Whole-number ticks: at most 10, never between two integers.
            let x_ticks = if self.x_integers {
                ((x1 - x0).round() as usize + 1).clamp(2, 10)
            } else {
                10
            };
            let (y0, y1) = bounds(points.iter().map(|p| p.1), 0.06);
            let mut chart = ChartBuilder::on(area)
                .margin(14)
                .x_label_area_size(48)
                .y_label_area_size(64)
                .build_cartesian_2d(x0..x1, y0..y1)
                .map_err(err)?;
            chart
                .configure_mesh()
                .x_desc(self.x_label.as_str())
                .y_desc(panel.y_label.as_str())
                .label_style((FONT, 13))
                .axis_desc_style((FONT, 15))
                .x_labels(x_ticks)
                .x_label_formatter(&|v| {
                    if self.x_integers && (v - v.round()).abs() > 1e-9 {
                        String::new()
                    } else {
                        short(*v)
                    }
                })
                .y_label_formatter(&|v| short(*v))
                // Grid lines at the ticks only: sub-tick lines made most of a page's bytes.
                .max_light_lines(0)
                .bold_line_style(RGBColor(225, 225, 225))
                .draw()
                .map_err(err)?;
            for (i, s) in panel.series.iter().enumerate() {
                let colour = PALETTE[i % PALETTE.len()];
                let pts: Vec<(f64, f64)> = s
                    .points
                    .iter()
                    .copied()
                    .filter(|(x, y)| x.is_finite() && y.is_finite())
                    .collect();
                chart
                    .draw_series(LineSeries::new(pts.clone(), colour.stroke_width(2)))
                    .map_err(err)?
                    .label(s.label.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
                    });
                chart
                    .draw_series(pts.iter().map(|&p| Circle::new(p, 3, colour.filled())))
                    .map_err(err)?;
            }
            if !panel.series.is_empty() {
                legend(&mut chart)?;
            }
        }
        Ok(())
    }
}

/// `(min, max)` of `values`, widened by `pad` of the span (or to a unit span when flat).
pub(crate) fn bounds(values: impl Iterator<Item = f64>, pad: f64) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        return (lo - 0.5, hi + 0.5);
    }
    let p = (hi - lo) * pad;
    (lo - p, hi + p)
}
