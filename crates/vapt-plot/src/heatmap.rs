//! A value per cell, written in the cell, with a colour bar and an optional marked cell.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::{err, header, short, Chart, FONT};

/// The colour of a marked cell's frame.
pub const MARK: RGBColor = RGBColor(220, 20, 60);

/// One heatmap panel. Row 0 is drawn at the top.
#[derive(Debug, Clone, PartialEq)]
pub struct Heatmap {
    /// Title (the chart's, or the panel's inside [`Heatmaps`]).
    pub title: String,
    /// Where the numbers come from, under the title (unused inside [`Heatmaps`]).
    pub source: String,
    /// X-axis label.
    pub x_label: String,
    /// Y-axis label.
    pub y_label: String,
    /// Column labels.
    pub x_ticks: Vec<String>,
    /// Row labels.
    pub y_ticks: Vec<String>,
    /// `cells[row][col]`; `None` draws an empty (grey) cell.
    pub cells: Vec<Vec<Option<f64>>>,
    /// Digits after the point in the cells.
    pub decimals: usize,
    /// A cell framed in [`MARK`] red, `(row, col)`, with what the frame means.
    pub marked: Option<((usize, usize), String)>,
    /// What the colours measure (the colour bar's label).
    pub colour_label: String,
    /// Colour range; `None`: the values' own.
    pub range: Option<(f64, f64)>,
}

/// Heatmap panels side by side under one title.
#[derive(Debug, Clone, PartialEq)]
pub struct Heatmaps {
    /// Title.
    pub title: String,
    /// Where the numbers come from.
    pub source: String,
    /// The panels.
    pub panels: Vec<Heatmap>,
}

impl Heatmap {
    fn cell_px(&self) -> u32 {
        let cols = self.x_ticks.len().max(1) as u32;
        (560 / cols).clamp(44, 90)
    }

    fn panel_size(&self) -> (u32, u32) {
        let c = self.cell_px();
        let label = self.y_ticks.iter().map(|t| t.chars().count()).max().unwrap_or(1) as u32;
        (
            c * self.x_ticks.len().max(1) as u32 + 8 * label + 215,
            c * self.cells.len().max(1) as u32 + 150,
        )
    }

    fn range(&self) -> (f64, f64) {
        self.range.unwrap_or_else(|| {
            crate::line::bounds(
                self.cells
                    .iter()
                    .flatten()
                    .flatten()
                    .copied()
                    .filter(|v| v.is_finite()),
                0.0,
            )
        })
    }

    fn draw_panel<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        caption: bool,
    ) -> Result<(), String> {
        let (w, h) = area.dim_in_pixel();
        let area = match &self.marked {
            Some((_, meaning)) => {
                // The mark's legend under the chart: a framed square and its meaning.
                let (y, x) = (h as i32 - 20, 12);
                area.draw(&Rectangle::new([(x, y), (x + 14, y + 14)], MARK.stroke_width(3)))
                    .map_err(err)?;
                area.draw(&Text::new(meaning.clone(), (x + 22, y), (FONT, 13).into_font()))
                    .map_err(err)?;
                area.clone().shrink((0, 0), (w, h.saturating_sub(24)))
            }
            None => area.clone(),
        };
        let (plot, bar) = area.split_horizontally(w.saturating_sub(100));
        let (rows, cols) = (self.cells.len(), self.x_ticks.len());
        let (lo, hi) = self.range();
        let label = self.y_ticks.iter().map(|t| t.chars().count()).max().unwrap_or(1) as u32;
        let mut builder = ChartBuilder::on(&plot);
        builder
            .margin(10)
            .x_label_area_size(50)
            .y_label_area_size(8 * label + 44);
        if caption {
            builder.caption(self.title.as_str(), (FONT, 17));
        }
        // Plain coordinates (cell c spans [c, c + 1)); tick labels are drawn at the cell centres.
        let mut chart = builder
            .build_cartesian_2d(0.0..cols.max(1) as f64, 0.0..rows.max(1) as f64)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(0)
            .y_labels(0)
            .x_desc(self.x_label.as_str())
            .y_desc(self.y_label.as_str())
            .axis_desc_style((FONT, 15))
            .draw()
            .map_err(err)?;
        let (bx, by) = plot.get_base_pixel();
        let tick_font = |h: HPos, v: VPos| TextStyle::from((FONT, 13).into_font()).pos(Pos::new(h, v));
        for (c, label) in self.x_ticks.iter().enumerate() {
            let (px, py) = chart.backend_coord(&(c as f64 + 0.5, 0.0));
            plot.draw(&Text::new(
                label.clone(),
                (px - bx, py - by + 8),
                tick_font(HPos::Center, VPos::Top),
            ))
            .map_err(err)?;
        }
        // Row 0 at the top.
        let y_of = |r: usize| (rows - 1 - r) as f64;
        for (r, label) in self.y_ticks.iter().enumerate().take(rows) {
            let (px, py) = chart.backend_coord(&(0.0, y_of(r) + 0.5));
            plot.draw(&Text::new(
                label.clone(),
                (px - bx - 8, py - by),
                tick_font(HPos::Right, VPos::Center),
            ))
            .map_err(err)?;
        }
        for (r, row) in self.cells.iter().enumerate() {
            for c in 0..cols {
                let (x, y) = (c as f64, y_of(r));
                let corners = [(x, y), (x + 1.0, y + 1.0)];
                let value = row.get(c).copied().flatten().filter(|v| v.is_finite());
                let (fill, text, ink) = match value {
                    Some(v) => {
                        let t = ((v - lo) / (hi - lo)).clamp(0.0, 1.0);
                        let ink = if t < 0.6 { WHITE } else { BLACK };
                        (colour(t), format!("{v:.*}", self.decimals), ink)
                    }
                    None => (RGBColor(225, 225, 225), "–".to_string(), RGBColor(120, 120, 120)),
                };
                chart
                    .draw_series(std::iter::once(Rectangle::new(corners, fill.filled())))
                    .map_err(err)?;
                chart
                    .draw_series(std::iter::once(Rectangle::new(corners, WHITE.stroke_width(1))))
                    .map_err(err)?;
                let style = tick_font(HPos::Center, VPos::Center).color(&ink);
                chart
                    .draw_series(std::iter::once(Text::new(text, (x + 0.5, y + 0.5), style)))
                    .map_err(err)?;
            }
        }
        if let Some(((r, c), _)) = &self.marked {
            if *r < rows && *c < cols {
                let (x, y) = (*c as f64, y_of(*r));
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(x, y), (x + 1.0, y + 1.0)],
                        MARK.stroke_width(4),
                    )))
                    .map_err(err)?;
            }
        }
        self.colour_bar(&bar, lo, hi, caption)
    }

    fn colour_bar<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        lo: f64,
        hi: f64,
        caption: bool,
    ) -> Result<(), String> {
        let mut chart = ChartBuilder::on(area)
            .margin_top(if caption { 40 } else { 10 })
            .margin_bottom(60)
            .margin_right(6)
            .set_label_area_size(LabelAreaPosition::Right, 58)
            .build_cartesian_2d(0.0..1.0, lo..hi)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .disable_x_axis()
            .y_labels(5)
            .y_label_formatter(&|v| short(*v))
            .y_desc(self.colour_label.as_str())
            .label_style((FONT, 12))
            .axis_desc_style((FONT, 13))
            .draw()
            .map_err(err)?;
        let steps = 48;
        chart
            .draw_series((0..steps).map(|i| {
                let (a, b) = (i as f64 / steps as f64, (i + 1) as f64 / steps as f64);
                Rectangle::new(
                    [(0.0, lo + a * (hi - lo)), (1.0, lo + b * (hi - lo))],
                    colour(a).filled(),
                )
            }))
            .map_err(err)?;
        Ok(())
    }
}

/// Viridis at `t` in [0, 1].
fn colour(t: f64) -> RGBColor {
    use plotters::style::colors::colormaps::{ColorMap, ViridisRGB};
    ViridisRGB.get_color_normalized(t as f32, 0.0, 1.0)
}

impl Chart for Heatmap {
    fn title(&self) -> &str {
        &self.title
    }

    fn size(&self) -> (u32, u32) {
        let (w, h) = self.panel_size();
        // Wide enough for the title (22 px text, ~12 px a character) and the mark's legend.
        let title = 12 * self.title.chars().count() as u32 + 40;
        (
            w.max(520).max(title),
            h + 58 + if self.marked.is_some() { 24 } else { 0 },
        )
    }

    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let body = header(area, &self.title, &self.source)?;
        self.draw_panel(&body, false)
    }
}

impl Chart for Heatmaps {
    fn title(&self) -> &str {
        &self.title
    }

    fn size(&self) -> (u32, u32) {
        let sizes: Vec<(u32, u32)> = self.panels.iter().map(Heatmap::panel_size).collect();
        let w = sizes.iter().map(|s| s.0).max().unwrap_or(400) * sizes.len().max(1) as u32;
        let h = sizes.iter().map(|s| s.1).max().unwrap_or(300) + 40 + 58;
        (w, h)
    }

    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let body = header(area, &self.title, &self.source)?;
        let areas = body.split_evenly((1, self.panels.len().max(1)));
        for (panel, area) in self.panels.iter().zip(areas.iter()) {
            panel.draw_panel(area, true)?;
        }
        Ok(())
    }
}
