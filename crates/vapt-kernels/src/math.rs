//! Element-wise and row-wise maths on plain f32 slices, written so the compiler vectorises the
//! loops: `exp`, the normal CDF/PDF behind exact GELU, softmax rows and LayerNorm rows (forward and
//! backward). The kernels in `activation.rs` and `norm.rs` run these inside `multiversion!`
//! functions, compiled for AVX-512 / AVX2 + FMA / the baseline.

/// `exp(x)` for f32 with ~1 ulp error on `[-87.3, 88.7]` (Cephes polynomial), written so the
/// compiler vectorises loops over it.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.336_55, 88.722_83);
    // n = round(x / ln 2) with the 1.5·2²³ trick (round half to even, no branch).
    // The integer n sits in the low mantissa bits of the shifted sum: reading it from the bits
    // keeps the loop in vector registers (an `as i32` cast saturates lane by lane).
    let shifted = x * std::f32::consts::LOG2_E + 12_582_912.0;
    let n = shifted - 12_582_912.0;
    let ni = shifted.to_bits() as i32 - 0x4B40_0000;
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5e-1;
    let y = p * r * r + r + 1.0;
    // 2^n, n in [-126, 128]: build the exponent bits (n = 128 only when x ≥ 88.72, where the
    // product with y < 1 still fits below f32::MAX).
    let half = ni >> 1;
    let a = f32::from_bits(((half + 127) as u32) << 23);
    let b = f32::from_bits(((ni - half + 127) as u32) << 23);
    y * a * b
}

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1/√(2π).
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// `(Φ(x), φ(x))`: the normal CDF (via erf, Abramowitz–Stegun 7.1.26) and density.
#[inline(always)]
fn cdf_pdf(x: f32) -> (f32, f32) {
    let z = x.abs() * FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let poly =
        t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152 + t * 1.061_405_4))));
    let e = exp(-z * z); // = exp(-x²/2)
    let erf_abs = 1.0 - poly * e;
    let erf = if x < 0.0 { -erf_abs } else { erf_abs };
    (0.5 * (1.0 + erf), INV_SQRT_2PI * e)
}

/// `x·Φ(x)`.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    x * cdf_pdf(x).0
}

/// `d/dx [x·Φ(x)] = Φ(x) + x·φ(x)`.
#[inline(always)]
pub fn gelu_grad(x: f32) -> f32 {
    let (cdf, pdf) = cdf_pdf(x);
    cdf + x * pdf
}

/// Lanes of the manual reductions (one AVX-512 register).
const LANES: usize = 16;

#[inline(always)]
fn row_max(row: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            acc[i] = acc[i].max(c[i]);
        }
    }
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    acc.iter().fold(tail, |m, &v| m.max(v))
}

#[inline(always)]
fn row_sum(row: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            acc[i] += c[i];
        }
    }
    let tail: f32 = chunks.remainder().iter().sum();
    acc.iter().sum::<f32>() + tail
}

/// `row = softmax(row·scale)`, in place.
#[inline(always)]
pub fn softmax_row_in_place(row: &mut [f32], scale: f32) {
    // max(x·s) = s·max(x) for s > 0, s·min(x) otherwise; scale is positive in attention.
    let m = if scale >= 0.0 {
        row_max(row) * scale
    } else {
        -row_max_neg(row) * scale
    };
    for v in row.iter_mut() {
        *v = exp(*v * scale - m);
    }
    let inv = 1.0 / row_sum(row);
    for v in row.iter_mut() {
        *v *= inv;
    }
}

#[inline(always)]
fn row_max_neg(row: &[f32]) -> f32 {
    row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(-v))
}

/// Mean and `1/√(var + eps)` of one row (two passes, like Burn's).
#[inline(always)]
pub fn mean_rstd(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = row_sum(x) / n;
    let mut acc = [0.0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            let d = c[i] - mean;
            acc[i] += d * d;
        }
    }
    let tail: f32 = chunks.remainder().iter().map(|v| (v - mean) * (v - mean)).sum();
    let var = (acc.iter().sum::<f32>() + tail) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// `y = (x − mean)·rstd·gamma + beta` for one row.
#[inline(always)]
pub fn layer_norm_row(x: &[f32], y: &mut [f32], gamma: &[f32], beta: &[f32], mean: f32, rstd: f32) {
    for (((o, &v), &g), &b) in y.iter_mut().zip(x).zip(gamma).zip(beta) {
        *o = (v - mean) * rstd * g + b;
    }
}

/// The input gradient of one LayerNorm row, `rstd·(ĝ − mean(ĝ) − x̂·mean(ĝ⊙x̂))` with
/// `ĝ = g⊙gamma`; adds `g⊙x̂` to `dgamma` and `g` to `dbeta`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_grad_row(
    x: &[f32],
    g: &[f32],
    gamma: &[f32],
    mean: f32,
    rstd: f32,
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    let n = x.len() as f32;
    let (mut s1, mut s2) = ([0.0f32; LANES], [0.0f32; LANES]);
    let (mut t1, mut t2) = (0.0f32, 0.0f32);
    let whole = x.len() / LANES * LANES;
    for j in (0..whole).step_by(LANES) {
        for i in 0..LANES {
            let xh = (x[j + i] - mean) * rstd;
            let gh = g[j + i] * gamma[j + i];
            s1[i] += gh;
            s2[i] += gh * xh;
        }
    }
    for j in whole..x.len() {
        let xh = (x[j] - mean) * rstd;
        let gh = g[j] * gamma[j];
        t1 += gh;
        t2 += gh * xh;
    }
    let m1 = (s1.iter().sum::<f32>() + t1) / n;
    let m2 = (s2.iter().sum::<f32>() + t2) / n;
    for j in 0..x.len() {
        let xh = (x[j] - mean) * rstd;
        dx[j] = rstd * (g[j] * gamma[j] - m1 - xh * m2);
        dgamma[j] += g[j] * xh;
        dbeta[j] += g[j];
    }
}

/// `g ← scale · y ⊙ (g − Σ g⊙y)` for one row, in place (the backward of
/// [`softmax_row_in_place`]).
#[inline(always)]
pub fn softmax_grad_row_in_place(y: &[f32], g: &mut [f32], scale: f32) {
    let mut acc = [0.0f32; LANES];
    let mut yc = y.chunks_exact(LANES);
    let mut gc = g.chunks_exact(LANES);
    for (a, b) in (&mut yc).zip(&mut gc) {
        for i in 0..LANES {
            acc[i] += a[i] * b[i];
        }
    }
    let tail: f32 = yc
        .remainder()
        .iter()
        .zip(gc.remainder())
        .map(|(a, b)| a * b)
        .sum();
    let dot = acc.iter().sum::<f32>() + tail;
    for (o, &yv) in g.iter_mut().zip(y) {
        *o = scale * yv * (*o - dot);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_is_within_two_ulp_of_std() {
        let mut worst = 0.0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (super::exp(x), x.exp());
            worst = worst.max(((a - b) / b).abs());
            x += 0.0137;
        }
        assert!(worst < 2.5e-7, "worst relative error {worst}");
        assert_eq!(super::exp(-200.0), super::exp(-87.336_55));
        assert!(super::exp(200.0).is_finite());
    }
}
