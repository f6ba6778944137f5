//! Token-range copies on `[B, T, D]` sequences (prompt insertion and the generator's input) and
//! the per-channel scaling of Dropout2d, forward and backward, for Flex.
//!
//! Burn's autodiff takes the gradient of a `narrow` by slice-assigning into a zero tensor of the
//! full size, which Flex walks element by element, and Flex multiplies `[B, S, C]` by a `[B, 1, C]`
//! mask through its strided broadcast path. Measured on ViT-B/16 shapes at batch 8 (one VAPT
//! generator): narrow backward 13.5 ms, Dropout2d forward + backward 35 ms. These are row copies.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops};
use burn::backend::flex::{Flex, FlexTensor};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use rayon::prelude::*;

use super::flex::{apply1, apply2, dense, f32_slice, tensor, values};

fn dims3(t: &FlexTensor) -> Option<[usize; 3]> {
    match t.layout().shape().as_slice() {
        &[b, t, d] => Some([b, t, d]),
        _ => None,
    }
}

/// `[B, T, D]` → rows `start..start + len` of every sample, `[B, len, D]`.
fn rows(xs: &[f32], [b, t, d]: [usize; 3], start: usize, len: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; b * len * d];
    out.par_chunks_mut((len * d).max(1))
        .enumerate()
        .for_each(|(bi, o)| {
            o.copy_from_slice(&xs[(bi * t + start) * d..][..len * d]);
        });
    out
}

/// Rows of `x` `[B, T, D]`, with rows `start..start + len` of every sample taken from `p`
/// `[B, len, D]` instead (zeros when `p` is `None`).
fn with_rows(
    xs: Option<&[f32]>,
    [b, t, d]: [usize; 3],
    start: usize,
    p: Option<&[f32]>,
    len: usize,
) -> Vec<f32> {
    let mut out = vec![0.0f32; b * t * d];
    out.par_chunks_mut((t * d).max(1))
        .enumerate()
        .for_each(|(bi, o)| {
            if let Some(xs) = xs {
                o.copy_from_slice(&xs[bi * t * d..][..t * d]);
            }
            let dst = &mut o[start * d..][..len * d];
            match p {
                Some(p) => dst.copy_from_slice(&p[bi * len * d..][..len * d]),
                None => dst.fill(0.0),
            }
        });
    out
}

/// The input shape and range of a narrow.
#[derive(Clone, Copy, Debug)]
struct Range3 {
    shape: [usize; 3],
    start: usize,
    len: usize,
}

#[derive(Debug)]
struct NarrowOp;

impl Backward<Flex, 1> for NarrowOp {
    type State = Range3;

    fn backward(self, ops: Ops<Range3, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let r = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |g| {
            let g = dense(g);
            tensor(
                with_rows(None, r.shape, r.start, Some(values(&g)), r.len),
                r.shape,
            )
        });
    }
}

/// [`super::super::narrow_tokens`] on Flex / Autodiff<Flex>; the input back elsewhere.
pub fn narrow<B: Backend>(x: Tensor<B, 3>, start: usize, len: usize) -> Result<Tensor<B, 3>, Tensor<B, 3>> {
    apply1(
        x,
        dense,
        |x| {
            let shape = dims3(x)?;
            if start + len > shape[1] {
                return None;
            }
            let y = rows(f32_slice(x)?, shape, start, len);
            Some((tensor(y, [shape[0], len, shape[2]]), Range3 { shape, start, len }))
        },
        NarrowOp,
    )
}

#[derive(Debug)]
struct ReplaceOp;

impl Backward<Flex, 2> for ReplaceOp {
    type State = Range3;

    fn backward(self, ops: Ops<Range3, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let r = ops.state;
        let g = dense(grads.consume::<Flex>(&ops.node));
        let gs = values(&g);
        let [px, pp] = ops.parents;
        if let Some(node) = pp {
            let dp = rows(gs, r.shape, r.start, r.len);
            grads.register::<Flex>(node.id, tensor(dp, [r.shape[0], r.len, r.shape[2]]));
        }
        if let Some(node) = px {
            let dx = with_rows(Some(gs), r.shape, r.start, None, r.len);
            grads.register::<Flex>(node.id, tensor(dx, r.shape));
        }
    }
}

/// [`super::super::replace_tokens`] on Flex / Autodiff<Flex>; the inputs back elsewhere.
#[allow(clippy::type_complexity)]
pub fn replace<B: Backend>(
    x: Tensor<B, 3>,
    start: usize,
    p: Tensor<B, 3>,
) -> Result<Tensor<B, 3>, (Tensor<B, 3>, Tensor<B, 3>)> {
    apply2(
        (x, p),
        |x, p| {
            let (shape, [pb, len, pd]) = (dims3(x)?, dims3(p)?);
            if pb != shape[0] || pd != shape[2] || start + len > shape[1] {
                return None;
            }
            let y = with_rows(Some(f32_slice(x)?), shape, start, Some(f32_slice(p)?), len);
            Some((tensor(y, shape), Range3 { shape, start, len }))
        },
        ReplaceOp,
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

/// [`super::super::scale_channels`] on Flex / Autodiff<Flex>; the inputs back elsewhere.
#[allow(clippy::type_complexity)]
pub fn scale_channels<B: Backend>(
    x: Tensor<B, 3>,
    scale: Tensor<B, 2>,
) -> Result<Tensor<B, 3>, (Tensor<B, 3>, Tensor<B, 2>)> {
    let [b, _, c] = x.dims();
    if scale.dims() != [b, c] || !super::flex::serves::<B>() {
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

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{Distribution, Tensor, TensorData, Tolerance};

    type A = Autodiff<Flex>;

    fn random<const D: usize>(shape: [usize; D]) -> Tensor<Flex, D> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
    }

    /// Value and the gradients of `Σ f(x, p)⊙g` w.r.t. `x` and `p`.
    fn run(
        x: &Tensor<Flex, 3>,
        p: &Tensor<Flex, 3>,
        g: &Tensor<Flex, 3>,
        f: impl Fn(Tensor<A, 3>, Tensor<A, 3>) -> Tensor<A, 3>,
    ) -> [TensorData; 3] {
        let xa = Tensor::<A, 3>::from_inner(x.clone()).require_grad();
        let pa = Tensor::<A, 3>::from_inner(p.clone()).require_grad();
        let y = f(xa.clone(), pa.clone());
        let grads = (y.clone() * Tensor::from_inner(g.clone())).sum().backward();
        let zeros = || TensorData::zeros::<f32, _>(p.dims());
        [
            y.into_data(),
            xa.grad(&grads).map_or_else(zeros, |t| t.into_data()),
            pa.grad(&grads).map_or_else(zeros, |t| t.into_data()),
        ]
    }

    fn assert_all_close(a: [TensorData; 3], b: [TensorData; 3]) {
        for (a, b) in a.iter().zip(&b) {
            a.assert_approx_eq::<f32>(b, Tolerance::absolute(1e-6));
        }
    }

    #[test]
    fn token_narrow_and_replace_match_burns_narrow_and_cat() {
        let (x, p) = (random([3, 11, 5]), random([3, 4, 5]));
        let g_full = random([3, 11, 5]);
        let g_rows = random([3, 4, 5]);
        let fused = run(&x, &p, &g_rows, |x, _| super::super::narrow_tokens(x, 6, 4));
        let reference = run(&x, &p, &g_rows, |x, _| x.narrow(1, 6, 4));
        assert_all_close(fused, reference);
        for start in [0usize, 1, 7] {
            let fused = run(&x, &p, &g_full, |x, p| super::super::replace_tokens(x, start, p));
            let reference = run(&x, &p, &g_full, |x, p| {
                let mut parts = vec![];
                if start > 0 {
                    parts.push(x.clone().narrow(1, 0, start));
                }
                parts.push(p);
                if start + 4 < 11 {
                    parts.push(x.narrow(1, start + 4, 11 - start - 4));
                }
                Tensor::cat(parts, 1)
            });
            assert_all_close(fused, reference);
        }
        let Ok(_) = super::narrow(x.clone(), 1, 4) else {
            panic!("the fused narrow declined a contiguous f32 input")
        };
    }

    #[test]
    fn channel_scaling_matches_a_broadcast_multiply() {
        let (x, p) = (random([3, 7, 5]), random([3, 4, 5]));
        let scale = random([3, 5]);
        let g = random([3, 7, 5]);
        let fused = run(&x, &p, &g, |x, _| {
            super::super::scale_channels(x, Tensor::from_inner(scale.clone()))
        });
        let reference = run(&x, &p, &g, |x, _| {
            x * Tensor::<A, 2>::from_inner(scale.clone()).unsqueeze_dim::<3>(1)
        });
        assert_all_close(fused, reference);
        let Ok(_) = super::scale_channels(x, scale) else {
            panic!("the fused scaling declined a contiguous f32 input")
        };
    }
}
