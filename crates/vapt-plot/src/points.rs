//! One point per seed per group, with mean ± std.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::line::{bounds, PALETTE};
use crate::{err, header, legend, short, Chart, FONT};

/// One group's seeds: a method's final runs.
#[derive(Debug, Clone, PartialEq)]
pub struct SeedGroup {
    /// Label under the group.
    pub label: String,
    /// One value per seed.
    pub values: Vec<f64>,
    /// Mean and standard deviation as the caller computes them (vapt: population std, as the
    /// paper's code); `None` draws no bar (seeds still pending).
    pub mean_std: Option<(f64, f64)>,
}

/// Seed results of several groups (methods, or one sweep's seeds).
#[derive(Debug, Clone, PartialEq)]
pub struct SeedPoints {
    /// Title.
    pub title: String,
    /// Where the numbers come from.
    pub source: String,
    /// Y-axis label (e.g. `test top-1 (%)`).
    pub y_label: String,
    /// The groups, left to right.
    pub groups: Vec<SeedGroup>,
}

impl Chart for SeedPoints {
    fn title(&self) -> &str {
        &self.title
    }

    fn size(&self) -> (u32, u32) {
        ((130 * self.groups.len() as u32 + 160).max(520), 440)
    }

    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let body = header(area, &self.title, &self.source)?;
        let n = self.groups.len().max(1);
        let spread = self.groups.iter().flat_map(|g| {
            let bar = g.mean_std.map(|(m, s)| [m - s, m + s]).into_iter().flatten();
            g.values.iter().copied().chain(bar)
        });
        let (y0, y1) = bounds(spread, 0.12);
        let mut chart = ChartBuilder::on(&body)
            .margin(14)
            .x_label_area_size(60)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..n as f64, y0..y1)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc(self.y_label.as_str())
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 15))
            .y_label_formatter(&|v| short(*v))
            .max_light_lines(0)
            .bold_line_style(RGBColor(225, 225, 225))
            .draw()
            .map_err(err)?;
        for (g, group) in self.groups.iter().enumerate() {
            let (label, values) = (&group.label, &group.values);
            let colour = PALETTE[g % PALETTE.len()];
            let x = g as f64 + 0.5;
            let k = values.len().max(1) as f64;
            // Seeds side by side left of the centre, mean ± std right of it.
            let seeds = values
                .iter()
                .enumerate()
                .map(|(i, &v)| Circle::new((x - 0.3 + 0.2 * i as f64 / k, v), 5, colour.filled()));
            let drawn = chart.draw_series(seeds).map_err(err)?;
            if g == 0 {
                drawn
                    .label("one seed")
                    .legend(|(x, y)| Circle::new((x + 8, y), 5, RGBColor(90, 90, 90).filled()));
            }
            if let Some((m, s)) = group.mean_std {
                let bar = chart
                    .draw_series([
                        PathElement::new(vec![(x + 0.15, m - s), (x + 0.15, m + s)], BLACK.stroke_width(2)),
                        PathElement::new(vec![(x + 0.08, m), (x + 0.22, m)], BLACK.stroke_width(3)),
                    ])
                    .map_err(err)?;
                if g == 0 {
                    bar.label("mean ± std")
                        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK.stroke_width(3)));
                }
            }
            let (px, py) = chart.backend_coord(&(x, y0));
            let (bx, by) = body.get_base_pixel();
            let (px, py) = (px - bx, py - by);
            let below = TextStyle::from((FONT, 14).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
            body.draw(&Text::new(label.clone(), (px, py + 10), below.clone()))
                .map_err(err)?;
            if let Some((m, s)) = group.mean_std {
                let text = format!("{m:.2} ± {s:.2}");
                body.draw(&Text::new(
                    text,
                    (px, py + 30),
                    below.color(&RGBColor(70, 70, 70)),
                ))
                .map_err(err)?;
            }
        }
        legend(&mut chart)?;
        Ok(())
    }
}
