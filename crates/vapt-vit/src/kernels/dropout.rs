//! Dropout for Flex: the keep mask comes from a counter-based hash of (seed, element index), so
//! it is drawn in parallel, in the same pass as the multiply, and recomputed (not stored) by the
//! backward.
//!
//! Burn's `Dropout` draws a full-size Bernoulli tensor with its single-threaded CPU generator and
//! multiplies twice; in full fine-tuning (hidden dropout 0.1 in every block) that was about a tenth
//! of a ViT-B/16 train step. The seed of each call is drawn from Burn's generator, so runs stay
//! reproducible under `Backend::seed`.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops};
use burn::backend::flex::Flex;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use rayon::prelude::*;

use super::flex::{apply1, dense, f32_slice, tensor, values};

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

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
pub fn dropout<B: Backend, const D: usize>(x: Tensor<B, D>, p: f64) -> Result<Tensor<B, D>, Tensor<B, D>> {
    if !super::flex::serves::<B>() {
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

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{Distribution, Tensor};

    type A = Autodiff<Flex>;

    #[test]
    fn dropout_keeps_about_one_minus_p_scales_the_kept_and_routes_the_gradient_through_the_same_mask() {
        let dev = Default::default();
        let x = Tensor::<Flex, 2>::random([300, 200], Distribution::Uniform(1.0, 2.0), &dev);
        let xa = Tensor::<A, 2>::from_inner(x.clone()).require_grad();
        let Ok(y) = super::dropout(xa.clone(), 0.25) else {
            panic!("the fused dropout declined a Flex input")
        };
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
        let Ok(z) = super::dropout(xa, 0.25) else {
            panic!("the fused dropout declined a Flex input")
        };
        let z = z.into_data().to_vec::<f32>().unwrap_or_default();
        let same = y
            .iter()
            .zip(&z)
            .filter(|(a, b)| (**a == 0.0) == (**b == 0.0))
            .count();
        assert!(same < y.len() * 9 / 10, "masks agree on {same} of {}", y.len());
    }
}
