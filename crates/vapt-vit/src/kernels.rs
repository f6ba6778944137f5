//! Fused CPU kernels for the Flex backend, forward and backward: the linear layer and the attention
//! core (`kernels/linalg.rs`, on the `gemm` crate), exact GELU, scaled softmax, LayerNorm, the
//! attention head split/merge copy (here), dropout (`kernels/dropout.rs`), VAPT's channel-wise conv
//! (`kernels/conv.rs`) and the token-range copies and Dropout2d scaling around prompts
//! (`kernels/tokens.rs`).
//!
//! Burn 0.21's Flex backend computes GELU with a scalar, single-threaded `erff` per element,
//! softmax as five separate tensor ops, every matrix product into a zero-filled buffer that is then
//! copied again, and dropout masks with a single-threaded generator; in training, autodiff adds the
//! backward of each. `docs/benchmarks.md` has the profile. The functions here keep the model
//! generic over `B: Backend`: for `Flex` and `Autodiff<Flex>` on f32 data they run one fused,
//! vectorised (AVX-512 / AVX2 picked at run time), multi-threaded (rayon) pass per direction and
//! register their own backward, which computes only the gradients of tracked inputs; on every
//! other backend, dtype or shape they fall back to Burn's own ops. The GELU here uses the
//! Abramowitz–Stegun 7.1.26 erf (absolute error ≤ 1.5·10⁻⁷), the same approximation PyTorch's
//! vectorised CPU GELU uses.
//!
//! Built with the `cpu-kernels` feature (default); without it only the fallbacks exist.

use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// Exact (erf) GELU, `x·Φ(x)`, fused on Flex.
pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    #[cfg(feature = "cpu-kernels")]
    let x = match flex::gelu(x) {
        Ok(y) => return y,
        Err(x) => x,
    };
    burn::tensor::activation::gelu(x)
}

/// `softmax(x · scale)` over the last dimension, fused on Flex.
pub fn scaled_softmax<B: Backend, const D: usize>(x: Tensor<B, D>, scale: f32) -> Tensor<B, D> {
    #[cfg(feature = "cpu-kernels")]
    let x = match flex::scaled_softmax(x, scale) {
        Ok(y) => return y,
        Err(x) => x,
    };
    softmax(x.mul_scalar(scale), D - 1)
}

/// LayerNorm over the last dimension, `(x − μ)/√(σ² + eps) · gamma + beta`, fused on Flex (forward
/// and the backward for `x`, `gamma` and `beta`). Same maths as Burn's `LayerNorm`.
pub fn layer_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, D> {
    #[cfg(feature = "cpu-kernels")]
    let (x, gamma, beta) = match flex::layer_norm(x, gamma, beta, eps as f32) {
        Ok(y) => return y,
        Err(back) => back,
    };
    let d = D - 1;
    let mean = x.clone().mean_dim(d);
    let centered = x - mean;
    let var = centered.clone().square().mean_dim(d);
    let normed = centered / var.add_scalar(eps).sqrt();
    normed * gamma.unsqueeze::<D>() + beta.unsqueeze::<D>()
}

/// `x.swap_dims(1, 2)` materialised in the new order (a contiguous copy): the attention head
/// split `[B, T, H, hd] → [B, H, T, hd]` and merge. On Flex it is a row copy instead of Burn's
/// element-by-element strided iteration, and its backward is the same copy of the gradient.
pub fn swap_dims_12<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    #[cfg(feature = "cpu-kernels")]
    let x = match flex::swap12(x) {
        Ok(y) => return y,
        Err(x) => x,
    };
    x.swap_dims(1, 2)
}

/// `x·weight + bias` (`x` `[M, K]`, `weight` `[K, N]`), Burn's `linear`. On Flex the bias is the
/// product's starting value and the output is written once (see `linalg`); the backward computes
/// only the gradients that are tracked.
pub fn linear<B: Backend>(x: Tensor<B, 2>, weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) -> Tensor<B, 2> {
    #[cfg(feature = "cpu-kernels")]
    let (x, weight, bias) = match bias {
        Some(b) => match linalg::linear(x, weight, b) {
            Ok(y) => return y,
            Err((x, w, b)) => (x, w, Some(b)),
        },
        None => (x, weight, None),
    };
    burn::tensor::module::linear(x, weight, bias)
}

/// The attention core, `softmax(q·kᵀ·scale)·v` for each of `heads` heads, on `[B, Tq, heads·hd]`
/// queries and `[B, Tk, heads·hd]` keys and values; returns the context `[B, Tq, heads·hd]` (heads
/// merged).
///
/// On Flex one task per (batch, head) computes the scores, the softmax and the product with `v` on
/// a block that stays in cache, reading q/k/v and writing the context in place (no head split or
/// merge copies); the backward likewise. Elsewhere it is the usual split → matmul → softmax →
/// matmul → merge.
pub fn attention<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    heads: usize,
    scale: f32,
) -> Tensor<B, 3> {
    #[cfg(feature = "cpu-kernels")]
    let (q, k, v) = match linalg::attention(q, k, v, heads, scale) {
        Ok(ctx) => return ctx,
        Err(back) => back,
    };
    attention_context(attention_probs(q, k, heads, scale), v)
}

/// `[B, T, heads·hd]` → contiguous `[B, heads, T, hd]`.
fn split_heads<B: Backend>(y: Tensor<B, 3>, heads: usize) -> Tensor<B, 4> {
    let [b, t, d] = y.dims();
    swap_dims_12(y.reshape([b, t, heads, d / heads]))
}

/// The attention probabilities `softmax(q·kᵀ·scale)` per head, `[B, heads, Tq, Tk]`, from `q`
/// `[B, Tq, heads·hd]` and `k` `[B, Tk, heads·hd]`: the first half of [`attention`] as separate
/// ops, for callers that keep or drop out the probabilities.
pub fn attention_probs<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    heads: usize,
    scale: f32,
) -> Tensor<B, 4> {
    // The scaling is fused into the softmax (one pass on Flex).
    scaled_softmax(
        split_heads(q, heads).matmul(split_heads(k, heads).swap_dims(2, 3)),
        scale,
    )
}

/// `probs·v` per head with the heads merged: `[B, Tq, heads·hd]` from `probs` `[B, heads, Tq, Tk]`
/// and `v` `[B, Tk, heads·hd]`; the second half of [`attention`].
pub fn attention_context<B: Backend>(probs: Tensor<B, 4>, v: Tensor<B, 3>) -> Tensor<B, 3> {
    let [b, heads, tq, _] = probs.dims();
    let d = v.dims()[2];
    swap_dims_12(probs.matmul(split_heads(v, heads))).reshape([b, tq, d])
}

/// Depth-wise cross-correlation on a channels-last grid: `x` `[B, H, W, C]`, `kernel` `[1 | C, K,
/// K]` (one kernel shared by all channels, or one per channel), stride 1, zero padding `padding`
/// on every side, no bias; returns `[B, H + 2p − K + 1, W + 2p − K + 1, C]`.
///
/// On Flex one pass per output row (forward) or input row (backward), vectorised over the
/// channels; elsewhere a sum of K² shifted windows. The caller checks that the kernel fits.
pub fn depthwise_conv<B: Backend>(x: Tensor<B, 4>, kernel: Tensor<B, 3>, padding: usize) -> Tensor<B, 4> {
    #[cfg(feature = "cpu-kernels")]
    let (x, kernel) = match conv::depthwise(x, kernel, padding) {
        Ok(y) => return y,
        Err(back) => back,
    };
    shifted_windows_conv(x, kernel, padding)
}

/// [`depthwise_conv`] as Burn ops: a sum of K² shifted windows, each scaled by its tap.
fn shifted_windows_conv<B: Backend>(x: Tensor<B, 4>, kernel: Tensor<B, 3>, padding: usize) -> Tensor<B, 4> {
    let [b, h, w, c] = x.dims();
    let [kc, k, _] = kernel.dims();
    let p = padding;
    let x = if p > 0 {
        let device = x.device();
        let side = Tensor::zeros([b, h, p, c], &device);
        let wide = Tensor::cat(vec![side.clone(), x, side], 2);
        let top = Tensor::zeros([b, p, w + 2 * p, c], &device);
        Tensor::cat(vec![top.clone(), wide, top], 1)
    } else {
        x
    };
    let (ho, wo) = (h + 2 * p + 1 - k, w + 2 * p + 1 - k);
    // [kc, K, K] → taps [K, K, kc], each broadcast over the channels.
    let taps = kernel.permute([1, 2, 0]);
    let mut acc: Option<Tensor<B, 4>> = None;
    for dy in 0..k {
        for dx in 0..k {
            let tap = taps
                .clone()
                .slice([dy..dy + 1, dx..dx + 1, 0..kc])
                .reshape([1, 1, 1, kc]);
            let term = x.clone().slice([0..b, dy..dy + ho, dx..dx + wo, 0..c]) * tap;
            acc = Some(match acc {
                Some(a) => a + term,
                None => term,
            });
        }
    }
    acc.unwrap_or_else(|| unreachable!("kernel side is validated to be >= 1"))
}

/// Tokens `start..start + len` of `[B, T, D]`: `x.narrow(1, start, len)`, materialised. On Flex its
/// backward writes the full-size gradient in one pass (Burn's slices a zero tensor).
pub fn narrow_tokens<B: Backend>(x: Tensor<B, 3>, start: usize, len: usize) -> Tensor<B, 3> {
    #[cfg(feature = "cpu-kernels")]
    let x = match tokens::narrow(x, start, len) {
        Ok(y) => return y,
        Err(x) => x,
    };
    x.narrow(1, start, len)
}

/// `x` `[B, T, D]` with tokens `start..start + Np` replaced by `p` `[B, Np, D]` (deep prompts);
/// one copy on Flex, forward and backward.
pub fn replace_tokens<B: Backend>(x: Tensor<B, 3>, start: usize, p: Tensor<B, 3>) -> Tensor<B, 3> {
    #[cfg(feature = "cpu-kernels")]
    let (x, p) = match tokens::replace(x, start, p) {
        Ok(y) => return y,
        Err(back) => back,
    };
    let [_, t, _] = x.dims();
    let end = start + p.dims()[1];
    let mut parts = Vec::with_capacity(3);
    if start > 0 {
        parts.push(x.clone().narrow(1, 0, start));
    }
    parts.push(p);
    if end < t {
        parts.push(x.narrow(1, end, t - end));
    }
    Tensor::cat(parts, 1)
}

/// `x` `[B, S, C]` with every (sample, channel) map multiplied by `scale` `[B, C]` (a Dropout2d
/// mask). `scale` is a constant: no gradient flows to it. One pass on Flex, forward and backward.
pub fn scale_channels<B: Backend>(x: Tensor<B, 3>, scale: Tensor<B, 2>) -> Tensor<B, 3> {
    #[cfg(feature = "cpu-kernels")]
    let (x, scale) = match tokens::scale_channels(x, scale) {
        Ok(y) => return y,
        Err(back) => back,
    };
    x * scale.unsqueeze_dim::<3>(1)
}

/// Burn's `Dropout::forward` with probability `p`: identity outside training (no autodiff) or for
/// `p = 0`. On Flex the mask is a counter-based hash drawn in the multiply's pass and recomputed by
/// the backward (see `dropout`); elsewhere Burn's `Dropout`.
pub fn dropout<B: Backend, const D: usize>(x: Tensor<B, D>, p: f64) -> Tensor<B, D> {
    if p == 0.0 || !B::ad_enabled(&x.device()) {
        return x;
    }
    #[cfg(feature = "cpu-kernels")]
    let x = match dropout::dropout(x, p) {
        Ok(y) => return y,
        Err(x) => x,
    };
    burn::nn::DropoutConfig::new(p).init().forward(x)
}

/// Whether the fused kernels serve backend `B` (f32 tensors assumed).
pub fn fused_on<B: Backend>() -> bool {
    #[cfg(feature = "cpu-kernels")]
    {
        flex::serves::<B>()
    }
    #[cfg(not(feature = "cpu-kernels"))]
    {
        false
    }
}

/// The element-wise and row-wise maths, on plain slices.
#[cfg(feature = "cpu-kernels")]
pub(crate) mod math {
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
}

#[cfg(feature = "cpu-kernels")]
mod conv;
#[cfg(feature = "cpu-kernels")]
mod dropout;
#[cfg(feature = "cpu-kernels")]
mod linalg;
#[cfg(feature = "cpu-kernels")]
mod tokens;

#[cfg(feature = "cpu-kernels")]
mod flex {
    //! The Flex / Autodiff<Flex> paths: downcast the tensor primitive, run a slice kernel.

    use std::any::Any;

    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
    use burn::backend::flex::{Flex, FlexTensor};
    use burn::backend::Autodiff;
    use burn::tensor::backend::{Backend, BackendTypes};
    use burn::tensor::ops::ActivationOps;
    use burn::tensor::{DType, Tensor, TensorPrimitive};
    use rayon::prelude::*;

    use super::math;

    type AdTensor = <Autodiff<Flex> as BackendTypes>::FloatTensorPrimitive;

    /// Elements per parallel task of the element-wise kernels.
    const CHUNK: usize = 1 << 14;

    /// Moves `a` into a `T` when they are the same type; gives it back otherwise.
    fn cast<A: 'static, T: 'static>(a: A) -> Result<T, A> {
        let mut slot = Some(a);
        if let Some(t) = (&mut slot as &mut dyn Any)
            .downcast_mut::<Option<T>>()
            .and_then(Option::take)
        {
            return Ok(t);
        }
        match slot {
            Some(a) => Err(a),
            None => unreachable!("the slot is emptied only by a successful downcast"),
        }
    }

    pub fn serves<B: Backend>() -> bool {
        use std::any::TypeId;
        let t = TypeId::of::<B::FloatTensorPrimitive>();
        t == TypeId::of::<FlexTensor>() || t == TypeId::of::<AdTensor>()
    }

    /// Contiguous f32 slice of a Flex tensor, if it has one.
    pub(super) fn f32_slice(t: &FlexTensor) -> Option<&[f32]> {
        if t.dtype() != DType::F32 {
            return None;
        }
        t.as_slice::<f32>()
    }

    /// The values of a tensor that is contiguous f32 by construction (a kernel's output or state,
    /// or a gradient after [`dense`]).
    pub(super) fn values(t: &FlexTensor) -> &[f32] {
        f32_slice(t).unwrap_or_else(|| unreachable!("kernel tensors are contiguous f32"))
    }

    /// A Flex tensor owning `data` (no copy).
    pub(super) fn tensor(data: Vec<f32>, shape: impl Into<burn::tensor::Shape>) -> FlexTensor {
        FlexTensor::from_data(burn::tensor::TensorData::new(data, shape))
    }

    /// The element-wise sum of per-task partial sums (each `len` long), added in task order: the
    /// same rounding on every run, however rayon split the work.
    pub(super) fn sum_partials(partials: Vec<Vec<f32>>, len: usize) -> Vec<f32> {
        let mut total = vec![0.0f32; len];
        for p in &partials {
            for (t, v) in total.iter_mut().zip(p) {
                *t += v;
            }
        }
        total
    }

    fn new_like(t: &FlexTensor, data: Vec<f32>) -> FlexTensor {
        tensor(data, t.layout().shape().clone())
    }

    fn zeroed(n: usize) -> Vec<f32> {
        vec![0.0; n]
    }

    /// Defines `fn $name(..)` that runs `$body` compiled for AVX-512F, for AVX2 + FMA, or for the
    /// baseline, whichever is the widest the CPU offers (checked at run time; cached by std).
    macro_rules! multiversion {
        ($vis:vis fn $name:ident($($p:ident: $t:ty),* $(,)?) $body:block) => {
            $vis fn $name($($p: $t),*) {
                #[inline(always)]
                fn body($($p: $t),*) $body
                #[cfg(target_arch = "x86_64")]
                #[target_feature(enable = "avx512f")]
                unsafe fn v4($($p: $t),*) {
                    body($($p),*)
                }
                #[cfg(target_arch = "x86_64")]
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3($($p: $t),*) {
                    body($($p),*)
                }
                #[cfg(target_arch = "x86_64")]
                {
                    if std::arch::is_x86_feature_detected!("avx512f") {
                        // SAFETY: the CPU has AVX-512F.
                        return unsafe { v4($($p),*) };
                    }
                    if std::arch::is_x86_feature_detected!("avx2")
                        && std::arch::is_x86_feature_detected!("fma")
                    {
                        // SAFETY: the CPU has AVX2 and FMA.
                        return unsafe { v3($($p),*) };
                    }
                }
                body($($p),*)
            }
        };
    }

    multiversion!(
        fn gelu_chunk(x: &[f32], y: &mut [f32]) {
            for (o, &v) in y.iter_mut().zip(x) {
                *o = math::gelu(v);
            }
        }
    );

    multiversion!(
        fn gelu_grad_chunk(x: &[f32], g: &[f32], dx: &mut [f32]) {
            for ((o, &v), &gv) in dx.iter_mut().zip(x).zip(g) {
                *o = gv * math::gelu_grad(v);
            }
        }
    );

    multiversion!(
        pub(super) fn softmax_rows_in_place(x: &mut [f32], len: usize, scale: f32) {
            for row in x.chunks_exact_mut(len) {
                math::softmax_row_in_place(row, scale);
            }
        }
    );

    multiversion!(
        pub(super) fn softmax_grad_rows_in_place(y: &[f32], g: &mut [f32], len: usize, scale: f32) {
            for (yr, gr) in y.chunks_exact(len).zip(g.chunks_exact_mut(len)) {
                math::softmax_grad_row_in_place(yr, gr, scale);
            }
        }
    );

    fn gelu_forward(x: &FlexTensor) -> Option<FlexTensor> {
        let xs = f32_slice(x)?;
        let mut y = zeroed(xs.len());
        y.par_chunks_mut(CHUNK)
            .zip(xs.par_chunks(CHUNK))
            .for_each(|(o, i)| gelu_chunk(i, o));
        Some(new_like(x, y))
    }

    fn gelu_backward(x: &FlexTensor, grad: FlexTensor) -> FlexTensor {
        let grad = dense(grad);
        let (Some(xs), Some(gs)) = (f32_slice(x), f32_slice(&grad)) else {
            return <Flex as ActivationOps<Flex>>::gelu_backward(x.clone(), grad);
        };
        let mut dx = zeroed(xs.len());
        dx.par_chunks_mut(CHUNK)
            .zip(xs.par_chunks(CHUNK).zip(gs.par_chunks(CHUNK)))
            .for_each(|(o, (i, g))| gelu_grad_chunk(i, g, o));
        new_like(x, dx)
    }

    /// Rows per parallel task of the row-wise kernels: about `CHUNK` elements.
    pub(super) fn rows_per_task(len: usize) -> usize {
        (CHUNK / len.max(1)).max(1)
    }

    fn softmax_forward(x: &FlexTensor, scale: f32) -> Option<FlexTensor> {
        let xs = f32_slice(x)?;
        let dims = x.layout().shape().clone();
        let len = *dims.as_slice().last()?;
        if len == 0 {
            return None;
        }
        let mut y = xs.to_vec();
        let step = rows_per_task(len) * len;
        y.par_chunks_mut(step)
            .for_each(|o| softmax_rows_in_place(o, len, scale));
        Some(new_like(x, y))
    }

    fn softmax_backward(y: &FlexTensor, grad: FlexTensor, scale: f32) -> FlexTensor {
        let grad = dense(grad);
        let len = y.layout().shape().as_slice().last().copied().unwrap_or(1).max(1);
        let (ys, gs) = (values(y), values(&grad));
        let mut dx = gs.to_vec();
        let step = rows_per_task(len) * len;
        dx.par_chunks_mut(step)
            .zip(ys.par_chunks(step))
            .for_each(|(o, yc)| softmax_grad_rows_in_place(yc, o, len, scale));
        new_like(y, dx)
    }

    multiversion!(
        fn layer_norm_rows(
            x: &[f32],
            y: &mut [f32],
            gamma: &[f32],
            beta: &[f32],
            stats: &mut [[f32; 2]],
            eps: f32,
        ) {
            let len = gamma.len();
            for ((xr, yr), st) in x
                .chunks_exact(len)
                .zip(y.chunks_exact_mut(len))
                .zip(stats.iter_mut())
            {
                let (mean, rstd) = math::mean_rstd(xr, eps);
                math::layer_norm_row(xr, yr, gamma, beta, mean, rstd);
                *st = [mean, rstd];
            }
        }
    );

    multiversion!(
        fn layer_norm_grad_rows(
            x: &[f32],
            g: &[f32],
            gamma: &[f32],
            stats: &[[f32; 2]],
            dx: &mut [f32],
            dgb: &mut [f32],
        ) {
            let len = gamma.len();
            let (dgamma, dbeta) = dgb.split_at_mut(len);
            for (((xr, gr), dr), st) in x
                .chunks_exact(len)
                .zip(g.chunks_exact(len))
                .zip(dx.chunks_exact_mut(len))
                .zip(stats)
            {
                math::layer_norm_grad_row(xr, gr, gamma, st[0], st[1], dr, dgamma, dbeta);
            }
        }
    );

    /// What the LayerNorm backward keeps: the input, gamma and per-row (mean, rstd).
    #[derive(Clone, Debug)]
    struct LayerNormState {
        x: FlexTensor,
        gamma: FlexTensor,
        stats: std::sync::Arc<Vec<[f32; 2]>>,
    }

    /// Forward on contiguous f32 data: the output and the row statistics.
    fn layer_norm_forward(
        x: &FlexTensor,
        gamma: &FlexTensor,
        beta: &FlexTensor,
        eps: f32,
    ) -> Option<(FlexTensor, Vec<[f32; 2]>)> {
        let (xs, gs, bs) = (f32_slice(x)?, f32_slice(gamma)?, f32_slice(beta)?);
        let len = gs.len();
        if len == 0 || bs.len() != len || x.layout().shape().as_slice().last() != Some(&len) {
            return None;
        }
        let rows = xs.len() / len;
        let mut y = zeroed(xs.len());
        let mut stats = vec![[0.0f32; 2]; rows];
        let per = rows_per_task(len);
        y.par_chunks_mut(per * len)
            .zip(xs.par_chunks(per * len))
            .zip(stats.par_chunks_mut(per))
            .for_each(|((o, i), st)| layer_norm_rows(i, o, gs, bs, st, eps));
        Some((new_like(x, y), stats))
    }

    /// Backward: `(dx, dgamma, dbeta)`.
    fn layer_norm_backward(state: &LayerNormState, grad: FlexTensor) -> (FlexTensor, FlexTensor, FlexTensor) {
        let grad = dense(grad);
        let (xs, gs, gamma) = (values(&state.x), values(&grad), values(&state.gamma));
        let len = gamma.len();
        let per = rows_per_task(len);
        let mut dx = zeroed(xs.len());
        // One (dgamma, dbeta) accumulator per task, summed afterwards.
        let partial: Vec<Vec<f32>> = dx
            .par_chunks_mut(per * len)
            .zip(xs.par_chunks(per * len).zip(gs.par_chunks(per * len)))
            .zip(state.stats.par_chunks(per))
            .map(|((o, (xc, gc)), st)| {
                let mut dgb = vec![0.0f32; 2 * len];
                layer_norm_grad_rows(xc, gc, gamma, st, o, &mut dgb);
                dgb
            })
            .collect();
        let mut dgb = sum_partials(partial, 2 * len);
        let dbeta = dgb.split_off(len);
        (new_like(&state.x, dx), tensor(dgb, [len]), tensor(dbeta, [len]))
    }

    #[derive(Debug)]
    struct LayerNormOp;

    impl Backward<Flex, 3> for LayerNormOp {
        type State = LayerNormState;

        fn backward(self, ops: Ops<LayerNormState, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
            let grad = grads.consume::<Flex>(&ops.node);
            let [px, pg, pb] = ops.parents;
            let (dx, dgamma, dbeta) = layer_norm_backward(&ops.state, grad);
            for (parent, g) in [(px, dx), (pg, dgamma), (pb, dbeta)] {
                if let Some(node) = parent {
                    grads.register::<Flex>(node.id, g);
                }
            }
        }
    }

    /// The Flex / Autodiff<Flex> LayerNorm; gives the inputs back on any other backend or layout.
    #[allow(clippy::type_complexity)]
    pub fn layer_norm<B: Backend, const D: usize>(
        x: Tensor<B, D>,
        gamma: Tensor<B, 1>,
        beta: Tensor<B, 1>,
        eps: f32,
    ) -> Result<Tensor<B, D>, (Tensor<B, D>, Tensor<B, 1>, Tensor<B, 1>)> {
        apply3(
            (x, gamma, beta),
            |x, gamma, beta| {
                let (y, stats) = layer_norm_forward(x, gamma, beta, eps)?;
                let state = LayerNormState {
                    x: x.clone(),
                    gamma: gamma.clone(),
                    stats: std::sync::Arc::new(stats),
                };
                Some((y, state))
            },
            LayerNormOp,
        )
    }

    /// The three-input form of [`apply`] (see [`apply_n`]).
    #[allow(clippy::type_complexity)]
    pub(super) fn apply3<B, const D0: usize, const D1: usize, const D2: usize, const DO: usize, S, BO>(
        (x0, x1, x2): (Tensor<B, D0>, Tensor<B, D1>, Tensor<B, D2>),
        kernel: impl Fn(&FlexTensor, &FlexTensor, &FlexTensor) -> Option<(FlexTensor, S)>,
        op: BO,
    ) -> Result<Tensor<B, DO>, (Tensor<B, D0>, Tensor<B, D1>, Tensor<B, D2>)>
    where
        B: Backend,
        S: Clone + Send + std::fmt::Debug + 'static,
        BO: Backward<Flex, 3, State = S>,
    {
        match apply_n::<B, 3, S, BO>(
            [prim(x0), prim(x1), prim(x2)],
            dense,
            |[a, b, c]| kernel(a, b, c),
            op,
        ) {
            Ok(y) => Ok(rebuild(y)),
            Err([a, b, c]) => Err((rebuild(a), rebuild(b), rebuild(c))),
        }
    }

    /// [`apply_n`] for one input, after `prepare` (usually [`dense`]).
    pub(super) fn apply1<B, const D: usize, const DO: usize, S, BO>(
        x: Tensor<B, D>,
        prepare: impl Fn(FlexTensor) -> FlexTensor,
        kernel: impl Fn(&FlexTensor) -> Option<(FlexTensor, S)>,
        op: BO,
    ) -> Result<Tensor<B, DO>, Tensor<B, D>>
    where
        B: Backend,
        S: Clone + Send + std::fmt::Debug + 'static,
        BO: Backward<Flex, 1, State = S>,
    {
        match apply_n::<B, 1, S, BO>([prim(x)], prepare, |[a]| kernel(a), op) {
            Ok(y) => Ok(rebuild(y)),
            Err([a]) => Err(rebuild(a)),
        }
    }

    /// The two-input form of [`apply`] (see [`apply_n`]).
    #[allow(clippy::type_complexity)]
    pub(super) fn apply2<B, const D0: usize, const D1: usize, const DO: usize, S, BO>(
        (x0, x1): (Tensor<B, D0>, Tensor<B, D1>),
        kernel: impl Fn(&FlexTensor, &FlexTensor) -> Option<(FlexTensor, S)>,
        op: BO,
    ) -> Result<Tensor<B, DO>, (Tensor<B, D0>, Tensor<B, D1>)>
    where
        B: Backend,
        S: Clone + Send + std::fmt::Debug + 'static,
        BO: Backward<Flex, 2, State = S>,
    {
        match apply_n::<B, 2, S, BO>([prim(x0), prim(x1)], dense, |[a, b]| kernel(a, b), op) {
            Ok(y) => Ok(rebuild(y)),
            Err([a, b]) => Err((rebuild(a), rebuild(b))),
        }
    }

    /// Prepares `N` primitives (e.g. [`dense`]), runs `kernel` (which returns the output and the backward state) on
    /// Flex or Autodiff<Flex> and, under autodiff, registers `op` for the inputs that are tracked;
    /// gives the primitives back on any other backend or when the kernel declines.
    fn apply_n<B, const N: usize, S, BO>(
        prims: [B::FloatTensorPrimitive; N],
        prepare: impl Fn(FlexTensor) -> FlexTensor,
        kernel: impl Fn([&FlexTensor; N]) -> Option<(FlexTensor, S)>,
        op: BO,
    ) -> Result<B::FloatTensorPrimitive, [B::FloatTensorPrimitive; N]>
    where
        B: Backend,
        S: Clone + Send + std::fmt::Debug + 'static,
        BO: Backward<Flex, N, State = S>,
    {
        if !serves::<B>() {
            return Err(prims);
        }
        let flex = prims.map(cast::<_, FlexTensor>);
        if flex.iter().all(Result::is_ok) {
            let ts = flex.map(|r| prepare(r.unwrap_or_else(|_| unreachable!("all inputs are Flex"))));
            return match kernel(ts.each_ref()) {
                Some((y, _)) => Ok(back(y)),
                None => Err(ts.map(back)),
            };
        }
        let ad = flex.map(unify).map(cast::<_, AdTensor>);
        if !ad.iter().all(Result::is_ok) {
            return Err(ad.map(unify_ad));
        }
        let ad = ad.map(|r| {
            let mut t = r.unwrap_or_else(|_| unreachable!("all inputs are Autodiff<Flex>"));
            t.primitive = prepare(t.primitive);
            t
        });
        let Some((y, state)) = kernel(ad.each_ref().map(|t| &t.primitive)) else {
            return Err(ad.map(back));
        };
        let nodes = ad.each_ref().map(|t| t.node.clone());
        let out = match op.prepare::<NoCheckpointing>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(state, y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        Ok(back(out))
    }

    fn prim<B: Backend, const D: usize>(t: Tensor<B, D>) -> B::FloatTensorPrimitive {
        // A quantized tensor is dequantized here, as Burn's own LayerNorm does.
        t.into_primitive().tensor()
    }

    fn rebuild<B: Backend, const D: usize>(p: B::FloatTensorPrimitive) -> Tensor<B, D> {
        Tensor::from_primitive(TensorPrimitive::Float(p))
    }

    /// A primitive that was (maybe) cast to `FlexTensor`, as the original type again.
    fn unify<P: 'static>(r: Result<FlexTensor, P>) -> P {
        r.map_or_else(|p| p, back)
    }

    /// A primitive that was (maybe) cast to the autodiff tensor, as the original type again.
    fn unify_ad<P: 'static>(r: Result<AdTensor, P>) -> P {
        r.map_or_else(|p| p, back)
    }

    /// The elements of a view with shape `dims` and element strides `strides` (from `base`) in
    /// row-major order: whole rows copied when the last stride is 1.
    fn gather4(src: &[f32], base: usize, dims: [usize; 4], strides: [usize; 4]) -> Vec<f32> {
        let [a, b, c, d] = dims;
        let [s0, s1, s2, s3] = strides;
        let mut out = zeroed(a * b * c * d);
        if d == 0 {
            return out;
        }
        let rows_per = rows_per_task(d);
        out.par_chunks_mut(rows_per * d)
            .enumerate()
            .for_each(|(task, chunk)| {
                for (k, row) in chunk.chunks_exact_mut(d).enumerate() {
                    let r = task * rows_per + k;
                    let (ia, rem) = (r / (b * c), r % (b * c));
                    let (ib, ic) = (rem / c, rem % c);
                    let start = base + ia * s0 + ib * s1 + ic * s2;
                    if s3 == 1 {
                        row.copy_from_slice(&src[start..start + d]);
                    } else {
                        for (j, o) in row.iter_mut().enumerate() {
                            *o = src[start + j * s3];
                        }
                    }
                }
            });
        out
    }

    /// Shape and strides of an f32 view of rank ≤ 4 with non-negative strides, padded to rank 4.
    fn view4(x: &FlexTensor) -> Option<([usize; 4], [usize; 4])> {
        let layout = x.layout();
        let dims = layout.shape().as_slice();
        let st = layout.strides();
        if x.dtype() != DType::F32 || dims.len() > 4 || st.iter().any(|&s| s < 0) {
            return None;
        }
        let pad = 4 - dims.len();
        let (mut d4, mut s4) = ([1usize; 4], [0usize; 4]);
        for i in 0..dims.len() {
            d4[pad + i] = dims[i];
            s4[pad + i] = st[i] as usize;
        }
        Some((d4, s4))
    }

    /// `t` with its own contiguous buffer (a row copy for strided views; Flex's copy otherwise).
    pub(super) fn dense(t: FlexTensor) -> FlexTensor {
        if t.dtype() != DType::F32 || f32_slice(&t).is_some() {
            return t;
        }
        match view4(&t) {
            Some((d4, s4)) => {
                let data = gather4(t.storage(), t.layout().start_offset(), d4, s4);
                new_like(&t, data)
            }
            None => t.to_contiguous(),
        }
    }

    /// `[A, B, C, D]` (any non-negative strides) → contiguous `[A, C, B, D]`.
    fn swap12_copy(x: &FlexTensor) -> Option<FlexTensor> {
        if x.layout().shape().num_dims() != 4 {
            return None;
        }
        let ([a, b, c, d], [s0, s1, s2, s3]) = view4(x)?;
        let out = gather4(
            x.storage(),
            x.layout().start_offset(),
            [a, c, b, d],
            [s0, s2, s1, s3],
        );
        Some(tensor(out, [a, c, b, d]))
    }

    #[derive(Debug)]
    struct Swap12Op;

    impl Backward<Flex, 1> for Swap12Op {
        type State = ();

        fn backward(self, ops: Ops<(), 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            unary::<Flex, _>(ops.parents, ops.node, grads, |g| match swap12_copy(&g) {
                Some(t) => t,
                None => g.transpose(1, 2).to_contiguous(),
            });
        }
    }

    pub fn swap12<B: Backend>(x: Tensor<B, 4>) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
        // The copy reads any strides itself: no `dense` first.
        apply1(x, |t| t, |t| Some((swap12_copy(t)?, ())), Swap12Op)
    }

    #[derive(Debug)]
    struct GeluOp;

    impl Backward<Flex, 1> for GeluOp {
        type State = FlexTensor;

        fn backward(self, ops: Ops<FlexTensor, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let x = ops.state;
            unary::<Flex, _>(ops.parents, ops.node, grads, |g| gelu_backward(&x, g));
        }
    }

    #[derive(Debug)]
    struct SoftmaxOp(f32);

    impl Backward<Flex, 1> for SoftmaxOp {
        type State = FlexTensor;

        fn backward(self, ops: Ops<FlexTensor, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let y = ops.state;
            let scale = self.0;
            unary::<Flex, _>(ops.parents, ops.node, grads, |g| softmax_backward(&y, g, scale));
        }
    }

    /// The inverse cast, for a value that came from `B::FloatTensorPrimitive`.
    fn back<T: 'static, P: 'static>(t: T) -> P {
        match cast::<T, P>(t) {
            Ok(p) => p,
            Err(_) => unreachable!("the primitive was downcast from this type"),
        }
    }

    pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Result<Tensor<B, D>, Tensor<B, D>> {
        // The backward needs the input.
        apply1(x, dense, |t| Some((gelu_forward(t)?, t.clone())), GeluOp)
    }

    pub fn scaled_softmax<B: Backend, const D: usize>(
        x: Tensor<B, D>,
        scale: f32,
    ) -> Result<Tensor<B, D>, Tensor<B, D>> {
        // The backward needs the output.
        apply1(
            x,
            dense,
            |t| softmax_forward(t, scale).map(|y| (y.clone(), y)),
            SoftmaxOp(scale),
        )
    }
}

#[cfg(all(test, feature = "cpu-kernels"))]
mod tests {
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{Distribution, Tensor, TensorData, Tolerance};

    use super::*;

    type A = Autodiff<Flex>;

    fn inputs<B: Backend>(shape: [usize; 3]) -> Tensor<B, 3> {
        // Wide range, plus the exact values where the formulas switch branch.
        let t = Tensor::<B, 3>::random(shape, Distribution::Normal(0.0, 4.0), &Default::default());
        let mut v = t.into_data().to_vec::<f32>().unwrap_or_default();
        for (i, e) in [0.0f32, -0.0, 1e-8, -1e-8, 9.0, -9.0, 30.0, -30.0, 100.0, -100.0]
            .iter()
            .enumerate()
        {
            v[i] = *e;
        }
        Tensor::from_data(TensorData::new(v, shape), &Default::default())
    }

    #[test]
    fn exp_is_within_two_ulp_of_std() {
        let mut worst = 0.0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (math::exp(x), x.exp());
            worst = worst.max(((a - b) / b).abs());
            x += 0.0137;
        }
        assert!(worst < 2.5e-7, "worst relative error {worst}");
        assert_eq!(math::exp(-200.0), math::exp(-87.336_55));
        assert!(math::exp(200.0).is_finite());
    }

    #[test]
    fn the_fused_kernels_serve_flex_and_autodiff_flex_only() {
        assert!(fused_on::<Flex>());
        assert!(fused_on::<A>());
    }

    #[test]
    fn fused_gelu_matches_burns_exact_gelu_forward_and_backward() {
        let x = inputs::<Flex>([3, 50, 37]);
        let want = burn::tensor::activation::gelu(x.clone());
        gelu(x.clone())
            .into_data()
            .assert_approx_eq::<f32>(&want.into_data(), Tolerance::absolute(1e-6));

        let g = Tensor::<Flex, 3>::random([3, 50, 37], Distribution::Normal(0.0, 1.0), &Default::default());
        let grad_of = |f: &dyn Fn(Tensor<A, 3>) -> Tensor<A, 3>| {
            let xa = Tensor::<A, 3>::from_inner(x.clone()).require_grad();
            let loss = (f(xa.clone()) * Tensor::from_inner(g.clone())).sum();
            let grads = loss.backward();
            xa.grad(&grads).map(|t| t.into_data())
        };
        let fused = grad_of(&|t| gelu(t));
        let reference = grad_of(&|t| burn::tensor::activation::gelu(t));
        let (Some(fused), Some(reference)) = (fused, reference) else {
            panic!("no gradient reached the input")
        };
        fused.assert_approx_eq::<f32>(&reference, Tolerance::absolute(1e-5));
    }

    #[test]
    fn fused_scaled_softmax_matches_burns_softmax_forward_and_backward() {
        // Rows of 207 (the ViT-B/16 + 10 prompts sequence) and of 5 (shorter than one SIMD lane).
        for len in [207usize, 5] {
            let x = inputs::<Flex>([4, 6, len]);
            let scale = 0.125f32;
            let want = burn::tensor::activation::softmax(x.clone().mul_scalar(scale), 2);
            scaled_softmax(x.clone(), scale)
                .into_data()
                .assert_approx_eq::<f32>(&want.into_data(), Tolerance::absolute(1e-6));

            let g =
                Tensor::<Flex, 3>::random([4, 6, len], Distribution::Normal(0.0, 1.0), &Default::default());
            let grad_of = |f: &dyn Fn(Tensor<A, 3>) -> Tensor<A, 3>| {
                let xa = Tensor::<A, 3>::from_inner(x.clone()).require_grad();
                let loss = (f(xa.clone()) * Tensor::from_inner(g.clone())).sum();
                xa.grad(&loss.backward()).map(|t| t.into_data())
            };
            let fused = grad_of(&|t| scaled_softmax(t, scale));
            let reference = grad_of(&|t| burn::tensor::activation::softmax(t.mul_scalar(scale), 2));
            let (Some(fused), Some(reference)) = (fused, reference) else {
                panic!("no gradient reached the input")
            };
            fused.assert_approx_eq::<f32>(&reference, Tolerance::absolute(1e-6));
        }
    }

    #[test]
    fn non_contiguous_inputs_take_burns_path_with_the_same_result() {
        let x = inputs::<Flex>([2, 9, 33]);
        let t = x.clone().swap_dims(1, 2); // a strided view
        let want = burn::tensor::activation::gelu(t.clone());
        gelu(t.clone())
            .into_data()
            .assert_approx_eq::<f32>(&want.into_data(), Tolerance::absolute(1e-6));
        let want = burn::tensor::activation::softmax(t.clone().mul_scalar(0.5), 2);
        scaled_softmax(t, 0.5)
            .into_data()
            .assert_approx_eq::<f32>(&want.into_data(), Tolerance::absolute(1e-6));
    }
}

#[cfg(all(test, feature = "cpu-kernels"))]
mod layer_norm_tests {
    use burn::backend::{Autodiff, Flex};
    use burn::nn::LayerNormConfig;
    use burn::tensor::{Distribution, Tensor, Tolerance};

    use super::*;

    type A = Autodiff<Flex>;

    #[test]
    fn fused_layer_norm_matches_burns_forward_and_all_three_gradients() {
        let dev = Default::default();
        // 37 channels: two SIMD chunks and a tail.
        let (shape, d) = ([3usize, 11, 37], 37usize);
        let x = Tensor::<Flex, 3>::random(shape, Distribution::Normal(0.5, 3.0), &dev);
        let g = Tensor::<Flex, 3>::random(shape, Distribution::Normal(0.0, 1.0), &dev);
        let gamma = Tensor::<Flex, 1>::random([d], Distribution::Normal(1.0, 0.5), &dev);
        let beta = Tensor::<Flex, 1>::random([d], Distribution::Normal(0.0, 0.5), &dev);
        let eps = 1e-6;

        let mut ln = LayerNormConfig::new(d).with_epsilon(eps).init::<Flex>(&dev);
        ln.gamma = ln.gamma.map(|_| gamma.clone());
        ln.beta = ln.beta.map(|b| b.map(|_| beta.clone()));
        let want = ln.forward(x.clone());
        layer_norm(x.clone(), gamma.clone(), beta.clone(), eps)
            .into_data()
            .assert_approx_eq::<f32>(&want.into_data(), Tolerance::absolute(2e-6));

        let grads_of = |fused: bool| {
            let xa = Tensor::<A, 3>::from_inner(x.clone()).require_grad();
            let ga = Tensor::<A, 1>::from_inner(gamma.clone()).require_grad();
            let ba = Tensor::<A, 1>::from_inner(beta.clone()).require_grad();
            let y = if fused {
                layer_norm(xa.clone(), ga.clone(), ba.clone(), eps)
            } else {
                let mut ln = LayerNormConfig::new(d).with_epsilon(eps).init::<A>(&dev);
                ln.gamma = ln.gamma.map(|_| ga.clone());
                ln.beta = ln.beta.map(|b| b.map(|_| ba.clone()));
                ln.forward(xa.clone())
            };
            let grads = (y * Tensor::from_inner(g.clone())).sum().backward();
            [
                xa.grad(&grads).map(|t| t.into_data()),
                ga.grad(&grads).map(|t| t.into_data()),
                ba.grad(&grads).map(|t| t.into_data()),
            ]
        };
        for (which, (f, r)) in ["x", "gamma", "beta"]
            .iter()
            .zip(grads_of(true).into_iter().zip(grads_of(false)))
        {
            let (Some(f), Some(r)) = (f, r) else {
                panic!("no gradient for {which}")
            };
            f.assert_approx_eq::<f32>(&r, Tolerance::absolute(2e-5));
        }
    }
}
