//! Figure 1 of the paper, camera-ready: the metric against training tokens (log axis), one panel per task,
//! one line per model size with a +-1 standard-error band, a dashed chance line per panel, a shared legend.
//!
//! Sized for a 6.5-inch text width: 3 panels per row at 300 DPI, fonts set in points (ticks 7.5 pt, panel
//! titles 9 pt). The same drawing code runs into an SVG string, an RGB buffer (encoded as PNG with its DPI
//! in the pHYs chunk) and a PDF ([`super::pdf`]); text goes through [`Typeset`] (see `text.rs`), so all three
//! are laid out with the same font metrics.

use super::pdf::PdfBackend;
use super::text::Typeset;
use super::{series_by_task, size_label, task_display_name, ResultRow, Series};
use crate::error::{Error, Result};
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::collections::{BTreeMap, HashMap};

/// Resolution of the PNG (and the pixel grid every format is drawn on).
pub const DPI: f64 = 300.0;
/// Panels per row, and the size of one panel, in inches: 3 x 2.1667 = 6.5 inches.
const COLUMNS: usize = 3;
const PANEL_W: f64 = 6.5 / 3.0;
const PANEL_H: f64 = 1.6;
/// Below the panels: the x-axis title and the legend.
const FOOTER_H: f64 = 0.85;

/// Width and height in pixels of the figure of the paper's 12 tasks (4 rows of 3): 6.5 x 7.25 inches.
pub const FIGURE_SIZE: (u32, u32) = (1950, 2175);

/// Text in the SVG names DejaVu Sans, which the layout was measured with, then the standard sans-serif
/// fonts (narrower, so text never overflows its measured box).
const FONT: &str = "DejaVu Sans, Helvetica, Arial, sans-serif";

/// Plotters' font size for `points` at [`DPI`] (plotters' size is 1.24 x the pixels per em; it keeps whole
/// sizes, so round up: never smaller than asked).
fn pt(points: f64) -> f64 {
    (points * DPI / 72.0 * 1.24).ceil()
}

/// Pixels of `inches`.
fn px(inches: f64) -> u32 {
    (inches * DPI).round() as u32
}

/// (columns, rows) of the panel grid and the figure size for `n` panels.
fn layout(n: usize) -> ((usize, usize), (u32, u32)) {
    let cols = n.clamp(1, COLUMNS);
    let rows = n.max(1).div_ceil(cols);
    ((cols, rows), (px(cols as f64 * PANEL_W), px(rows as f64 * PANEL_H + FOOTER_H)))
}

/// One colour per Pythia size, fixed (a size keeps its colour in any subset of models), ordered by hue from
/// small to large, alternating dark and light so that neighbours differ in lightness as well as hue. Each
/// also gets a marker shape, for readers and printers that lose the colours.
const PALETTE: [(f64, (u8, u8, u8)); 8] = [
    (70e6, (94, 45, 145)),   // purple
    (160e6, (42, 98, 184)),  // blue
    (410e6, (18, 160, 170)), // teal
    (1e9, (40, 120, 40)),    // green
    (1.4e9, (160, 160, 20)), // olive
    (2.8e9, (240, 140, 20)), // orange
    (6.9e9, (215, 40, 40)),  // red
    (12e9, (110, 20, 30)),   // maroon
];

/// The colour of a model size: its palette entry, or for a size between two entries the interpolation in
/// log10(size) (clamped at the ends): a function of the size alone.
fn size_color(params: f64) -> RGBColor {
    let l = params.max(1.0).log10();
    let logs: Vec<f64> = PALETTE.iter().map(|p| p.0.log10()).collect();
    let k = logs.iter().rposition(|&x| x <= l).unwrap_or(0).min(PALETTE.len() - 2);
    let f = ((l - logs[k]) / (logs[k + 1] - logs[k])).clamp(0.0, 1.0);
    let (a, b) = (PALETTE[k].1, PALETTE[k + 1].1);
    let mix = |x: u8, y: u8| (x as f64 + (y as f64 - x as f64) * f).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Marker shape index (0 circle, 1 square, 2 triangle, 3 diamond) of a size: by its nearest palette entry.
fn size_marker(params: f64) -> usize {
    let l = params.max(1.0).log10();
    let nearest = (0..PALETTE.len())
        .min_by(|&a, &b| (PALETTE[a].0.log10() - l).abs().total_cmp(&(PALETTE[b].0.log10() - l).abs()))
        .unwrap_or(0);
    nearest % 4
}

/// `4.2e9` -> `4.2B`, `3e10` -> `30B`, `3e11` -> `300B`, `5e8` -> `500M`.
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

/// A file format of the figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FigureFormat {
    Png,
    Svg,
    Pdf,
}

impl FigureFormat {
    pub fn file_name(self) -> &'static str {
        match self {
            FigureFormat::Png => super::FIGURE_PNG,
            FigureFormat::Svg => super::FIGURE_SVG,
            FigureFormat::Pdf => super::FIGURE_PDF,
        }
    }
}

/// How the figure is drawn.
#[derive(Debug, Clone)]
pub struct FigureOptions {
    pub formats: Vec<FigureFormat>,
    /// `acc` or `acc_norm`: the metric of the tasks other than TruthfulQA (which have MC1 and MC2).
    pub metric: String,
}

impl Default for FigureOptions {
    fn default() -> Self {
        FigureOptions {
            formats: vec![FigureFormat::Png, FigureFormat::Svg, FigureFormat::Pdf],
            metric: "acc".into(),
        }
    }
}

/// Chance level of one of the paper's tasks when no per-item data says it exactly (a report from a TSV):
/// the expected metric of a uniformly random answer. The prize tasks are two-way classifications (0.5; the
/// bundled memo_trap and neqa files have 2 classes on every row). TruthfulQA's are computed from its 817
/// questions in shared/data/truthfulqa/mc_task.json (checked by tests/report_trends.rs): MC1 is the mean of
/// 1/choices; MC2 under the paper's lm-eval v0.3 formula (the true answers are those before the first false
/// one) gives a model with equal probabilities the share of choices before the first false one, averaged.
pub fn chance_level(task: &str) -> Option<f64> {
    match task {
        "truthfulqa_mc1" => Some(TRUTHFULQA_MC1_CHANCE),
        "truthfulqa_mc2" => Some(TRUTHFULQA_MC2_CHANCE),
        t if t.starts_with("isp_") && crate::tasks::STUDY_TASKS.contains(&&t[4..]) => Some(0.5),
        _ => None,
    }
}

pub const TRUTHFULQA_MC1_CHANCE: f64 = 0.226_056_168_773_426_5;
pub const TRUTHFULQA_MC2_CHANCE: f64 = 0.448_098_402_425_568_1;

/// The name of the metric a task is plotted with, for its panel's y axis.
fn metric_label(task: &str, metric: &str) -> &'static str {
    match task {
        "truthfulqa_mc1" => "MC1 accuracy",
        "truthfulqa_mc2" => "MC2 score",
        _ if metric == "acc_norm" => "Norm. accuracy",
        _ => "Accuracy",
    }
}

struct Panel {
    title: String,
    metric: &'static str,
    chance: Option<f64>,
    series: Vec<Series>,
}

struct FigureData {
    panels: Vec<Panel>,
    /// (model, params, legend label, dashed), by increasing size.
    models: Vec<(String, f64, String, bool)>,
    /// log10(tokens) range with a little padding, and the tick positions in it.
    x_range: (f64, f64),
    x_ticks: Vec<f64>,
    has_chance: bool,
}

fn prepare(rows: &[ResultRow], opts: &FigureOptions, chance: Option<&HashMap<String, f64>>) -> Result<FigureData> {
    let by_task = series_by_task(rows);
    let mut models: BTreeMap<(u64, String), f64> = BTreeMap::new();
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for s in by_task.values().flatten() {
        models.insert(((s.params / 1e3).round() as u64, s.model.clone()), s.params);
        for p in &s.points {
            lo = lo.min(p.0.log10());
            hi = hi.max(p.0.log10());
        }
    }
    if by_task.is_empty() || !lo.is_finite() {
        return Err(Error::invalid("figure: no results with tokens > 0 to plot"));
    }
    let pad = ((hi - lo) * 0.05).max(0.1);
    let (x0, x1) = (lo - pad, hi + pad);
    // Labelled ticks at 1 and 3 times powers of ten: 4 labels over Pythia's 4B..300B, none crowding the
    // last checkpoints (268B and 300B sit 0.05 decades apart).
    let mut x_ticks = vec![];
    for e in (x0.floor() as i32)..=(x1.ceil() as i32) {
        for m in [1.0f64, 3.0] {
            let v = (m * 10f64.powi(e)).log10();
            if v >= x0 && v <= x1 {
                x_ticks.push(v);
            }
        }
    }
    // Two models of one size (pythia-1b and pythia-1b-deduped) share the colour: the later one is dashed and
    // both are labelled by name.
    let mut list: Vec<(String, f64, String, bool)> = Vec::new();
    for ((_, model), params) in models {
        let size = size_label(&model).unwrap_or_else(|| model.clone());
        let twin = list.iter().position(|m| (m.1 - params).abs() < 0.5);
        let short = model.rsplit('/').next().unwrap_or(&model).to_string();
        if let Some(i) = twin {
            list[i].2 = list[i].0.rsplit('/').next().unwrap_or(&list[i].0).to_string();
            list.push((model.clone(), params, short, true));
        } else {
            list.push((model.clone(), params, size, false));
        }
    }
    // Two series never share a label: `pythia-70m` and `EleutherAI/pythia-70m` are two models (an `ORG/`
    // prefix is part of the name), labelled by their full names.
    for i in 0..list.len() {
        if list.iter().enumerate().any(|(j, m)| j != i && m.2 == list[i].2) {
            list[i].2 = list[i].0.clone();
        }
    }
    let panels: Vec<Panel> = by_task
        .into_iter()
        .map(|(task, series)| Panel {
            title: task_display_name(&task),
            metric: metric_label(&task, &opts.metric),
            chance: match chance {
                Some(c) => c.get(&task).copied(),
                None => chance_level(&task),
            },
            series,
        })
        .collect();
    Ok(FigureData {
        has_chance: panels.iter().any(|p| p.chance.is_some()),
        panels,
        models: list,
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

/// A marker of shape `shape` (see [`size_marker`]) centred at pixel `c`, radius `r`.
fn marker<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    c: (i32, i32),
    r: i32,
    shape: usize,
    color: RGBColor,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let style = color.filled();
    let (x, y) = c;
    match shape {
        0 => area.draw(&Circle::new(c, r as u32, style)),
        1 => area.draw(&Rectangle::new([(x - r + 1, y - r + 1), (x + r - 1, y + r - 1)], style)),
        2 => area.draw(&Polygon::new(vec![(x, y - r - 1), (x + r + 1, y + r - 1), (x - r - 1, y + r - 1)], style)),
        _ => area.draw(&Polygon::new(vec![(x, y - r - 1), (x + r + 1, y), (x, y + r + 1), (x - r - 1, y)], style)),
    }
}

/// Legend entries as (label, colour, marker, dashed); the chance line last when there is one.
fn legend_entries(fig: &FigureData) -> Vec<(String, RGBColor, Option<usize>, bool)> {
    let mut v: Vec<(String, RGBColor, Option<usize>, bool)> = fig
        .models
        .iter()
        .map(|(_, p, l, dashed)| (l.clone(), size_color(*p), Some(size_marker(*p)), *dashed))
        .collect();
    if fig.has_chance {
        v.push(("chance".into(), RGBColor(110, 110, 110), None, true));
    }
    v
}

/// A horizontal or sloped dashed line between two pixels.
fn dashed<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    a: (i32, i32),
    b: (i32, i32),
    dash: f64,
    gap: f64,
    style: ShapeStyle,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let (dx, dy) = ((b.0 - a.0) as f64, (b.1 - a.1) as f64);
    let len = (dx * dx + dy * dy).sqrt();
    let mut t = 0.0;
    while t < len {
        let e = (t + dash).min(len);
        let p = |s: f64| ((a.0 as f64 + dx * s / len).round() as i32, (a.1 as f64 + dy * s / len).round() as i32);
        area.draw(&PathElement::new(vec![p(t), p(e)], style))?;
        t = e + gap;
    }
    Ok(())
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, fig: &FigureData) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let ((cols, rows), (_, h)) = layout(fig.panels.len());
    let (panels, footer) = root.split_vertically(h as i32 - px(FOOTER_H) as i32);
    let (x_desc, legend) = footer.split_vertically(px(0.3) as i32);

    let (xw, xh) = x_desc.dim_in_pixel();
    x_desc.draw(&Text::new(
        "Training tokens seen (log scale)",
        (xw as i32 / 2, xh as i32 / 2),
        TextStyle::from((FONT, pt(9.0)).into_font()).pos(Pos::new(HPos::Center, VPos::Center)),
    ))?;

    let tick = pt(7.5);
    let line_w = px(1.1 / 72.0).max(1); // 1.1 pt data lines
    let r = px(1.3 / 72.0) as i32; // markers 2.6 pt across
    let areas = panels.split_evenly((rows, cols));
    let (x0, x1) = fig.x_range;
    for (area, panel) in areas.iter().zip(&fig.panels) {
        // The y range holds every point, its band and the chance line, padded 6% each side (as ggplot does).
        let (mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY);
        for p in panel.series.iter().flat_map(|s| &s.points) {
            let se = if p.2.is_finite() { p.2 } else { 0.0 };
            y0 = y0.min(p.1 - se);
            y1 = y1.max(p.1 + se);
        }
        if let Some(c) = panel.chance {
            y0 = y0.min(c);
            y1 = y1.max(c);
        }
        let pad = ((y1 - y0) * 0.06).max(0.005);
        let (y0, y1) = (y0 - pad, y1 + pad);
        let decimals = if y1 - y0 < 0.06 { 3 } else { 2 };
        let y_fmt = move |v: &f64| format!("{:.decimals$}", if v.abs() < 1e-9 { 0.0 } else { *v });
        let x_fmt = |v: &f64| tokens_label(10f64.powf(*v));

        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, (FONT, pt(9.0)))
            .margin(px(0.03))
            .margin_right(px(0.13))
            .x_label_area_size(px(0.2))
            .y_label_area_size(px(0.5))
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
            .y_labels(5)
            .y_desc(panel.metric)
            .axis_desc_style((FONT, pt(7.5)))
            .label_style((FONT, tick))
            .bold_line_style(BLACK.mix(0.10))
            .light_line_style(TRANSPARENT)
            .axis_style(BLACK.mix(0.6))
            .draw()?;
        // Bands first (under every line), then the chance line, then lines and markers.
        for s in &panel.series {
            let c = size_color(s.params);
            // One band per run of points with a known standard error: a missing one is no band, not a thin one.
            for run in s.points.split(|p| !p.2.is_finite()) {
                if run.len() < 2 {
                    continue;
                }
                let mut poly: Vec<(f64, f64)> = run.iter().map(|p| (p.0.log10(), p.1 + p.2)).collect();
                poly.extend(run.iter().rev().map(|p| (p.0.log10(), p.1 - p.2)));
                chart.draw_series(std::iter::once(Polygon::new(poly, c.mix(0.10).filled())))?;
            }
        }
        let is_dashed = |s: &Series| fig.models.iter().any(|m| m.0 == s.model && m.3);
        for s in panel.series.iter().filter(|s| !is_dashed(s)) {
            let pts = s.points.iter().map(|p| (p.0.log10(), p.1));
            chart.draw_series(LineSeries::new(pts, size_color(s.params).stroke_width(line_w)))?;
        }
        let plot = chart.plotting_area();
        let pixels = plot.strip_coord_spec();
        // map_coordinate gives backend pixels; drawing on `pixels` wants them relative to the plotting area.
        let base = plot.get_base_pixel();
        let at = |p: (f64, f64)| {
            let (x, y) = plot.map_coordinate(&p);
            (x - base.0, y - base.1)
        };
        if let Some(cv) = panel.chance {
            let (a, b) = (at((x0, cv)), at((x1, cv)));
            dashed(
                &pixels,
                a,
                b,
                px(0.04) as f64,
                px(0.03) as f64,
                RGBColor(110, 110, 110).stroke_width(line_w),
            )?;
        }
        for s in &panel.series {
            let c = size_color(s.params);
            let pts: Vec<(i32, i32)> = s.points.iter().map(|p| at((p.0.log10(), p.1))).collect();
            if is_dashed(s) {
                for w in pts.windows(2) {
                    dashed(&pixels, w[0], w[1], px(0.05) as f64, px(0.025) as f64, c.stroke_width(line_w))?;
                }
            }
            for &p in &pts {
                marker(&pixels, p, r, size_marker(s.params), c)?;
            }
        }
    }

    // One legend for all panels: entries in rows centred in the strip, wrapped when they do not fit.
    let (lw, lh) = legend.dim_in_pixel();
    let label_style = TextStyle::from((FONT, pt(8.0)).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    let title = "Model size:";
    let text_w = |t: &str| legend.estimate_text_size(t, &label_style).map(|(w, _)| w as i32);
    let (sample, gap, space) = (px(0.22) as i32, px(0.04) as i32, px(0.14) as i32);
    let entries = legend_entries(fig);
    let mut widths = Vec::with_capacity(entries.len());
    for e in &entries {
        widths.push(sample + gap + text_w(&e.0)?);
    }
    let title_w = text_w(title)? + space / 2;
    // Split into rows no wider than the strip.
    let mut lines: Vec<Vec<usize>> = vec![vec![]];
    let mut used = title_w;
    for (i, w) in widths.iter().enumerate() {
        let last = lines.last_mut().expect("one line");
        if !last.is_empty() && used + space + w > lw as i32 - px(0.1) as i32 {
            lines.push(vec![i]);
            used = *w;
        } else {
            used += if last.is_empty() { *w } else { space + w };
            last.push(i);
        }
    }
    let row_h = px(0.2) as i32;
    let top = (lh as i32 - row_h * lines.len() as i32) / 2 + row_h / 2;
    for (li, line) in lines.iter().enumerate() {
        let mut total: i32 = line.iter().map(|&i| widths[i]).sum::<i32>() + space * (line.len() as i32 - 1);
        if li == 0 {
            total += title_w;
        }
        let mut x = (lw as i32 - total).max(0) / 2;
        let y = top + li as i32 * row_h;
        if li == 0 {
            legend.draw(&Text::new(title, (x, y), label_style.clone()))?;
            x += title_w;
        }
        for &i in line {
            let (label, c, shape, is_dashed) = &entries[i];
            if *is_dashed {
                dashed(
                    &legend,
                    (x, y),
                    (x + sample, y),
                    px(0.05) as f64,
                    px(0.025) as f64,
                    c.stroke_width(line_w),
                )?;
            } else {
                legend.draw(&PathElement::new(vec![(x, y), (x + sample, y)], c.stroke_width(line_w)))?;
            }
            if let Some(m) = shape {
                marker(&legend, (x + sample / 2, y), r, *m, *c)?;
            }
            legend.draw(&Text::new(label.as_str(), (x + sample + gap, y), label_style.clone()))?;
            x += widths[i] + space;
        }
    }
    root.present()?;
    Ok(())
}

/// The SVG's size in inches instead of pixels, so that it prints at 6.5 inches wide (the drawing keeps
/// its pixel user units through the viewBox).
fn svg_in_inches(svg: String, (w, h): (u32, u32)) -> String {
    let from = format!("width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\"");
    let to = format!(
        "width=\"{:.4}in\" height=\"{:.4}in\" viewBox=\"0 0 {w} {h}\"",
        w as f64 / DPI,
        h as f64 / DPI
    );
    svg.replacen(&from, &to, 1)
}

/// Draw the figure for `rows` in each of `opts.formats`; `chance` (task -> chance level, from per-item data)
/// replaces the built-in levels of [`chance_level`].
pub fn render_figure(rows: &[ResultRow], opts: &FigureOptions, chance: Option<&HashMap<String, f64>>) -> Result<Vec<(FigureFormat, Vec<u8>)>> {
    let fig = prepare(rows, opts, chance)?;
    let (_, (w, h)) = layout(fig.panels.len());
    let mut out = Vec::new();
    for &format in &opts.formats {
        let bytes = match format {
            FigureFormat::Svg => {
                let mut svg = String::new();
                {
                    let root = Typeset::vector(SVGBackend::with_string(&mut svg, (w, h))).into_drawing_area();
                    draw(&root, &fig).map_err(|e| Error::invalid(format!("figure (SVG): {e}")))?;
                }
                svg_in_inches(svg, (w, h)).into_bytes()
            }
            FigureFormat::Png => {
                let mut rgb = vec![0u8; (w * h * 3) as usize];
                {
                    let root = Typeset::raster(BitMapBackend::with_buffer(&mut rgb, (w, h))).into_drawing_area();
                    draw(&root, &fig).map_err(|e| Error::invalid(format!("figure (PNG): {e}")))?;
                }
                encode_png(&rgb, (w, h))?
            }
            FigureFormat::Pdf => {
                let mut pdf = Vec::new();
                {
                    let backend = PdfBackend::new(&mut pdf, (w, h), DPI, "Emergent inabilities: metric over training");
                    let root = Typeset::vector(backend).into_drawing_area();
                    draw(&root, &fig).map_err(|e| Error::invalid(format!("figure (PDF): {e}")))?;
                }
                pdf
            }
        };
        out.push((format, bytes));
    }
    Ok(out)
}

/// PNG with its resolution in the pHYs chunk (pixels per metre), so that it opens at 6.5 inches wide.
fn encode_png(rgb: &[u8], (w, h): (u32, u32)) -> Result<Vec<u8>> {
    let err = |e: png::EncodingError| Error::invalid(format!("figure (PNG encoding): {e}"));
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let ppm = (DPI / 0.0254).round() as u32;
        enc.set_pixel_dims(Some(png::PixelDimensions {
            xppu: ppm,
            yppu: ppm,
            unit: png::Unit::Meter,
        }));
        let mut writer = enc.write_header().map_err(err)?;
        writer.write_image_data(rgb).map_err(err)?;
        writer.finish().map_err(err)?;
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_layout_and_colours() {
        assert_eq!(tokens_label(4.194304e9), "4.2B");
        assert_eq!(tokens_label(1e10), "10B");
        assert_eq!(tokens_label(3e11), "300B");
        assert_eq!(layout(12), ((3, 4), FIGURE_SIZE));
        assert_eq!(layout(1).0, (1, 1));
        assert_eq!(layout(2).0, (2, 1));
        // 7.5 pt at 300 dpi is 31.25 px per em.
        assert!(pt(7.5) / 1.24 >= 31.25 && pt(7.5) / 1.24 < 32.1);
        // Fixed colours: a size is its palette entry whatever else is plotted; the 8 are far apart.
        assert_eq!(size_color(1e9), RGBColor(40, 120, 40));
        for (i, a) in PALETTE.iter().enumerate() {
            for b in &PALETTE[i + 1..] {
                let d = |x: u8, y: u8| (x as f64 - y as f64).powi(2);
                let dist = (d(a.1 .0, b.1 .0) + d(a.1 .1, b.1 .1) + d(a.1 .2, b.1 .2)).sqrt();
                assert!(dist > 60.0, "{:?} and {:?} are too close ({dist})", a, b);
            }
        }
        assert_eq!(chance_level("isp_memo_trap"), Some(0.5));
        assert_eq!(chance_level("custom:x.jsonl"), None);
    }
}
