//! The attention core `softmax(q·kᵀ·scale)·v` over heads, and its two halves for callers that keep
//! or drop out the probabilities.
//!
//! On Flex one task per (batch, head) computes the scores, the softmax and the product with `v` on
//! a `T×T` block that stays in cache, reading q/k/v and writing the context in place in their
//! `[B, T, H·hd]` layout (no head split or merge copies); the backward likewise. Burn's own ops
//! run it as split → matmul → softmax → matmul → merge, with four full-size intermediates.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::activation::scaled_softmax;
use crate::layout::swap_dims_12;

/// The attention core, `softmax(q·kᵀ·scale)·v` for each of `heads` heads, on `[B, Tq, heads·hd]`
/// queries and `[B, Tk, heads·hd]` keys and values; returns the context `[B, Tq, heads·hd]` (heads
/// merged).
pub fn attention<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    heads: usize,
    scale: f32,
) -> Tensor<B, 3> {
    #[cfg(feature = "flex")]
    let (q, k, v) = match flex::attention(q, k, v, heads, scale) {
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

#[cfg(feature = "flex")]
mod flex {
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops};
    use burn::backend::flex::{Flex, FlexTensor};
    use burn::tensor::backend::Backend;
    use burn::tensor::Tensor;
    use rayon::prelude::*;

    use crate::activation::{softmax_grad_rows_in_place, softmax_rows_in_place};
    use crate::dispatch::{apply3, dense, f32_slice, tensor, values};
    use crate::gemm::{dims, gemm_into, Mat, Out};

    #[derive(Clone, Debug)]
    struct AttentionState {
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        /// The probabilities `[B, H, Tq, Tk]`.
        probs: FlexTensor,
        heads: usize,
        scale: f32,
    }

    /// Sizes of one attention call.
    #[derive(Clone, Copy)]
    struct AttnDims {
        b: usize,
        tq: usize,
        tk: usize,
        d: usize,
        heads: usize,
        hd: usize,
    }

    impl AttnDims {
        /// From `q` `[B, Tq, D]` and `k`, `v` `[B, Tk, D]`, with `D` split into `heads`.
        fn new(q: &FlexTensor, k: &FlexTensor, v: &FlexTensor, heads: usize) -> Option<Self> {
            let (&[b, tq, d], &[bk, tk, dk]) = (dims(q), dims(k)) else {
                return None;
            };
            let ok = b == bk
                && d == dk
                && dims(v) == [b, tk, d]
                && heads > 0
                && d % heads == 0
                && tq > 0
                && tk > 0;
            ok.then_some(Self {
                b,
                tq,
                tk,
                d,
                heads,
                hd: d / heads,
            })
        }

        /// Offsets of head `h` of batch `bi` in the query and key/value buffers.
        fn offsets(&self, bh: usize) -> (usize, usize) {
            let (bi, h) = (bh / self.heads, bh % self.heads);
            (
                bi * self.tq * self.d + h * self.hd,
                bi * self.tk * self.d + h * self.hd,
            )
        }
    }

    fn attention_forward(
        q: &FlexTensor,
        k: &FlexTensor,
        v: &FlexTensor,
        heads: usize,
        scale: f32,
    ) -> Option<(FlexTensor, AttentionState)> {
        let a = AttnDims::new(q, k, v, heads)?;
        let (qs, ks, vs) = (f32_slice(q)?, f32_slice(k)?, f32_slice(v)?);
        let (tq, tk, d, hd) = (a.tq, a.tk, a.d, a.hd);
        let mut probs: Vec<f32> = Vec::with_capacity(a.b * heads * tq * tk);
        let mut ctx: Vec<f32> = Vec::with_capacity(a.b * tq * d);
        let ctx_out = Out(ctx.spare_capacity_mut().as_mut_ptr().cast());
        probs.spare_capacity_mut()[..a.b * heads * tq * tk]
            .par_chunks_mut(tq * tk)
            .enumerate()
            .for_each(|(bh, block)| {
                let (qo, ko) = a.offsets(bh);
                let p = block.as_mut_ptr().cast::<f32>();
                // SAFETY: `block` is this task's own tq×tk slice of `probs`; the scores overwrite all
                // of it before it is read as a slice.
                let p = unsafe {
                    gemm_into(
                        p,
                        tk,
                        Mat::rows(qs, qo, tq, hd, d),
                        Mat::rows(ks, ko, tk, hd, d).t(),
                        false,
                        false,
                    );
                    std::slice::from_raw_parts_mut(p, tq * tk)
                };
                softmax_rows_in_place(p, tk, scale);
                // SAFETY: head h of batch bi owns columns h·hd..(h+1)·hd of rows bi·tq..(bi+1)·tq of
                // `ctx` (capacity b·tq·d); no other task writes them.
                unsafe {
                    gemm_into(
                        ctx_out.at(qo),
                        d,
                        Mat::rows(p, 0, tq, tk, tk),
                        Mat::rows(vs, ko, tk, hd, d),
                        false,
                        false,
                    )
                };
            });
        // SAFETY: the tasks wrote every element of both buffers (all (batch, head) blocks; the heads
        // tile the channels).
        unsafe {
            probs.set_len(a.b * heads * tq * tk);
            ctx.set_len(a.b * tq * d);
        }
        let state = AttentionState {
            q: q.clone(),
            k: k.clone(),
            v: v.clone(),
            probs: tensor(probs, [a.b, heads, tq, tk]),
            heads,
            scale,
        };
        Some((tensor(ctx, [a.b, tq, d]), state))
    }

    #[derive(Debug)]
    struct AttentionOp;

    impl Backward<Flex, 3> for AttentionOp {
        type State = AttentionState;

        fn backward(self, ops: Ops<AttentionState, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
            let g = dense(grads.consume::<Flex>(&ops.node));
            let [pq, pk, pv] = ops.parents;
            let st = &ops.state;
            let (gs, qs, ks, vs, ps) = (
                values(&g),
                values(&st.q),
                values(&st.k),
                values(&st.v),
                values(&st.probs),
            );
            let Some(a) = AttnDims::new(&st.q, &st.k, &st.v, st.heads) else {
                unreachable!("the attention state has the forward's shapes")
            };
            let (tq, tk, d, hd) = (a.tq, a.tk, a.d, a.hd);
            let sizes = [a.b * tq * d, a.b * tk * d, a.b * tk * d];
            let want = [pq.is_some(), pk.is_some(), pv.is_some()];
            let mut bufs: [Vec<f32>; 3] =
                std::array::from_fn(|i| Vec::with_capacity(if want[i] { sizes[i] } else { 0 }));
            let [dq, dk, dv] = bufs
                .each_mut()
                .map(|v| Out(v.spare_capacity_mut().as_mut_ptr().cast()));
            (0..a.b * a.heads).into_par_iter().for_each(|bh| {
                let (qo, ko) = a.offsets(bh);
                let gm = Mat::rows(gs, qo, tq, hd, d);
                let p = Mat::rows(ps, bh * tq * tk, tq, tk, tk);
                // SAFETY (all writes below): head h of batch bi owns columns h·hd..(h+1)·hd of its
                // rows of each gradient buffer (allocated in full when wanted); no other task writes
                // them.
                if want[2] {
                    // dv = Pᵀ·g
                    unsafe { gemm_into(dv.at(ko), d, p.t(), gm, false, false) };
                }
                if !(want[0] || want[1]) {
                    return;
                }
                // dP = g·vᵀ, then dS = scale·P⊙(dP − rowsum(dP⊙P)) in place.
                let mut ds = vec![0.0f32; tq * tk];
                // SAFETY: `ds` is this task's own initialised tq×tk buffer.
                unsafe {
                    gemm_into(
                        ds.as_mut_ptr(),
                        tk,
                        gm,
                        Mat::rows(vs, ko, tk, hd, d).t(),
                        false,
                        false,
                    )
                };
                softmax_grad_rows_in_place(&ps[bh * tq * tk..(bh + 1) * tq * tk], &mut ds, tk, st.scale);
                let dsm = Mat::rows(&ds, 0, tq, tk, tk);
                if want[0] {
                    // dq = dS·k
                    unsafe { gemm_into(dq.at(qo), d, dsm, Mat::rows(ks, ko, tk, hd, d), false, false) };
                }
                if want[1] {
                    // dk = dSᵀ·q
                    unsafe { gemm_into(dk.at(ko), d, dsm.t(), Mat::rows(qs, qo, tq, hd, d), false, false) };
                }
            });
            let shapes = [[a.b, tq, d], [a.b, tk, d], [a.b, tk, d]];
            for (((parent, mut buf), size), shape) in
                [pq, pk, pv].into_iter().zip(bufs).zip(sizes).zip(shapes)
            {
                if let Some(node) = parent {
                    // SAFETY: wanted buffers were written in full by the tasks (every head block).
                    unsafe { buf.set_len(size) };
                    grads.register::<Flex>(node.id, tensor(buf, shape));
                }
            }
        }
    }

    /// The attention core on Flex / Autodiff<Flex>; the inputs back on any other backend or shape.
    #[allow(clippy::type_complexity)]
    pub fn attention<B: Backend>(
        q: Tensor<B, 3>,
        k: Tensor<B, 3>,
        v: Tensor<B, 3>,
        heads: usize,
        scale: f32,
    ) -> Result<Tensor<B, 3>, (Tensor<B, 3>, Tensor<B, 3>, Tensor<B, 3>)> {
        apply3(
            (q, k, v),
            |q, k, v| attention_forward(q, k, v, heads, scale),
            AttentionOp,
        )
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Tensor, Tolerance};

    use crate::test_util::{assert_same, grads, random};

    fn reference_attention<B: burn::tensor::backend::Backend>(
        q: Tensor<B, 3>,
        k: Tensor<B, 3>,
        v: Tensor<B, 3>,
        heads: usize,
        scale: f32,
    ) -> Tensor<B, 3> {
        let [b, tq, d] = q.dims();
        let split = |y: Tensor<B, 3>| {
            let [_, t, _] = y.dims();
            y.reshape([b, t, heads, d / heads]).swap_dims(1, 2)
        };
        let scores = split(q).matmul(split(k).swap_dims(2, 3)).mul_scalar(scale);
        let probs = burn::tensor::activation::softmax(scores, 3);
        probs.matmul(split(v)).swap_dims(1, 2).reshape([b, tq, d])
    }

    #[test]
    fn fused_attention_matches_the_decomposed_ops_forward_and_backward() {
        // ViT-like (3 heads of 16 over 23 tokens) and one head over 2 tokens.
        // ViT-like (3 heads of 16, 23 tokens), one head over 2 tokens, and the CLS-only query of
        // a last block (1 query row, 23 keys).
        for (b, tq, t, heads, hd) in [
            (2usize, 23usize, 23usize, 3usize, 16usize),
            (1, 2, 2, 1, 4),
            (2, 1, 23, 3, 16),
        ] {
            let d = heads * hd;
            let scale = 1.0 / (hd as f32).sqrt();
            let qkv = [random([b, tq, d]), random([b, t, d]), random([b, t, d])];
            let want = reference_attention(qkv[0].clone(), qkv[1].clone(), qkv[2].clone(), heads, scale);
            super::attention(qkv[0].clone(), qkv[1].clone(), qkv[2].clone(), heads, scale)
                .into_data()
                .assert_approx_eq::<f32>(&want.into_data(), Tolerance::absolute(1e-5));

            let g = random([b, t, d]);
            for tracked in [
                [true, true, true],
                [false, false, true],
                [true, false, false],
                [false, true, false],
            ] {
                let run = |fused: bool| {
                    grads(&qkv, &tracked, &g, |t| {
                        let (q, k, v) = (t[0].clone(), t[1].clone(), t[2].clone());
                        if fused {
                            crate::attention(q, k, v, heads, scale)
                        } else {
                            reference_attention(q, k, v, heads, scale)
                        }
                    })
                };
                assert_same(run(true), run(false), 1e-4);
            }
        }
    }
}
