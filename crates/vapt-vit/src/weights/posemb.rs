//! Position-embedding resampling when the patch grid of the checkpoint differs from the model's.
//!
//! Row 0 (CLS) is kept; rows 1.. are viewed as a (g_old, g_old, D) grid, each channel resized to
//! (g_new, g_new), and concatenated again. Two conventions exist and both are implemented:
//!
//! * [`PosEmbResample::ScipyZoom`] — the official VPT/VAPT code: `scipy.ndimage.zoom(order=1)`,
//!   linear with corner-aligned coordinates `x_in = x_out · (g_old − 1) / (g_new − 1)`.
//! * [`PosEmbResample::Bilinear`] — timm: `F.interpolate(mode="bilinear", align_corners=False)`
//!   without antialiasing, `x_in = (x_out + 0.5) · g_old / g_new − 0.5`, clamped at 0.

use serde::{Deserialize, Serialize};

use super::RawTensor;

/// Resampling convention for position embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PosEmbResample {
    /// Official VPT/VAPT code (`scipy.ndimage.zoom`, order 1, corner-aligned). The default.
    #[default]
    ScipyZoom,
    /// timm (`F.interpolate`, bilinear, `align_corners=False`, no antialias).
    Bilinear,
}

impl std::str::FromStr for PosEmbResample {
    type Err = String;

    /// `scipy-zoom` (or `scipy`) and `bilinear` (or `timm`).
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "scipy-zoom" | "scipy" => Ok(PosEmbResample::ScipyZoom),
            "bilinear" | "timm" => Ok(PosEmbResample::Bilinear),
            _ => Err(format!(
                "unknown resampling `{s}`: expected scipy-zoom or bilinear"
            )),
        }
    }
}

/// Source taps `(i0, i1, w)` for each output index: value = (1−w)·in[i0] + w·in[i1].
fn taps(n_in: usize, n_out: usize, mode: PosEmbResample) -> Vec<(usize, usize, f64)> {
    (0..n_out)
        .map(|o| {
            let x = match mode {
                PosEmbResample::ScipyZoom if n_out > 1 => o as f64 * (n_in - 1) as f64 / (n_out - 1) as f64,
                PosEmbResample::ScipyZoom => 0.0,
                PosEmbResample::Bilinear => ((o as f64 + 0.5) * n_in as f64 / n_out as f64 - 0.5).max(0.0),
            };
            let x = x.min((n_in - 1) as f64);
            let i0 = x.floor() as usize;
            let i1 = (i0 + 1).min(n_in - 1);
            (i0, i1, x - i0 as f64)
        })
        .collect()
}

/// Resamples a `(1, 1 + g_old², D)` position embedding to `(1, 1 + g_new², D)`.
pub fn resample(pos: &RawTensor, g_new: usize, mode: PosEmbResample) -> RawTensor {
    let d = pos.shape[2];
    let n_old = pos.shape[1] - 1;
    let g_old = (n_old as f64).sqrt().round() as usize;
    let grid = &pos.data[d..];
    let ty = taps(g_old, g_new, mode);
    let mut out = Vec::with_capacity((1 + g_new * g_new) * d);
    out.extend_from_slice(&pos.data[..d]);
    for &(y0, y1, wy) in &ty {
        for &(x0, x1, wx) in &ty {
            for c in 0..d {
                let at = |y: usize, x: usize| grid[(y * g_old + x) * d + c] as f64;
                let top = (1.0 - wx) * at(y0, x0) + wx * at(y0, x1);
                let bottom = (1.0 - wx) * at(y1, x0) + wx * at(y1, x1);
                out.push(((1.0 - wy) * top + wy * bottom) as f32);
            }
        }
    }
    RawTensor::new(vec![1, 1 + g_new * g_new, d], out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A linear ramp over the grid is reproduced exactly by corner-aligned linear resampling.
    #[test]
    fn scipy_zoom_keeps_cls_and_is_exact_on_linear_ramps() {
        let (g, d) = (3usize, 2usize);
        let mut data = vec![7.0, -7.0]; // CLS row
        for y in 0..g {
            for x in 0..g {
                data.push((y * 10 + x) as f32);
                data.push(1.0);
            }
        }
        let pos = RawTensor::new(vec![1, 1 + g * g, d], data);
        let out = resample(&pos, 5, PosEmbResample::ScipyZoom);
        assert_eq!(out.shape, vec![1, 26, 2]);
        assert_eq!(&out.data[..2], &[7.0, -7.0]);
        for y in 0..5 {
            for x in 0..5 {
                let v = out.data[(1 + y * 5 + x) * 2];
                let expect = (y as f32 * 0.5) * 10.0 + x as f32 * 0.5;
                assert!((v - expect).abs() < 1e-5, "({y},{x}): {v} vs {expect}");
                assert_eq!(out.data[(1 + y * 5 + x) * 2 + 1], 1.0);
            }
        }
    }

    /// Values from `torch.nn.functional.interpolate([[0,1],[2,3]], size=4, mode="bilinear")`.
    #[test]
    fn bilinear_matches_pytorch_half_pixel_convention() {
        let pos = RawTensor::new(vec![1, 5, 1], vec![9.0, 0.0, 1.0, 2.0, 3.0]);
        let out = resample(&pos, 4, PosEmbResample::Bilinear);
        let expect = [
            0.0, 0.25, 0.75, 1.0, 0.5, 0.75, 1.25, 1.5, 1.5, 1.75, 2.25, 2.5, 2.0, 2.25, 2.75, 3.0,
        ];
        assert_eq!(out.data[0], 9.0);
        for (a, b) in out.data[1..].iter().zip(expect) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn same_grid_is_identity() {
        let pos = RawTensor::new(vec![1, 5, 1], vec![9.0, 0.0, 1.0, 2.0, 3.0]);
        for mode in [PosEmbResample::ScipyZoom, PosEmbResample::Bilinear] {
            assert_eq!(resample(&pos, 2, mode), pos);
        }
    }
}
