//! Position-embedding resampling when the patch grid of the checkpoint differs from the model's.
//!
//! Row 0 (CLS) is kept; rows 1.. are viewed as a (g_old, g_old, D) grid, each channel resized to
//! (g_new, g_new), and concatenated again. Two conventions exist and both are implemented:
//!
//! * [`PosEmbResample::ScipyZoom`] — the official VPT/VAPT code: `scipy.ndimage.zoom(order=1)`,
//!   linear with corner-aligned coordinates `x_in = x_out · (g_old − 1) / (g_new − 1)`.
//! * [`PosEmbResample::Bilinear`] — timm: `F.interpolate(mode="bilinear", align_corners=False)`
//!   without antialiasing, `x_in = (x_out + 0.5) · g_old / g_new − 0.5`, clamped at 0.
//! * [`PosEmbResample::Bicubic`] — DINOv2 (and its ONNX exports): `F.interpolate(mode="bicubic",
//!   align_corners=False)` without antialiasing: the same half-pixel `x_in` (not clamped), four
//!   taps `⌊x_in⌋ − 1 ..= ⌊x_in⌋ + 2` clamped to the grid, Keys' cubic kernel with a = −0.75.
//!   A DINOv2 backbone applies it at every forward pass ([`bicubic_matrix`]).

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
    /// DINOv2 (`F.interpolate`, bicubic a = −0.75, `align_corners=False`, no antialias).
    Bicubic,
}

impl std::str::FromStr for PosEmbResample {
    type Err = String;

    /// `scipy-zoom` (or `scipy`), `bilinear` (or `timm`) and `bicubic` (or `dinov2`).
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "scipy-zoom" | "scipy" => Ok(PosEmbResample::ScipyZoom),
            "bilinear" | "timm" => Ok(PosEmbResample::Bilinear),
            "bicubic" | "dinov2" => Ok(PosEmbResample::Bicubic),
            _ => Err(format!(
                "unknown resampling `{s}`: expected scipy-zoom, bilinear or bicubic"
            )),
        }
    }
}

/// Keys' cubic convolution kernel with a = −0.75 (PyTorch's and ONNX Resize's default).
fn cubic(x: f64) -> f64 {
    const A: f64 = -0.75;
    let x = x.abs();
    if x <= 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
    } else {
        0.0
    }
}

/// For each output index, its source taps `(input index, weight)`: the output is the weighted sum
/// of those inputs. Taps beyond the edge are clamped to it (so an index may repeat).
fn taps(n_in: usize, n_out: usize, mode: PosEmbResample) -> Vec<Vec<(usize, f64)>> {
    let last = n_in as isize - 1;
    let half_pixel = |o: usize| (o as f64 + 0.5) * n_in as f64 / n_out as f64 - 0.5;
    (0..n_out)
        .map(|o| {
            if mode == PosEmbResample::Bicubic {
                let x = half_pixel(o);
                let i = x.floor();
                let t = x - i;
                let clamp = |k: isize| (i as isize + k).clamp(0, last) as usize;
                return [(-1, t + 1.0), (0, t), (1, 1.0 - t), (2, 2.0 - t)]
                    .iter()
                    .map(|&(k, dist)| (clamp(k), cubic(dist)))
                    .collect();
            }
            let x = match mode {
                PosEmbResample::ScipyZoom if n_out > 1 => o as f64 * (n_in - 1) as f64 / (n_out - 1) as f64,
                PosEmbResample::ScipyZoom => 0.0,
                _ => half_pixel(o).max(0.0),
            };
            let x = x.min(last as f64);
            let i0 = x.floor() as usize;
            let i1 = (i0 + 1).min(n_in - 1);
            let w = x - i0 as f64;
            vec![(i0, 1.0 - w), (i1, w)]
        })
        .collect()
}

/// The separable resize of a `g_old × g_old` grid to `g_new × g_new` as one matrix
/// `[g_new², g_old²]` (row-major in both grids): `new = M · old`.
fn resize_matrix(g_old: usize, g_new: usize, mode: PosEmbResample) -> Vec<f64> {
    let t = taps(g_old, g_new, mode);
    let mut m = vec![0.0; g_new * g_new * g_old * g_old];
    for (oy, ty) in t.iter().enumerate() {
        for (ox, tx) in t.iter().enumerate() {
            let row = &mut m[(oy * g_new + ox) * g_old * g_old..][..g_old * g_old];
            for &(iy, wy) in ty {
                for &(ix, wx) in tx {
                    row[iy * g_old + ix] += wy * wx;
                }
            }
        }
    }
    m
}

/// The bicubic resize of a `g_old × g_old` grid to `g_new × g_new` as a `[g_new², g_old²]`
/// matrix (f32, row-major): what a DINOv2 backbone multiplies its stored position embedding by.
pub fn bicubic_matrix(g_old: usize, g_new: usize) -> Vec<f32> {
    resize_matrix(g_old, g_new, PosEmbResample::Bicubic)
        .into_iter()
        .map(|w| w as f32)
        .collect()
}

/// Resamples a `(1, 1 + g_old², D)` position embedding to `(1, 1 + g_new², D)`.
pub fn resample(pos: &RawTensor, g_new: usize, mode: PosEmbResample) -> RawTensor {
    let d = pos.shape[2];
    let n_old = pos.shape[1] - 1;
    let g_old = (n_old as f64).sqrt().round() as usize;
    let grid = &pos.data[d..];
    let m = resize_matrix(g_old, g_new, mode);
    let mut out = Vec::with_capacity((1 + g_new * g_new) * d);
    out.extend_from_slice(&pos.data[..d]);
    for row in m.chunks(g_old * g_old) {
        let mut acc = vec![0.0f64; d];
        for (n, &w) in row.iter().enumerate().filter(|(_, w)| **w != 0.0) {
            for (a, &v) in acc.iter_mut().zip(&grid[n * d..(n + 1) * d]) {
                *a += w * v as f64;
            }
        }
        out.extend(acc.into_iter().map(|v| v as f32));
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

    /// Values from ONNX's reference `Resize` (mode cubic, half_pixel, a = −0.75; what the DINOv2
    /// graph runs): a 3 × 3 grid 0..9 down to 2 × 2, and a 2 × 2 grid [[0,1],[2,3]] up to 3 × 3
    /// (the half-pixel taps outside the grid are clamped to its edge).
    #[test]
    fn bicubic_matches_onnx_resize_with_half_pixel_centres() {
        let down = RawTensor::new(vec![1, 10, 1], (0..10).map(|v| v as f32 - 1.0).collect());
        let out = resample(&down, 2, PosEmbResample::Bicubic);
        assert_eq!(out.data[0], -1.0);
        for (a, b) in out.data[1..]
            .iter()
            .zip([0.765625, 2.3828125, 5.6171875, 7.234375])
        {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        let up = RawTensor::new(vec![1, 5, 1], vec![9.0, 0.0, 1.0, 2.0, 3.0]);
        let out = resample(&up, 3, PosEmbResample::Bicubic);
        let expect = [
            -0.26041687,
            0.32638904,
            0.9131952,
            0.91319484,
            1.5,
            2.0868063,
            2.0868073,
            2.673612,
            3.2604194,
        ];
        for (a, b) in out.data[1..].iter().zip(expect) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        // Every row of the matrix sums to 1 (a constant grid stays constant).
        for row in bicubic_matrix(37, 16).chunks(37 * 37) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn same_grid_is_identity() {
        let pos = RawTensor::new(vec![1, 5, 1], vec![9.0, 0.0, 1.0, 2.0, 3.0]);
        for mode in [
            PosEmbResample::ScipyZoom,
            PosEmbResample::Bilinear,
            PosEmbResample::Bicubic,
        ] {
            assert_eq!(resample(&pos, 2, mode), pos);
        }
    }
}
