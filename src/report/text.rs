//! Text for the figure, typeset with real font metrics and, in the bitmap, rasterised by hand.
//!
//! Why: plotters' bitmap backend needs a font backend to draw text. Its default (`ttf`) goes through
//! font-kit to the system's fontconfig / freetype C libraries, which a fresh machine may lack and which
//! pick whatever font happens to be installed. Its pure-Rust `ab_glyph` option drops each glyph's side
//! bearing and guesses the baseline, which visibly breaks words apart ("Repetit ive") and clips titles.
//! So [`Typeset`] wraps a plotters backend: every drawing call goes straight through, except that text
//! is measured (both backends, so SVG and PNG lay out alike) and, for bitmaps, drawn from DejaVu Sans
//! compiled into the binary (`assets/DejaVuSans.ttf`, Bitstream Vera licence, see
//! `assets/DejaVuSans-LICENSE.txt`) with ab_glyph. That builds and renders identically offline on any
//! machine. The SVG keeps `<text>` elements in `sans-serif`, which every viewer resolves itself.
//!
//! Placement follows plotters' SVG backend, so both outputs agree: a font "size" s is s / 1.24 pixels
//! per em, and the baseline sits 0.76 em below a top anchor, half an x-height below a centre anchor,
//! and half an x-height above a bottom anchor.

use ab_glyph::{point, Font, FontRef, GlyphId, PxScale, PxScaleFont, ScaleFont};
use plotters_backend::text_anchor::{HPos, VPos};
use plotters_backend::{BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingBackend, DrawingErrorKind};

static DEJAVU_SANS: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

/// The bundled font, parsed once.
fn font() -> &'static FontRef<'static> {
    static FONT: std::sync::OnceLock<FontRef<'static>> = std::sync::OnceLock::new();
    FONT.get_or_init(|| FontRef::try_from_slice(DEJAVU_SANS).expect("assets/DejaVuSans.ttf is a valid font, checked by the tests"))
}

/// A plotters backend whose text is measured with DejaVu Sans, and drawn with it when `raster`.
pub(super) struct Typeset<B> {
    inner: B,
    raster: bool,
}

impl<B: DrawingBackend> Typeset<B> {
    /// Around a vector backend: measure text, let the backend write it.
    pub fn vector(inner: B) -> Self {
        Typeset { inner, raster: false }
    }

    /// Around a pixel backend: measure and rasterise text.
    pub fn raster(inner: B) -> Self {
        Typeset { inner, raster: true }
    }
}

/// Pixels per em for a plotters font size (what plotters' SVG backend writes as `font-size`).
fn em(size: f64) -> f32 {
    (size / 1.24) as f32
}

fn scaled(size: f64) -> PxScaleFont<&'static FontRef<'static>> {
    let f = font();
    let units_per_em = f.units_per_em().unwrap_or(2048.0);
    // ab_glyph scales by the font's ascent-descent height, not by the em.
    f.as_scaled(PxScale::from(em(size) * f.height_unscaled() / units_per_em))
}

/// Advance width of `text` in pixels, kerning included.
fn width(f: &PxScaleFont<&FontRef>, text: &str) -> f32 {
    let mut w = 0.0;
    let mut prev: Option<GlyphId> = None;
    for c in text.chars() {
        let id = f.glyph_id(c);
        if let Some(p) = prev {
            w += f.kern(p, id);
        }
        w += f.h_advance(id);
        prev = Some(id);
    }
    w
}

/// Height of a lowercase x in pixels.
fn x_height(f: &PxScaleFont<&FontRef>) -> f32 {
    let g = f.scaled_glyph('x');
    f.outline_glyph(g).map(|o| o.px_bounds().height()).unwrap_or(f.ascent() * 0.55)
}

/// The pixels of `text` as (dx, dy, coverage), relative to the anchor point, before rotation.
fn rasterise(text: &str, size: f64, h: HPos, v: VPos) -> Vec<(i32, i32, f32)> {
    let f = scaled(size);
    let w = width(&f, text);
    let x0 = match h {
        HPos::Left => 0.0,
        HPos::Center => -w / 2.0,
        HPos::Right => -w,
    };
    let baseline = match v {
        VPos::Top => 0.76 * em(size),
        VPos::Center => 0.5 * x_height(&f),
        VPos::Bottom => -0.5 * x_height(&f),
    };
    let mut out = Vec::new();
    let mut caret = x0;
    let mut prev: Option<GlyphId> = None;
    for c in text.chars() {
        let id = f.glyph_id(c);
        if let Some(p) = prev {
            caret += f.kern(p, id);
        }
        let glyph = id.with_scale_and_position(f.scale(), point(caret, baseline));
        if let Some(outline) = f.outline_glyph(glyph) {
            let b = outline.px_bounds();
            outline.draw(|gx, gy, cov| {
                if cov > 0.0 {
                    out.push((b.min.x as i32 + gx as i32, b.min.y as i32 + gy as i32, cov.min(1.0)));
                }
            });
        }
        caret += f.h_advance(id);
        prev = Some(id);
    }
    out
}

impl<B: DrawingBackend> DrawingBackend for Typeset<B> {
    type ErrorType = B::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.inner.get_size()
    }
    fn ensure_prepared(&mut self) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.ensure_prepared()
    }
    fn present(&mut self) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.present()
    }
    fn draw_pixel(&mut self, point: BackendCoord, color: BackendColor) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_pixel(point, color)
    }
    fn draw_line<S: BackendStyle>(&mut self, from: BackendCoord, to: BackendCoord, style: &S) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_line(from, to, style)
    }
    fn draw_rect<S: BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_rect(upper_left, bottom_right, style, fill)
    }
    fn draw_path<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_path(path, style)
    }
    fn draw_circle<S: BackendStyle>(
        &mut self,
        center: BackendCoord,
        radius: u32,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_circle(center, radius, style, fill)
    }
    fn fill_polygon<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vert: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.fill_polygon(vert, style)
    }
    fn blit_bitmap(&mut self, pos: BackendCoord, size: (u32, u32), src: &[u8]) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.blit_bitmap(pos, size, src)
    }

    fn estimate_text_size<TStyle: BackendTextStyle>(&self, text: &str, style: &TStyle) -> Result<(u32, u32), DrawingErrorKind<Self::ErrorType>> {
        let f = scaled(style.size());
        Ok((width(&f, text).ceil() as u32, em(style.size()).ceil() as u32))
    }

    fn draw_text<TStyle: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &TStyle,
        pos: BackendCoord,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        if !self.raster {
            return self.inner.draw_text(text, style, pos);
        }
        let color = style.color();
        if color.alpha == 0.0 {
            return Ok(());
        }
        let anchor = style.anchor();
        let transform = style.transform();
        for (dx, dy, cov) in rasterise(text, style.size(), anchor.h_pos, anchor.v_pos) {
            let (tx, ty) = transform.transform(dx, dy);
            self.inner.draw_pixel(
                (pos.0 + tx, pos.1 + ty),
                BackendColor {
                    alpha: color.alpha * cov as f64,
                    rgb: color.rgb,
                },
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_font_measures_sensibly() {
        // Size 24.8 is 20 px per em; DejaVu Sans "x" is about 0.55 em high and "Accuracy" about 4.4 em wide.
        let f = scaled(24.8);
        let xh = x_height(&f);
        assert!((10.0..12.5).contains(&xh), "{xh}");
        let w = width(&f, "Accuracy");
        assert!((80.0..95.0).contains(&w), "{w}");
        // Centred text is centred: its pixels straddle the anchor.
        let px = rasterise("Memo Trap", 24.8, HPos::Center, VPos::Center);
        let (min_x, max_x) = px.iter().fold((i32::MAX, i32::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
        let (min_y, max_y) = px.iter().fold((i32::MAX, i32::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
        assert!((min_x + max_x).abs() <= 3, "{min_x}..{max_x}");
        assert!(min_y < 0 && max_y > 0, "{min_y}..{max_y}");
    }
}
