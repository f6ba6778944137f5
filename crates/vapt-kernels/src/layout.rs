//! Token layout on `[B, T, D]` sequences and attention heads: the attention head split/merge
//! (`swap_dims_12`), the token range a VAPT generator reads (`narrow_tokens`) and the prompt
//! replacement before a block (`replace_tokens`), forward and backward.
//!
//! Burn's autodiff takes the gradient of a `narrow` by slice-assigning into a zero tensor of the
//! full size, which Flex walks element by element, and Flex materialises a `swap_dims` element by
//! element too. Measured on ViT-B/16 shapes at batch 8 (one VAPT generator): narrow backward
//! 13.5 ms. On Flex these are row copies.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// `x.swap_dims(1, 2)` materialised in the new order (a contiguous copy): the attention head
/// split `[B, T, H, hd] → [B, H, T, hd]` and merge. On Flex it is a row copy instead of Burn's
/// element-by-element strided iteration, and its backward is the same copy of the gradient.
pub fn swap_dims_12<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    #[cfg(feature = "flex")]
    let x = match flex::swap12(x) {
        Ok(y) => return y,
        Err(x) => x,
    };
    x.swap_dims(1, 2)
}

/// Tokens `start..start + len` of `[B, T, D]`: `x.narrow(1, start, len)`, materialised. On Flex its
/// backward writes the full-size gradient in one pass (Burn's slices a zero tensor).
pub fn narrow_tokens<B: Backend>(x: Tensor<B, 3>, start: usize, len: usize) -> Tensor<B, 3> {
    #[cfg(feature = "flex")]
    let x = match flex::narrow(x, start, len) {
        Ok(y) => return y,
        Err(x) => x,
    };
    x.narrow(1, start, len)
}

/// `x` `[B, T, D]` with tokens `start..start + Np` replaced by `p` `[B, Np, D]` (deep prompts);
/// one copy on Flex, forward and backward.
pub fn replace_tokens<B: Backend>(x: Tensor<B, 3>, start: usize, p: Tensor<B, 3>) -> Tensor<B, 3> {
    #[cfg(feature = "flex")]
    let (x, p) = match flex::replace(x, start, p) {
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

#[cfg(feature = "flex")]
mod flex {
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{unary, Backward, Ops};
    use burn::backend::flex::{Flex, FlexTensor};
    use burn::tensor::backend::Backend;
    use burn::tensor::Tensor;
    use rayon::prelude::*;

    use crate::dispatch::{apply1, apply2, dense, dims3, f32_slice, gather4, tensor, values, view4};

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

    /// [`super::narrow_tokens`] on Flex / Autodiff<Flex>; the input back elsewhere.
    pub fn narrow<B: Backend>(
        x: Tensor<B, 3>,
        start: usize,
        len: usize,
    ) -> Result<Tensor<B, 3>, Tensor<B, 3>> {
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

    /// [`super::replace_tokens`] on Flex / Autodiff<Flex>; the inputs back elsewhere.
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
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Tensor, Tolerance};

    use crate::test_util::{assert_same, grads, random, A};

    #[test]
    fn token_narrow_and_replace_match_burns_narrow_and_cat() {
        let (x, p) = (random([3, 11, 5]), random([3, 4, 5]));
        let g_rows = random([3, 4, 5]);
        let both = [x.clone(), p.clone()];
        let narrow = |fused: bool| {
            move |t: Vec<Tensor<A, 3>>| {
                if fused {
                    super::narrow_tokens(t[0].clone(), 6, 4)
                } else {
                    t[0].clone().narrow(1, 6, 4)
                }
            }
        };
        let tracked = [true, true];
        assert_same(
            grads(&both, &tracked, &g_rows, narrow(true)),
            grads(&both, &tracked, &g_rows, narrow(false)),
            1e-6,
        );
        super::narrow_tokens(x.clone(), 6, 4)
            .into_data()
            .assert_approx_eq::<f32>(&x.clone().narrow(1, 6, 4).into_data(), Tolerance::absolute(0.0));

        let g_full = random([3, 11, 5]);
        for start in [0usize, 1, 7] {
            let reference = |t: Vec<Tensor<A, 3>>| {
                let (x, p) = (t[0].clone(), t[1].clone());
                let mut parts = vec![];
                if start > 0 {
                    parts.push(x.clone().narrow(1, 0, start));
                }
                parts.push(p);
                if start + 4 < 11 {
                    parts.push(x.narrow(1, start + 4, 11 - start - 4));
                }
                Tensor::cat(parts, 1)
            };
            let fused = |t: Vec<Tensor<A, 3>>| super::replace_tokens(t[0].clone(), start, t[1].clone());
            assert_same(
                grads(&both, &tracked, &g_full, fused),
                grads(&both, &tracked, &g_full, reference),
                1e-6,
            );
            let ad = |t: &Tensor<burn::backend::Flex, 3>| Tensor::<A, 3>::from_inner(t.clone());
            fused(vec![ad(&x), ad(&p)]).into_data().assert_approx_eq::<f32>(
                &reference(vec![ad(&x), ad(&p)]).into_data(),
                Tolerance::absolute(0.0),
            );
        }
    }

    #[test]
    fn head_swap_matches_burns_swap_dims_forward_and_backward() {
        let (x, g) = (random([2, 5, 3, 4]), random([2, 3, 5, 4]));
        let swap = |fused: bool| {
            move |t: Vec<Tensor<A, 4>>| {
                if fused {
                    super::swap_dims_12(t[0].clone())
                } else {
                    t[0].clone().swap_dims(1, 2)
                }
            }
        };
        let inputs = [x.clone()];
        assert_same(
            grads(&inputs, &[true], &g, swap(true)),
            grads(&inputs, &[true], &g, swap(false)),
            0.0,
        );
        super::swap_dims_12(x.clone())
            .into_data()
            .assert_approx_eq::<f32>(&x.swap_dims(1, 2).into_data(), Tolerance::absolute(0.0));
    }
}
