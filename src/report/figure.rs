//! Figure 1 of the paper: accuracy against training tokens (log axis), one panel per task, one line
//! per model size, a shared legend.
//!
//! The same drawing code runs twice, into an SVG string and into an RGB buffer that is encoded as PNG;
//! text goes through [`Typeset`] (see `text.rs` for why and how).

use super::text::Typeset;
use super::{series_by_task, size_label, task_display_name, ResultRow, Series};
use crate::error::{Error, Result};
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::collections::BTreeMap;

/// Width and height of the figure in pixels (the SVG uses the same user units).
pub const FIGURE_SIZE: (u32, u32) = (1800, 1300);

const FONT: &str = "sans-serif";

/// Viridis, sampled from dark purple to yellow-green (its last, pale yellow tenth is left out: too light
/// on white). Model sizes get evenly spaced colours along it, small to large.
const VIRIDIS: [(u8, u8, u8); 9] = [
    (68, 1, 84),
    (72, 40, 120),
    (62, 73, 137),
    (49, 104, 142),
    (38, 130, 142),
    (31, 158, 137),
    (53, 183, 121),
    (109, 205, 89),
    (180, 222, 44),
];

fn color(i: usize, n: usize) -> RGBColor {
    let t = if n <= 1 { 0.0 } else { i as f64 / (n - 1) as f64 } * (VIRIDIS.len() - 1) as f64;
    let k = (t.floor() as usize).min(VIRIDIS.len() - 2);
    let f = t - k as f64;
    let mix = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * f).round() as u8;
    let (a, b) = (VIRIDIS[k], VIRIDIS[k + 1]);
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// `4.2e9` -> `4B`, `2e10` -> `20B`, `3e11` -> `300B`, `5e8` -> `500M`.
fn tokens_label(t: f64) -> String {
    let (v, unit) = if t >= 1e12 {
        (t / 1e12, "T")
    } else if t >= 1e9 {
        (t / 1e9, "B")
    } else {
        (t / 1e6, "M")
    };
    let r = (v * 10.0).round() / 10.0;
    format!("{r}{unit}")
}

struct Panel {
    title: String,
    series: Vec<Series>,
}

struct FigureData {
    panels: Vec<Panel>,
    /// (model, legend label), by increasing size: the colour index is the position here.
    models: Vec<(String, String)>,
    /// log10(tokens) range with a little padding, and the tick positions in it.
    x_range: (f64, f64),
    x_ticks: Vec<f64>,
}

fn prepare(rows: &[ResultRow]) -> Result<FigureData> {
    let by_task = series_by_task(rows);
    let mut models: BTreeMap<(u64, String), String> = BTreeMap::new();
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for s in by_task.values().flatten() {
        models
            .entry(((s.params / 1e3).round() as u64, s.model.clone()))
            .or_insert_with(|| size_label(&s.model).unwrap_or_else(|| s.model.clone()));
        for p in &s.points {
            lo = lo.min(p.0.log10());
            hi = hi.max(p.0.log10());
        }
    }
    if by_task.is_empty() || !lo.is_finite() {
        return Err(Error::invalid("figure: no results with tokens > 0 to plot"));
    }
    let pad = ((hi - lo) * 0.04).max(0.1);
    let (x0, x1) = (lo - pad, hi + pad);
    // Ticks at 1, 2 and 5 times powers of ten that fall inside the axis.
    let mut x_ticks = vec![];
    for e in (x0.floor() as i32)..=(x1.ceil() as i32) {
        for m in [1.0f64, 2.0, 5.0] {
            let v = (m * 10f64.powi(e)).log10();
            if v >= x0 && v <= x1 {
                x_ticks.push(v);
            }
        }
    }
    Ok(FigureData {
        panels: by_task
            .into_iter()
            .map(|(task, series)| Panel {
                title: task_display_name(&task),
                series,
            })
            .collect(),
        models: models.into_iter().map(|((_, m), l)| (m, l)).collect(),
        x_range: (x0, x1),
        x_ticks,
    })
}

/// A linear f64 axis with the tick positions given (plotters' `with_key_points` on an f64 range loses
/// its label formatter, so this is the few lines it takes to say it directly).
struct TickedAxis {
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
}

impl Ranged for TickedAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let f = (v - self.lo) / (self.hi - self.lo);
        limit.0 + (f * (limit.1 - limit.0) as f64).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, _hint: H) -> Vec<f64> {
        self.ticks.clone()
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

/// (columns, rows) of the panel grid: 4 x 3 for the paper's 12 tasks.
fn grid(n: usize) -> (usize, usize) {
    let cols = ((n as f64 * 4.0 / 3.0).sqrt().ceil() as usize).clamp(1, n.max(1));
    (cols, n.div_ceil(cols))
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, fig: &FigureData) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let (title, body) = root.split_vertically(84);
    let (tw, th) = title.dim_in_pixel();
    title.draw(&Text::new(
        "Accuracy over the course of pretraining (Pythia)",
        (tw as i32 / 2, th as i32 / 2),
        TextStyle::from((FONT, 40).into_font()).pos(Pos::new(HPos::Center, VPos::Center)),
    ))?;
    let h = body.dim_in_pixel().1;
    let (body, legend) = body.split_vertically(h as i32 - 70);
    let (body, x_desc) = body.split_vertically(h as i32 - 70 - 44);
    let (y_desc, panels) = body.split_horizontally(48);

    let desc_style = TextStyle::from((FONT, 28).into_font()).pos(Pos::new(HPos::Center, VPos::Center));
    let (yw, yh) = y_desc.dim_in_pixel();
    y_desc.draw(&Text::new(
        "Accuracy",
        (yw as i32 / 2, yh as i32 / 2),
        desc_style.transform(FontTransform::Rotate270),
    ))?;
    let (xw, xh) = x_desc.dim_in_pixel();
    x_desc.draw(&Text::new(
        "Training tokens seen (log scale)",
        (48 + (xw as i32 - 48) / 2, xh as i32 / 2),
        desc_style.clone(),
    ))?;

    let n_models = fig.models.len();
    let color_of = |model: &str| color(fig.models.iter().position(|(m, _)| m == model).unwrap_or(0), n_models);
    let (cols, rows) = grid(fig.panels.len());
    let areas = panels.split_evenly((rows, cols));
    let (x0, x1) = fig.x_range;
    for (area, panel) in areas.iter().zip(&fig.panels) {
        let (mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY);
        for p in panel.series.iter().flat_map(|s| &s.points) {
            y0 = y0.min(p.1);
            y1 = y1.max(p.1);
        }
        // Expand the data range by 6% each side (as ggplot does), so points at 0 or 1 are not cut by the frame.
        let pad = ((y1 - y0) * 0.06).max(0.005);
        let (y0, y1) = (y0 - pad, y1 + pad);
        let decimals = if y1 - y0 < 0.06 { 3 } else { 2 };
        let y_fmt = move |v: &f64| format!("{:.decimals$}", if v.abs() < 1e-9 { 0.0 } else { *v });
        let x_fmt = |v: &f64| tokens_label(10f64.powf(*v));

        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, (FONT, 26))
            .margin(8)
            .margin_top(18)
            .margin_right(22)
            .x_label_area_size(34)
            .y_label_area_size(64)
            .build_cartesian_2d(
                TickedAxis {
                    lo: x0,
                    hi: x1,
                    ticks: fig.x_ticks.clone(),
                },
                y0..y1,
            )?;
        chart
            .configure_mesh()
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&y_fmt)
            .y_labels(6)
            .label_style((FONT, 18))
            .bold_line_style(BLACK.mix(0.12))
            .light_line_style(TRANSPARENT)
            .axis_style(BLACK.mix(0.6))
            .draw()?;
        for s in &panel.series {
            let c = color_of(&s.model);
            let pts: Vec<(f64, f64)> = s.points.iter().map(|p| (p.0.log10(), p.1)).collect();
            chart.draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(3)))?;
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled())))?;
        }
    }

    // One legend for all panels, centred in the bottom strip.
    let (lw, lh) = legend.dim_in_pixel();
    let label_style = TextStyle::from((FONT, 24).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    let title = "Model size:";
    let text_w = |t: &str| legend.estimate_text_size(t, &label_style).map(|(w, _)| w as i32);
    // Each entry: a 44 px line sample, 10 px gap, the label, 40 px to the next entry.
    let title_w = text_w(title)? + 30;
    let mut entry_w = Vec::with_capacity(n_models);
    for (_, label) in &fig.models {
        entry_w.push(44 + 10 + text_w(label)? + 40);
    }
    let total = title_w + entry_w.iter().sum::<i32>() - 40;
    let mut x = (lw as i32 - total).max(0) / 2;
    let y = lh as i32 / 2;
    legend.draw(&Text::new(title, (x, y), label_style.clone()))?;
    x += title_w;
    for (i, (_, label)) in fig.models.iter().enumerate() {
        let c = color(i, n_models);
        legend.draw(&PathElement::new(vec![(x, y), (x + 44, y)], c.stroke_width(4)))?;
        legend.draw(&Circle::new((x + 22, y), 5, c.filled()))?;
        legend.draw(&Text::new(label.as_str(), (x + 54, y), label_style.clone()))?;
        x += entry_w[i];
    }
    root.present()?;
    Ok(())
}

/// Draw Figure 1 for `rows`: (SVG text, PNG bytes), both `FIGURE_SIZE`.
pub fn write_figure(rows: &[ResultRow]) -> Result<(String, Vec<u8>)> {
    let fig = prepare(rows)?;
    let (w, h) = FIGURE_SIZE;

    let mut svg = String::new();
    {
        let root = Typeset::vector(SVGBackend::with_string(&mut svg, (w, h))).into_drawing_area();
        draw(&root, &fig).map_err(|e| Error::invalid(format!("figure (SVG): {e}")))?;
    }

    let mut rgb = vec![0u8; (w * h * 3) as usize];
    {
        let root = Typeset::raster(BitMapBackend::with_buffer(&mut rgb, (w, h))).into_drawing_area();
        draw(&root, &fig).map_err(|e| Error::invalid(format!("figure (PNG): {e}")))?;
    }
    let mut png_bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut png_bytes, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().map_err(|e| Error::invalid(format!("figure (PNG encoding): {e}")))?;
        writer
            .write_image_data(&rgb)
            .map_err(|e| Error::invalid(format!("figure (PNG encoding): {e}")))?;
        writer.finish().map_err(|e| Error::invalid(format!("figure (PNG encoding): {e}")))?;
    }
    Ok((svg, png_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_grid() {
        assert_eq!(tokens_label(4.194304e9), "4.2B");
        assert_eq!(tokens_label(1e10), "10B");
        assert_eq!(tokens_label(3e11), "300B");
        assert_eq!(grid(12), (4, 3));
        assert_eq!(grid(1), (1, 1));
        assert_eq!(grid(2), (2, 1));
    }
}
