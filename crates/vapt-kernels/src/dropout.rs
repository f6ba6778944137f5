//! Dropout (element-wise) and Dropout2d (whole channel maps), active only while training on an
//! autodiff backend, as Burn's `Dropout`.
//!
//! On Flex the keep mask of dropout comes from a counter-based hash of (seed, element index), so it
//! is drawn in parallel, in the same pass as the multiply, and recomputed (not stored) by the
//! backward. Burn's `Dropout` draws a full-size Bernoulli tensor with its single-threaded CPU
//! generator and multiplies twice; in full fine-tuning (hidden dropout 0.1 in every block) that was
//! about a tenth of a ViT-B/16 train step. The seed of each call is drawn from Burn's generator, so
//! runs stay reproducible under `Backend::seed`. Dropout2d's per-(sample, channel) scaling of a
//! channels-last `[B, S, C]` map is one pass on Flex, forward and backward (Flex's strided
//! broadcast multiply took 35 ms per VAPT generator at ViT-B/16 batch 8).

use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};

/// Burn's `Dropout::forward` with probability `p`: identity outside training (no autodiff) or for
/// `p = 0`. On Flex the mask is a counter-based hash drawn in the multiply's pass and recomputed by
/// the backward (see the module doc); elsewhere Burn's `Dropout`.
pub fn dropout<B: Backend, const D: usize>(x: Tensor<B, D>, p: f64) -> Tensor<B, D> {
    if p == 0.0 || !B::ad_enabled(&x.device()) {
        return x;
    }
    #[cfg(feature = "flex")]
    let x = match flex::dropout(x, p) {
        Ok(y) => return y,
        Err(x) => x,
    };
    burn::nn::DropoutConfig::new(p).init().forward(x)
}

/// Dropout2d on channels-last maps `[B, S, C]`: zeroes whole (sample, channel) maps with
/// probability `p` and scales the survivors by 1/(1−p). Like [`dropout`], active only on an
/// autodiff backend.
pub fn dropout2d<B: Backend>(x: Tensor<B, 3>, p: f64) -> Tensor<B, 3> {
    if p == 0.0 || !B::ad_enabled(&x.device()) {
        return x;
    }
    let [b, _, c] = x.dims();
    let keep = Tensor::<B, 2>::random([b, c], Distribution::Bernoulli(1.0 - p), &x.device());
    scale_channels(x, keep.div_scalar(1.0 - p))
}

/// `x` `[B, S, C]` with every (sample, channel) map multiplied by `scale` `[B, C]` (a Dropout2d
/// mask). `scale` is a constant: no gradient flows to it. One pass on Flex, forward and backward.
pub fn scale_channels<B: Backend>(x: Tensor<B, 3>, scale: Tensor<B, 2>) -> Tensor<B, 3> {
    #[cfg(feature = "flex")]
    let (x, scale) = match flex::scale_channels(x, scale) {
        Ok(y) => return y,
        Err(back) => back,
    };
    x * scale.unsqueeze_dim::<3>(1)
}

#[cfg(feature = "flex")]
mod flex {
    use std::sync::Arc;

    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{unary, Backward, Ops};
    use burn::backend::flex::Flex;
    use burn::tensor::backend::Backend;
    use burn::tensor::{Distribution, Tensor};
    use rayon::prelude::*;

    use crate::dispatch::{apply1, dense, dims3, f32_slice, serves, tensor, values, CHUNK};

    /// SplitMix64's finaliser of `seed + i·γ`: 64 well-mixed bits per index.
    #[inline(always)]
    fn hash(seed: u64, i: u64) -> u64 {
        let mut z = seed.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// The mask of one call: element `i` is kept when the top 32 bits of its hash fall below
    /// `threshold` (= keep probability · 2³²), and then scaled by `scale` = 1/keep.
    #[derive(Clone, Copy, Debug)]
    struct Mask {
        seed: u64,
        threshold: u64,
        scale: f32,
    }

    impl Mask {
        fn new(seed: u64, p: f64) -> Self {
            let keep = 1.0 - p;
            Self {
                seed,
                threshold: (keep * 4_294_967_296.0) as u64,
                scale: (1.0 / keep) as f32,
            }
        }

        /// `out[j] = src[j] · mask(offset + j)`.
        fn apply(&self, src: &[f32], out: &mut [f32], offset: usize) {
            for (j, (o, &v)) in out.iter_mut().zip(src).enumerate() {
                let keep = (hash(self.seed, (offset + j) as u64) >> 32) < self.threshold;
                *o = if keep { v * self.scale } else { 0.0 };
            }
        }

        fn run(&self, xs: &[f32]) -> Vec<f32> {
            let mut out = vec![0.0f32; xs.len()];
            out.par_chunks_mut(CHUNK)
                .zip(xs.par_chunks(CHUNK))
                .enumerate()
                .for_each(|(c, (o, x))| self.apply(x, o, c * CHUNK));
            out
        }
    }

    #[derive(Debug)]
    struct DropoutOp;

    impl Backward<Flex, 1> for DropoutOp {
        type State = Mask;

        fn backward(self, ops: Ops<Mask, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let mask = ops.state;
            unary::<Flex, _>(ops.parents, ops.node, grads, |g| {
                let g = dense(g);
                tensor(mask.run(values(&g)), g.layout().shape().clone())
            });
        }
    }

    /// Training-mode dropout with probability `p` (0 < p < 1) on Flex / Autodiff<Flex>; the input
    /// back on any other backend.
    pub fn dropout<B: Backend, const D: usize>(
        x: Tensor<B, D>,
        p: f64,
    ) -> Result<Tensor<B, D>, Tensor<B, D>> {
        if !serves::<B>() {
            return Err(x);
        }
        // 48 random bits from Burn's (seeded) generator name this call's mask.
        let draw = Tensor::<B, 1>::random([3], Distribution::Uniform(0.0, 65_536.0), &x.device());
        let Ok(bits) = draw.into_data().into_vec::<f32>() else {
            return Err(x);
        };
        let seed = bits.iter().fold(0u64, |s, &v| (s << 16) | (v as u64 & 0xFFFF));
        let mask = Mask::new(seed, p);
        apply1(
            x,
            dense,
            |x| {
                let y = mask.run(f32_slice(x)?);
                Some((tensor(y, x.layout().shape().clone()), mask))
            },
            DropoutOp,
        )
    }

    /// `y[b, s, c] = x[b, s, c] · m[b, c]`.
    fn scale_rows(xs: &[f32], [b, s, c]: [usize; 3], m: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0f32; b * s * c];
        out.par_chunks_mut((s * c).max(1))
            .enumerate()
            .for_each(|(bi, o)| {
                let scale = &m[bi * c..][..c];
                for (orow, xrow) in o
                    .chunks_exact_mut(c)
                    .zip(xs[bi * s * c..][..s * c].chunks_exact(c))
                {
                    for ((y, &x), &k) in orow.iter_mut().zip(xrow).zip(scale) {
                        *y = x * k;
                    }
                }
            });
        out
    }

    #[derive(Debug)]
    struct ScaleChannelsOp;

    impl Backward<Flex, 1> for ScaleChannelsOp {
        type State = Arc<Vec<f32>>;

        fn backward(self, ops: Ops<Arc<Vec<f32>>, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let m = ops.state;
            unary::<Flex, _>(ops.parents, ops.node, grads, |g| {
                let g = dense(g);
                let Some(shape) = dims3(&g) else {
                    unreachable!("the gradient of a [B, S, C] scaling is [B, S, C]")
                };
                tensor(scale_rows(values(&g), shape, &m), shape)
            });
        }
    }

    /// [`super::scale_channels`] on Flex / Autodiff<Flex>; the inputs back elsewhere.
    #[allow(clippy::type_complexity)]
    pub fn scale_channels<B: Backend>(
        x: Tensor<B, 3>,
        scale: Tensor<B, 2>,
    ) -> Result<Tensor<B, 3>, (Tensor<B, 3>, Tensor<B, 2>)> {
        let [b, _, c] = x.dims();
        if scale.dims() != [b, c] || !serves::<B>() {
            return Err((x, scale));
        }
        // The factors as plain values (B·C of them; a constant for autodiff).
        let Ok(m) = scale.clone().into_data().into_vec::<f32>() else {
            return Err((x, scale));
        };
        let m = Arc::new(m);
        apply1(
            x,
            dense,
            |x| {
                let shape = dims3(x)?;
                let y = scale_rows(f32_slice(x)?, shape, &m);
                Some((tensor(y, shape), m.clone()))
            },
            ScaleChannelsOp,
        )
        .map_err(|x| (x, scale))
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Distribution, Tensor, Tolerance};

    use burn::backend::Flex;

    use crate::test_util::{assert_same, grads, random, A};

    #[test]
    fn dropout_keeps_about_one_minus_p_scales_the_kept_and_routes_the_gradient_through_the_same_mask() {
        let dev = Default::default();
        let x = Tensor::<Flex, 2>::random([300, 200], Distribution::Uniform(1.0, 2.0), &dev);
        let xa = Tensor::<A, 2>::from_inner(x.clone()).require_grad();
        let y = super::dropout(xa.clone(), 0.25);
        let grads = y.clone().sum().backward();
        let Some(g) = xa.grad(&grads) else {
            panic!("no gradient reached the input")
        };
        let (x, y, g) = (
            x.into_data().to_vec::<f32>().unwrap_or_default(),
            y.into_data().to_vec::<f32>().unwrap_or_default(),
            g.into_data().to_vec::<f32>().unwrap_or_default(),
        );
        let kept = y.iter().filter(|&&v| v != 0.0).count() as f64 / y.len() as f64;
        assert!((kept - 0.75).abs() < 0.01, "kept fraction {kept}");
        for ((&x, &y), &g) in x.iter().zip(&y).zip(&g) {
            if y == 0.0 {
                assert_eq!(g, 0.0);
            } else {
                assert!((y - x / 0.75).abs() < 1e-5 && (g - 1.0 / 0.75).abs() < 1e-6);
            }
        }
        // Two calls draw different masks.
        let z = super::dropout(xa, 0.25);
        let z = z.into_data().to_vec::<f32>().unwrap_or_default();
        let same = y
            .iter()
            .zip(&z)
            .filter(|(a, b)| (**a == 0.0) == (**b == 0.0))
            .count();
        assert!(same < y.len() * 9 / 10, "masks agree on {same} of {}", y.len());
    }

    #[test]
    fn channel_scaling_matches_a_broadcast_multiply() {
        let (x, scale, g) = (random([3, 7, 5]), random([3, 5]), random([3, 7, 5]));
        let run = |fused: bool| {
            let s = Tensor::<A, 2>::from_inner(scale.clone());
            move |t: Vec<Tensor<A, 3>>| {
                if fused {
                    super::scale_channels(t[0].clone(), s.clone())
                } else {
                    t[0].clone() * s.clone().unsqueeze_dim::<3>(1)
                }
            }
        };
        let inputs = [x.clone()];
        assert_same(
            grads(&inputs, &[true], &g, run(true)),
            grads(&inputs, &[true], &g, run(false)),
            1e-6,
        );
        super::scale_channels(x.clone(), scale.clone())
            .into_data()
            .assert_approx_eq::<f32>(
                &(x * scale.unsqueeze_dim::<3>(1)).into_data(),
                Tolerance::absolute(1e-6),
            );
    }

    #[test]
    fn dropout2d_zeroes_whole_channel_maps_and_scales_the_rest() {
        let x = Tensor::<A, 3>::from_inner(Tensor::random(
            [4, 6, 50],
            Distribution::Uniform(1.0, 2.0),
            &Default::default(),
        ));
        let y = super::dropout2d(x.clone(), 0.5);
        let (x, y) = (
            x.into_data().to_vec::<f32>().unwrap_or_default(),
            y.into_data().to_vec::<f32>().unwrap_or_default(),
        );
        let mut dropped = 0;
        for b in 0..4 {
            for c in 0..50 {
                let col: Vec<(f32, f32)> = (0..6)
                    .map(|s| (x[(b * 6 + s) * 50 + c], y[(b * 6 + s) * 50 + c]))
                    .collect();
                if col[0].1 == 0.0 {
                    dropped += 1;
                    assert!(
                        col.iter().all(|(_, y)| *y == 0.0),
                        "a dropped map is zero everywhere"
                    );
                } else {
                    assert!(
                        col.iter().all(|(x, y)| (y - 2.0 * x).abs() < 1e-5),
                        "kept maps are scaled by 1/(1-p)"
                    );
                }
            }
        }
        assert!(
            (60..=140).contains(&dropped),
            "{dropped} of 200 maps dropped at p = 0.5"
        );
    }
}
