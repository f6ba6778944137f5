//! The paper's image transforms, implemented exactly (SPEC §6).
//!
//! * VTAB: resize directly to S×S with **TF2 `tf.image.resize` bilinear** semantics (half-pixel
//!   centres, no antialiasing, f32 arithmetic), /255, normalise. No augmentation.
//! * FGVC train: shorter side to 256 with **PIL bilinear** (antialiased triangle filter, 8-bit
//!   fixed-point passes, horizontal first), random 224 crop, horizontal flip p = 0.5, /255, normalise.
//! * FGVC eval: shorter side to 256 (PIL), center crop 224 with offset `round((side − 224)/2)`
//!   (half to even), /255, normalise.
//!
//! Mean/std are part of the [`Transform`], taken from the recipe or the backbone's pretrained
//! config; the loader never hard-codes them.

use serde::{Deserialize, Serialize};

/// An 8-bit RGB image, row-major HWC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgb8 {
    /// Width.
    pub width: usize,
    /// Height.
    pub height: usize,
    /// `height · width · 3` bytes.
    pub data: Vec<u8>,
}

/// How images are resized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Resize {
    /// Straight to `size × size`, TF2 bilinear, no antialias (VTAB).
    Direct(usize),
    /// Shorter side to `size`, long side ⌊size·long/short⌋, PIL bilinear (FGVC).
    ShorterSide(usize),
}

/// How images are cropped after resizing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Crop {
    /// No crop.
    None,
    /// Center crop to `size × size`.
    Center(usize),
    /// Uniformly random crop to `size × size`.
    Random(usize),
}

/// A complete preprocessing recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transform {
    /// Resize step.
    pub resize: Resize,
    /// Crop step.
    pub crop: Crop,
    /// Random horizontal flip with p = 0.5.
    pub hflip: bool,
    /// Per-channel mean (after /255).
    pub mean: [f32; 3],
    /// Per-channel std.
    pub std: [f32; 3],
}

impl Transform {
    /// VTAB: direct resize to `size`, no augmentation.
    pub fn vtab(size: usize, mean: [f32; 3], std: [f32; 3]) -> Self {
        Self {
            resize: Resize::Direct(size),
            crop: Crop::None,
            hflip: false,
            mean,
            std,
        }
    }

    /// FGVC training: shorter side 256·size/224 (256 for 224), random crop, flip.
    pub fn fgvc_train(size: usize, mean: [f32; 3], std: [f32; 3]) -> Self {
        Self {
            resize: Resize::ShorterSide(size * 256 / 224),
            crop: Crop::Random(size),
            hflip: true,
            mean,
            std,
        }
    }

    /// FGVC evaluation: shorter side 256·size/224, center crop.
    pub fn fgvc_eval(size: usize, mean: [f32; 3], std: [f32; 3]) -> Self {
        Self {
            resize: Resize::ShorterSide(size * 256 / 224),
            crop: Crop::Center(size),
            hflip: false,
            mean,
            std,
        }
    }

    /// Whether the output depends on randomness.
    pub fn is_random(&self) -> bool {
        self.hflip || matches!(self.crop, Crop::Random(_))
    }

    /// Output side.
    pub fn output_size(&self) -> usize {
        match (self.crop, self.resize) {
            (Crop::Center(s) | Crop::Random(s), _) => s,
            (Crop::None, Resize::Direct(s)) => s,
            (Crop::None, Resize::ShorterSide(s)) => s,
        }
    }

    /// Applies the recipe: CHW float32, normalised. `rng` drives crop and flip.
    pub fn apply(&self, img: &Rgb8, rng: &mut SplitMix64) -> Vec<f32> {
        self.finish(&self.resize(img), rng)
    }

    /// The recipe's first, deterministic step: the resize (what an image cache can keep).
    pub fn resize(&self, img: &Rgb8) -> Resized {
        let (nw, nh) = self.resized_size(img.width, img.height);
        match self.resize {
            Resize::Direct(_) => Resized::Float {
                width: nw,
                height: nh,
                plane: resize_tf_bilinear(img, nw, nh),
            },
            Resize::ShorterSide(_) => Resized::Bytes(resize_pil_bilinear(img, nw, nh)),
        }
    }

    /// The size [`Self::resize`] gives a `width × height` image.
    pub fn resized_size(&self, width: usize, height: usize) -> (usize, usize) {
        match self.resize {
            Resize::Direct(s) => (s, s),
            Resize::ShorterSide(s) if width <= height => {
                (s, (s as u64 * height as u64 / width.max(1) as u64) as usize)
            }
            Resize::ShorterSide(s) => ((s as u64 * width as u64 / height.max(1) as u64) as usize, s),
        }
    }

    /// Bytes [`Self::resize`] of a `width × height` image takes.
    pub fn resized_bytes(&self, width: usize, height: usize) -> usize {
        let (w, h) = self.resized_size(width, height);
        let per_value = match self.resize {
            Resize::Direct(_) => 4,
            Resize::ShorterSide(_) => 1,
        };
        w * h * 3 * per_value
    }

    /// The rest of the recipe on a resized image: crop, flip (`rng`), CHW, normalisation.
    pub fn finish(&self, resized: &Resized, rng: &mut SplitMix64) -> Vec<f32> {
        let (w, h) = resized.size();
        let value = |i: usize| match resized {
            Resized::Float { plane, .. } => plane[i],
            Resized::Bytes(img) => img.data[i] as f32,
        };
        let (x0, y0, cw, ch) = match self.crop {
            Crop::None => (0, 0, w, h),
            Crop::Center(s) | Crop::Random(s) => {
                let s_w = s.min(w);
                let s_h = s.min(h);
                let (x0, y0) = if let Crop::Random(_) = self.crop {
                    (rng.below(w - s_w + 1), rng.below(h - s_h + 1))
                } else {
                    (
                        round_half_even((w - s_w) as f64 / 2.0),
                        round_half_even((h - s_h) as f64 / 2.0),
                    )
                };
                (x0, y0, s_w, s_h)
            }
        };
        let flip = self.hflip && rng.below(2) == 1;
        let mut chw = vec![0f32; 3 * cw * ch];
        for y in 0..ch {
            for x in 0..cw {
                let sx = x0 + if flip { cw - 1 - x } else { x };
                let at = ((y0 + y) * w + sx) * 3;
                for c in 0..3 {
                    let v = value(at + c) / 255.0;
                    chw[(c * ch + y) * cw + x] = (v - self.mean[c]) / self.std[c];
                }
            }
        }
        chw
    }
}

/// An image after the recipe's resize: TF2 bilinear values (float, VTAB) or a PIL-resized 8-bit
/// image (FGVC).
#[derive(Debug, Clone, PartialEq)]
pub enum Resized {
    /// HWC float32 in [0, 255].
    Float {
        /// Width.
        width: usize,
        /// Height.
        height: usize,
        /// `height · width · 3` values.
        plane: Vec<f32>,
    },
    /// 8-bit RGB.
    Bytes(Rgb8),
}

impl Resized {
    /// (width, height).
    pub fn size(&self) -> (usize, usize) {
        match self {
            Resized::Float { width, height, .. } => (*width, *height),
            Resized::Bytes(img) => (img.width, img.height),
        }
    }

    /// Bytes of memory its pixels take.
    pub fn bytes(&self) -> usize {
        match self {
            Resized::Float { plane, .. } => 4 * plane.len(),
            Resized::Bytes(img) => img.data.len(),
        }
    }
}

/// Python's `round` (half to even) for non-negative values.
fn round_half_even(v: f64) -> usize {
    let f = v.floor();
    let diff = v - f;
    let r = if diff > 0.5 || (diff == 0.5 && (f as u64) % 2 == 1) {
        f + 1.0
    } else {
        f
    };
    r as usize
}

/// `tf.image.resize(method="bilinear", antialias=False)` (TF2: half-pixel centres) of an 8-bit
/// image; returns HWC float32 values in [0, 255].
pub fn resize_tf_bilinear(img: &Rgb8, out_w: usize, out_h: usize) -> Vec<f32> {
    struct Tap {
        lo: usize,
        hi: usize,
        lerp: f32,
    }
    let taps = |in_size: usize, out_size: usize| -> Vec<Tap> {
        let scale = in_size as f32 / out_size as f32;
        (0..out_size)
            .map(|o| {
                let x = (o as f32 + 0.5) * scale - 0.5;
                let xf = x.floor();
                Tap {
                    lo: (xf.max(0.0)) as usize,
                    hi: (x.ceil().max(0.0) as usize).min(in_size - 1),
                    lerp: x - xf,
                }
            })
            .collect()
    };
    let xs = taps(img.width, out_w);
    let ys = taps(img.height, out_h);
    let px = |y: usize, x: usize, c: usize| img.data[(y * img.width + x) * 3 + c] as f32;
    let mut out = Vec::with_capacity(out_w * out_h * 3);
    for ty in &ys {
        for tx in &xs {
            for c in 0..3 {
                let tl = px(ty.lo, tx.lo, c);
                let tr = px(ty.lo, tx.hi, c);
                let bl = px(ty.hi, tx.lo, c);
                let br = px(ty.hi, tx.hi, c);
                let top = tl + (tr - tl) * tx.lerp;
                let bottom = bl + (br - bl) * tx.lerp;
                out.push(top + (bottom - top) * ty.lerp);
            }
        }
    }
    out
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// PIL's bilinear (triangle) filter coefficients for one axis, in PIL's fixed point.
fn pil_coefficients(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // bilinear support 1.0 · filterscale
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let ws: Vec<f64> = (xmin..xmax)
                .map(|x| {
                    let t = ((x as f64 - center + 0.5) / filterscale).abs();
                    if t < 1.0 {
                        1.0 - t
                    } else {
                        0.0
                    }
                })
                .collect();
            let total: f64 = ws.iter().sum();
            let k = ws
                .iter()
                .map(|w| {
                    let v = if total != 0.0 { w / total } else { 0.0 };
                    let f = v * (1u64 << PRECISION_BITS) as f64;
                    if f < 0.0 {
                        (f - 0.5) as i32
                    } else {
                        (f + 0.5) as i32
                    }
                })
                .collect();
            (xmin, k)
        })
        .collect()
}

fn clip8(v: i64) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// PIL `Image.resize((w, h), BILINEAR)` of an 8-bit RGB image (antialiased; horizontal pass first,
/// 8-bit intermediate, as Pillow ≥ 4 does).
pub fn resize_pil_bilinear(img: &Rgb8, out_w: usize, out_h: usize) -> Rgb8 {
    let round = 1i64 << (PRECISION_BITS - 1);
    // Horizontal pass.
    let horizontal = if out_w != img.width {
        let coeffs = pil_coefficients(img.width, out_w);
        let mut data = vec![0u8; img.height * out_w * 3];
        for y in 0..img.height {
            for (x, (xmin, k)) in coeffs.iter().enumerate() {
                for c in 0..3 {
                    let mut ss = round;
                    for (i, &w) in k.iter().enumerate() {
                        ss += img.data[(y * img.width + xmin + i) * 3 + c] as i64 * w as i64;
                    }
                    data[(y * out_w + x) * 3 + c] = clip8(ss);
                }
            }
        }
        Rgb8 {
            width: out_w,
            height: img.height,
            data,
        }
    } else {
        img.clone()
    };
    if out_h == horizontal.height {
        return horizontal;
    }
    // Vertical pass.
    let coeffs = pil_coefficients(horizontal.height, out_h);
    let mut data = vec![0u8; out_h * out_w * 3];
    for (y, (ymin, k)) in coeffs.iter().enumerate() {
        for x in 0..out_w {
            for c in 0..3 {
                let mut ss = round;
                for (i, &w) in k.iter().enumerate() {
                    ss += horizontal.data[((ymin + i) * out_w + x) * 3 + c] as i64 * w as i64;
                }
                data[(y * out_w + x) * 3 + c] = clip8(ss);
            }
        }
    }
    Rgb8 {
        width: out_w,
        height: out_h,
        data,
    }
}

/// A small, fast, seedable generator (SplitMix64) for crops and flips.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n ≥ 1).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: usize, h: usize) -> Rgb8 {
        let mut data = Vec::new();
        for y in 0..h {
            for x in 0..w {
                data.extend_from_slice(&[(x * 10) as u8, (y * 20) as u8, 7]);
            }
        }
        Rgb8 {
            width: w,
            height: h,
            data,
        }
    }

    /// TF bilinear on a 4×2 horizontal/vertical ramp upsampled to 8×4, computed by hand:
    /// x_in = (x + 0.5)·0.5 − 0.5 → −0.25 (clamped to column 0), 0.25, 0.75, ...
    #[test]
    fn tf_bilinear_matches_hand_computed_values() {
        let img = gradient(4, 2);
        let out = resize_tf_bilinear(&img, 8, 4);
        let red: Vec<f32> = (0..8).map(|x| out[x * 3]).collect();
        assert_eq!(red, vec![0.0, 2.5, 7.5, 12.5, 17.5, 22.5, 27.5, 30.0]);
        let green: Vec<f32> = (0..4).map(|y| out[(y * 8) * 3 + 1]).collect();
        assert_eq!(green, vec![0.0, 5.0, 15.0, 20.0]);
        assert!(out.iter().skip(2).step_by(3).all(|&b| b == 7.0));
    }

    #[test]
    fn tf_bilinear_downsampling_does_not_antialias() {
        // 4 → 2: x_in = (x + 0.5)·2 − 0.5 = 0.5, 2.5: the mean of columns (0,1) and (2,3) only.
        let img = gradient(4, 1);
        let out = resize_tf_bilinear(&img, 2, 1);
        assert_eq!((out[0], out[3]), (5.0, 25.0));
    }

    /// PIL's `Image.resize((2, 1), BILINEAR)` of the row [0, 10, 20, 30]: support 2, triangle
    /// weights (.75, .75, .25)/1.75 around centres 1 and 3 → 7.14, 22.86 → [7, 23].
    /// (Reference values here and below: Pillow 12, `Image.fromarray(a).resize(size, BILINEAR)`.)
    #[test]
    fn pil_bilinear_antialiases_when_shrinking() {
        let img = gradient(4, 1);
        let out = resize_pil_bilinear(&img, 2, 1);
        let red: Vec<u8> = out.data.iter().step_by(3).copied().collect();
        assert_eq!(red, vec![7, 23]);
        // Both axes: 20×10 → 16×8.
        let out = resize_pil_bilinear(&gradient(20, 10), 16, 8);
        let red: Vec<u8> = out.data.iter().step_by(3).take(16).copied().collect();
        assert_eq!(
            red,
            vec![3, 14, 26, 38, 52, 64, 76, 88, 102, 114, 126, 138, 152, 164, 176, 188]
        );
        let green: Vec<u8> = (0..8).map(|y| out.data[y * 16 * 3 + 1]).collect();
        assert_eq!(green, vec![5, 28, 52, 77, 103, 128, 152, 175]);
    }

    #[test]
    fn pil_bilinear_identity_and_upsampling_are_sane() {
        let img = gradient(5, 3);
        assert_eq!(resize_pil_bilinear(&img, 5, 3), img);
        let up = resize_pil_bilinear(&img, 10, 3);
        let red: Vec<u8> = up.data.iter().step_by(3).take(10).copied().collect();
        // Upsampling by 2: x_in = (x + 0.5)/2, weights 1 − |x_i − center + 0.5|.
        assert_eq!(red, vec![0, 3, 8, 13, 18, 23, 28, 33, 38, 40]);
    }

    #[test]
    fn vtab_transform_normalises_channel_first() {
        let img = gradient(4, 2);
        let t = Transform::vtab(8, [0.5, 0.25, 0.0], [0.5, 0.25, 1.0]);
        let v = t.apply(&img, &mut SplitMix64(0));
        assert_eq!(v.len(), 3 * 8 * 8);
        // red channel, row 0, x = 1: 2.5/255 → (v − 0.5)/0.5
        let expect = (2.5f32 / 255.0 - 0.5) / 0.5;
        assert!((v[1] - expect).abs() < 1e-7);
        // green channel (rows 0 and 20), 2 → 8 rows: y_in = (y + 0.5)/4 − 0.5; row 3 → 0.375 → 7.5,
        // row 1 → −0.125 (clamped) → 0.
        let g3 = v[8 * 8 + 3 * 8];
        assert!((g3 - ((7.5f32 / 255.0 - 0.25) / 0.25)).abs() < 1e-6, "{g3}");
        assert!((v[8 * 8 + 8] - (-1.0)).abs() < 1e-6);
        // blue channel constant 7/255 with mean 0, std 1
        assert!((v[2 * 64 + 17] - 7.0 / 255.0).abs() < 1e-7);
    }

    #[test]
    fn fgvc_eval_resizes_shorter_side_and_center_crops() {
        let img = gradient(20, 10);
        let t = Transform::fgvc_eval(7, [0.0; 3], [1.0; 3]); // shorter side 8, crop 7
        let v = t.apply(&img, &mut SplitMix64(0));
        assert_eq!(v.len(), 3 * 7 * 7);
        assert_eq!(t.output_size(), 7);
        assert_eq!(round_half_even(0.5), 0);
        assert_eq!(round_half_even(1.5), 2);
        assert_eq!(round_half_even(4.5), 4);
        assert_eq!(round_half_even(2.6), 3);
    }

    #[test]
    fn fgvc_train_is_random_but_seeded() {
        let img = gradient(30, 20);
        let t = Transform::fgvc_train(14, [0.0; 3], [1.0; 3]);
        let a = t.apply(&img, &mut SplitMix64(1));
        let b = t.apply(&img, &mut SplitMix64(1));
        assert_eq!(a, b);
        let differs = (2..40).any(|s| t.apply(&img, &mut SplitMix64(s)) != a);
        assert!(differs, "crops/flips never change with the seed");
    }
}
