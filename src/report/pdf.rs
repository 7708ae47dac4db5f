//! A minimal PDF writer for the figure: one page of vector lines, fills and text in Helvetica, as a plotters
//! drawing backend.
//!
//! Why by hand: no PDF crate is among the dependencies, and the figure needs a small subset of PDF (paths,
//! colours, transparency for the error bands, text). Text uses Helvetica, one of the 14 standard fonts every
//! PDF reader has, so nothing is embedded; its advance widths (Adobe's AFM metrics, below) place centred and
//! right-aligned text exactly. Layout is measured with DejaVu Sans by [`super::text::Typeset`] like the SVG
//! and PNG, and Helvetica is narrower, so text only ever has a little more room than it needs.
//!
//! Coordinates: the backend takes plotters' pixels (origin top left, y down) at `dpi` pixels per inch and
//! maps them to PDF points (1/72 inch, origin bottom left) with one matrix at the start of the page.

use plotters_backend::text_anchor::{HPos, VPos};
use plotters_backend::{BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingBackend, DrawingErrorKind, FontTransform};
use std::collections::BTreeSet;
use std::fmt::Write as _;

/// Helvetica advance widths (1/1000 em) of the characters 32 (space) to 126 (~), from Adobe's Helvetica AFM.
const HELVETICA_WIDTHS: [u16; 95] = [
    278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278, // space .. /
    556, 556, 556, 556, 556, 556, 556, 556, 556, 556, // 0 .. 9
    278, 278, 584, 584, 584, 556, 1015, // : .. @
    667, 667, 722, 722, 667, 611, 778, 722, 278, 500, 667, 556, 833, 722, 778, 667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, // A .. Z
    278, 278, 278, 469, 556, 333, // [ .. `
    556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500, 222, 833, 556, 556, 556, 556, 333, 500, 278, 556, 500, 722, 500, 500, 500, // a .. z
    334, 260, 334, 584, // { .. ~
];

/// Helvetica's x-height, 1/1000 em.
const HELVETICA_X_HEIGHT: f64 = 523.0;

/// The byte a character is written as (WinAnsiEncoding: ASCII, and Latin-1 above 160), `?` for others.
fn win_ansi(c: char) -> u8 {
    match c as u32 {
        32..=126 | 160..=255 => c as u32 as u8,
        _ => b'?',
    }
}

/// Width of `text` in Helvetica at 1 unit per em.
pub(super) fn helvetica_width(text: &str) -> f64 {
    text.chars()
        .map(|c| match win_ansi(c) {
            b @ 32..=126 => HELVETICA_WIDTHS[(b - 32) as usize] as f64,
            _ => 556.0,
        })
        .sum::<f64>()
        / 1000.0
}

/// A one-page PDF drawn by plotters, written into `out` when the drawing is presented.
pub(super) struct PdfBackend<'a> {
    out: &'a mut Vec<u8>,
    size: (u32, u32),
    dpi: f64,
    ops: String,
    /// Opacities used (thousandths), each an ExtGState of the page.
    alphas: BTreeSet<u16>,
    title: String,
}

impl<'a> PdfBackend<'a> {
    pub fn new(out: &'a mut Vec<u8>, size: (u32, u32), dpi: f64, title: &str) -> Self {
        PdfBackend {
            out,
            size,
            dpi,
            ops: String::new(),
            alphas: BTreeSet::new(),
            title: title.to_string(),
        }
    }

    /// `q`, the colour (stroke or fill) and its opacity: the start of one self-contained drawing operation.
    fn begin(&mut self, color: BackendColor, fill: bool) {
        let (r, g, b) = color.rgb;
        let op = if fill { "rg" } else { "RG" };
        let _ = write!(
            self.ops,
            "q {:.4} {:.4} {:.4} {op} ",
            r as f64 / 255.0,
            g as f64 / 255.0,
            b as f64 / 255.0
        );
        if color.alpha < 1.0 {
            let a = (color.alpha.clamp(0.0, 1.0) * 1000.0).round() as u16;
            self.alphas.insert(a);
            let _ = write!(self.ops, "/GS{a} gs ");
        }
    }

    fn path(&mut self, points: &[BackendCoord]) {
        for (i, p) in points.iter().enumerate() {
            let _ = write!(self.ops, "{} {} {} ", p.0, p.1, if i == 0 { "m" } else { "l" });
        }
    }

    /// The finished file.
    pub fn finish(&self) -> Vec<u8> {
        let s = 72.0 / self.dpi;
        let (w, h) = (self.size.0 as f64 * s, self.size.1 as f64 * s);
        // Pixels (y down) to points (y up), round caps and joins for the data lines.
        let content = format!("{s:.6} 0 0 {:.6} 0 {h:.4} cm 1 J 1 j\n{}", -s, self.ops);
        let gstates: String = self
            .alphas
            .iter()
            .map(|a| format!("/GS{a} << /CA {0:.3} /ca {0:.3} >> ", *a as f64 / 1000.0))
            .collect();
        let escaped_title: String = self
            .title
            .chars()
            .filter(|c| c.is_ascii_graphic() || *c == ' ')
            .filter(|c| !"()\\".contains(*c))
            .collect();
        let objects = [
            "<< /Type /Catalog /Pages 2 0 R >>".to_string(),
            "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_string(),
            format!(
                "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {w:.2} {h:.2}] /Resources << /Font << /F1 4 0 R >> /ExtGState << {gstates}>> >> /Contents 5 0 R >>"
            ),
            "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>".to_string(),
            format!("<< /Length {} >>\nstream\n{content}\nendstream", content.len()),
            format!("<< /Title ({escaped_title}) /Producer (lmscore {}) >>", env!("CARGO_PKG_VERSION")),
        ];
        let mut out: Vec<u8> = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n".to_vec();
        let mut offsets = Vec::with_capacity(objects.len());
        for (i, body) in objects.iter().enumerate() {
            offsets.push(out.len());
            out.extend_from_slice(format!("{} 0 obj\n{body}\nendobj\n", i + 1).as_bytes());
        }
        let xref = out.len();
        let mut table = format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1);
        for o in offsets {
            let _ = writeln!(table, "{o:010} 00000 n ");
        }
        let _ = write!(
            table,
            "trailer\n<< /Size {} /Root 1 0 R /Info 6 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        );
        out.extend_from_slice(table.as_bytes());
        out
    }
}

type Res = Result<(), DrawingErrorKind<std::io::Error>>;

impl DrawingBackend for PdfBackend<'_> {
    type ErrorType = std::io::Error;

    fn get_size(&self) -> (u32, u32) {
        self.size
    }
    fn ensure_prepared(&mut self) -> Res {
        Ok(())
    }
    fn present(&mut self) -> Res {
        *self.out = self.finish();
        Ok(())
    }

    fn draw_pixel(&mut self, point: BackendCoord, color: BackendColor) -> Res {
        if color.alpha > 0.0 {
            self.begin(color, true);
            let _ = writeln!(self.ops, "{} {} 1 1 re f Q", point.0, point.1);
        }
        Ok(())
    }

    fn draw_line<S: BackendStyle>(&mut self, from: BackendCoord, to: BackendCoord, style: &S) -> Res {
        self.draw_path([from, to], style)
    }

    fn draw_rect<S: BackendStyle>(&mut self, upper_left: BackendCoord, bottom_right: BackendCoord, style: &S, fill: bool) -> Res {
        if style.color().alpha == 0.0 {
            return Ok(());
        }
        self.begin(style.color(), fill);
        let (x, y) = upper_left;
        let (w, h) = (bottom_right.0 - x, bottom_right.1 - y);
        if fill {
            let _ = writeln!(self.ops, "{x} {y} {w} {h} re f Q");
        } else {
            let _ = writeln!(self.ops, "{} w {x} {y} {w} {h} re S Q", style.stroke_width());
        }
        Ok(())
    }

    fn draw_path<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(&mut self, path: I, style: &S) -> Res {
        let points: Vec<BackendCoord> = path.into_iter().collect();
        if points.len() < 2 || style.color().alpha == 0.0 {
            return Ok(());
        }
        self.begin(style.color(), false);
        let _ = write!(self.ops, "{} w ", style.stroke_width());
        self.path(&points);
        self.ops.push_str("S Q\n");
        Ok(())
    }

    fn draw_circle<S: BackendStyle>(&mut self, center: BackendCoord, radius: u32, style: &S, fill: bool) -> Res {
        if style.color().alpha == 0.0 {
            return Ok(());
        }
        self.begin(style.color(), fill);
        // Four cubic Beziers, control points at 0.5523 r (the usual circle approximation).
        let (cx, cy, r) = (center.0 as f64, center.1 as f64, radius as f64);
        let k = 0.552_284_75 * r;
        let _ = writeln!(
            self.ops,
            "{} w {} {cy} m {} {} {} {} {cx} {} c {} {} {} {} {} {cy} c {} {} {} {} {cx} {} c {} {} {} {} {} {cy} c {} Q",
            style.stroke_width(),
            cx + r,
            cx + r,
            cy + k,
            cx + k,
            cy + r,
            cy + r,
            cx - k,
            cy + r,
            cx - r,
            cy + k,
            cx - r,
            cx - r,
            cy - k,
            cx - k,
            cy - r,
            cy - r,
            cx + k,
            cy - r,
            cx + r,
            cy - k,
            cx + r,
            if fill { "f" } else { "S" }
        );
        Ok(())
    }

    fn fill_polygon<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(&mut self, vert: I, style: &S) -> Res {
        let points: Vec<BackendCoord> = vert.into_iter().collect();
        if points.len() < 3 || style.color().alpha == 0.0 {
            return Ok(());
        }
        self.begin(style.color(), true);
        self.path(&points);
        self.ops.push_str("h f Q\n");
        Ok(())
    }

    fn draw_text<TStyle: BackendTextStyle>(&mut self, text: &str, style: &TStyle, pos: BackendCoord) -> Res {
        let color = style.color();
        if color.alpha == 0.0 || text.is_empty() {
            return Ok(());
        }
        // The same em as plotters' SVG backend writes (font-size = size / 1.24), in pixels.
        let em = style.size() / 1.24;
        let width = helvetica_width(text) * em;
        let anchor = style.anchor();
        let along = match anchor.h_pos {
            HPos::Left => 0.0,
            HPos::Center => -width / 2.0,
            HPos::Right => -width,
        };
        // How far the baseline lies below the anchor, as plotters' SVG backend places it.
        let down = match anchor.v_pos {
            VPos::Top => 0.76 * em,
            VPos::Center => 0.5 * HELVETICA_X_HEIGHT / 1000.0 * em,
            VPos::Bottom => -0.5 * HELVETICA_X_HEIGHT / 1000.0 * em,
        };
        // u: the direction of writing, v: "down" for the glyphs, both in pixel space (y down).
        let (u, v) = match style.transform() {
            FontTransform::Rotate90 => ((0.0, 1.0), (-1.0, 0.0)),
            FontTransform::Rotate180 => ((-1.0, 0.0), (0.0, -1.0)),
            FontTransform::Rotate270 => ((0.0, -1.0), (1.0, 0.0)),
            _ => ((1.0, 0.0), (0.0, 1.0)),
        };
        let ox = pos.0 as f64 + along * u.0 + down * v.0;
        let oy = pos.1 as f64 + along * u.1 + down * v.1;
        let mut bytes = String::new();
        for c in text.chars() {
            match win_ansi(c) {
                b'(' => bytes.push_str("\\("),
                b')' => bytes.push_str("\\)"),
                b'\\' => bytes.push_str("\\\\"),
                b @ 32..=126 => bytes.push(b as char),
                b => {
                    let _ = write!(bytes, "\\{b:03o}");
                }
            }
        }
        self.begin(color, true);
        // The text matrix maps glyph space (y up) onto the pixel space: x along u, y against v.
        let _ = writeln!(
            self.ops,
            "BT /F1 {em:.3} Tf {} {} {} {} {ox:.2} {oy:.2} Tm ({bytes}) Tj ET Q",
            u.0, u.1, -v.0, -v.1
        );
        Ok(())
    }

    fn blit_bitmap(&mut self, _pos: BackendCoord, _size: (u32, u32), _src: &[u8]) -> Res {
        // The figure draws no bitmaps.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths_and_escapes() {
        // "Hello": H 722 + e 556 + l 222 + l 222 + o 556 = 2278.
        assert!((helvetica_width("Hello") - 2.278).abs() < 1e-12);
        assert_eq!(HELVETICA_WIDTHS[(b'~' - 32) as usize], 584);
        assert_eq!(win_ansi('é'), 0xe9);
        assert_eq!(win_ansi('\u{2212}'), b'?');
    }

    #[test]
    fn file_structure_is_valid() {
        let mut pdf = Vec::new();
        let mut b = PdfBackend::new(&mut pdf, (300, 150), 300.0, "t");
        let style = plotters_backend::BackendColor {
            alpha: 0.5,
            rgb: (255, 0, 0),
        };
        b.draw_pixel((1, 1), style).unwrap();
        b.present().unwrap();
        drop(b);
        // Bytes above 127 (the binary marker of the header) as one character each: offsets stay byte offsets.
        let text: String = pdf.iter().map(|&b| if b < 128 { b as char } else { '?' }).collect();
        assert!(text.starts_with("%PDF-1.4") && text.ends_with("%%EOF\n"));
        assert!(text.contains("/MediaBox [0 0 72.00 36.00]"), "1 x 0.5 inch at 300 dpi");
        assert!(text.contains("/GS500 << /CA 0.500 /ca 0.500 >>"));
        // The xref offsets point at each object, and startxref at the xref table.
        let startxref: usize = text.rsplit("startxref\n").next().unwrap().lines().next().unwrap().parse().unwrap();
        assert!(text[startxref..].starts_with("xref\n0 7\n"));
        for (i, line) in text[startxref..].lines().skip(3).take(6).enumerate() {
            let at: usize = line[..10].parse().unwrap();
            assert!(text[at..].starts_with(&format!("{} 0 obj", i + 1)), "object {}", i + 1);
            assert_eq!(line.len() + 1, 20, "xref entries are 20 bytes");
        }
        // The content stream's declared length is its length.
        let s = text.find("stream\n").unwrap() + 7;
        let e = text.find("\nendstream").unwrap();
        let len: usize = text.split("/Length ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
        assert_eq!(e - s, len);
    }
}
