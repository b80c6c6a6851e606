//! The font of ferry's plots: DejaVu Sans (Bitstream Vera licence, `fonts/`), embedded in the
//! binary and registered with plotters as every family it is asked for, so that bitmap (PNG)
//! plots carry text without system fonts and SVG plots size their labels the same way.
//!
//! Plotters is built with its `ab_glyph` font backend (pure Rust, no FreeType or fontconfig):
//! that backend knows only registered fonts, so every crate that draws text calls
//! [`register`] first.

use plotters::style::{register_font, FontStyle};
use std::sync::OnceLock;

/// DejaVu Sans, regular.
static SANS: &[u8] = include_bytes!("../fonts/DejaVuSans.ttf");

/// Families plotters may be asked for (the plots use `sans-serif`).
const FAMILIES: [&str; 4] = ["sans-serif", "serif", "monospace", "DejaVu Sans"];

/// Registers the embedded font for every family and style plots use; cheap after the
/// first call.
///
/// # Errors
/// If the embedded font cannot be parsed (a corrupted build).
pub fn register() -> Result<(), String> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        for family in FAMILIES {
            for style in [
                FontStyle::Normal,
                FontStyle::Bold,
                FontStyle::Italic,
                FontStyle::Oblique,
            ] {
                register_font(family, style, SANS)
                    .map_err(|_| format!("the embedded font for {family} is invalid"))?;
            }
        }
        Ok(())
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use plotters::prelude::*;

    #[test]
    fn text_is_drawn_into_a_bitmap() {
        super::register().expect("font registers");
        let (w, h) = (200u32, 60u32);
        let mut buf = vec![255u8; (w * h * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
            root.draw_text(
                "energy (kWh)",
                &("sans-serif", 20).into_font().color(&BLACK),
                (5, 20),
            )
            .expect("text draws");
            root.present().expect("presents");
        }
        let dark = buf.chunks(3).filter(|p| p[0] < 128).count();
        assert!(dark > 100, "only {dark} dark pixels: no text was drawn");
    }
}
