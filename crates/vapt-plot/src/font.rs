//! The embedded font: DejaVu Sans (Bitstream Vera licence, `fonts/LICENSE-DejaVu.txt`), registered
//! once as plotters' `sans-serif`.

use std::sync::Once;

static DEJAVU_SANS: &[u8] = include_bytes!("../fonts/DejaVuSans.ttf");

pub(crate) fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid TrueType font, checked by the crate's tests.
        let _ = plotters::style::register_font(super::FONT, plotters::style::FontStyle::Normal, DEJAVU_SANS);
    });
}
