//! Matrix products on Flex with vapt's own output buffers: the linear layer and the attention core
//! (`softmax(q·kᵀ·scale)·v` over heads), forward and backward.
//!
//! Flex's `matmul` zero-fills every output and then copies it once more to realign the buffer, adds
//! the bias in a separate pass, and runs attention as five ops with four full-size intermediates.
//! Here the output is written once: the bias is the initial value of the product, the attention of
//! one (batch, head) pair runs start to end on a `T×T` block that stays in cache, and q/k/v and the
//! context are read and written in place in their `[B, T, H·hd]` layout (no head split or merge
//! copies). All products go through the `gemm` crate, as Flex's do.

use std::mem::MaybeUninit;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::{Flex, FlexTensor};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use rayon::prelude::*;

use super::flex::{
    apply3, dense, f32_slice, rows_per_task, softmax_grad_rows_in_place, softmax_rows_in_place, sum_partials,
    tensor, values,
};

/// A strided, read-only f32 matrix view: element `(i, j)` at `data[off + i·rs + j·cs]`.
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    off: usize,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    /// A row-major `rows × cols` matrix with row stride `rs`, starting at `off`.
    fn rows(data: &'a [f32], off: usize, rows: usize, cols: usize, rs: usize) -> Self {
        let m = Self {
            data,
            off,
            rows,
            cols,
            rs,
            cs: 1,
        };
        assert!(m.fits(data.len()), "matrix view out of its buffer");
        m
    }

    /// The transpose (a view: strides swapped).
    fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// Whether every element lies inside a buffer of `len` elements.
    fn fits(&self, len: usize) -> bool {
        self.rows == 0
            || self.cols == 0
            || self.off + (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < len
    }
}

/// A raw output pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
struct Out(*mut f32);

// SAFETY: every use writes a set of elements no other task touches (one column block per head,
// or one row block per task), inside an allocation that outlives the parallel section.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    fn at(self, off: usize) -> *mut f32 {
        self.0.wrapping_add(off)
    }
}

/// `dst (rows a.rows × cols b.cols, row stride dst_rs, column stride 1) = [dst +] a·b`.
///
/// # Safety
/// `dst` must be valid for writes (and reads when `accumulate`) of every element of that
/// `a.rows × b.cols` view, and no other thread may access those elements during the call. Without
/// `accumulate` the elements are only written (gemm does not read `dst` when `read_dst` is false),
/// so they may be uninitialised.
unsafe fn gemm_into(dst: *mut f32, dst_rs: usize, a: Mat, b: Mat, accumulate: bool, parallel: bool) {
    assert_eq!(a.cols, b.rows, "inner dimensions");
    let (m, n, k) = (a.rows, b.cols, a.cols);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                // SAFETY: row i of the dst view, per the caller's contract.
                unsafe { std::ptr::write_bytes(dst.add(i * dst_rs), 0, n) };
            }
        }
        return;
    }
    // Flex's threshold: below ~192³ multiply-adds one thread is faster.
    let parallelism = if parallel && m * n * k >= 192 * 192 * 192 {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: `a` and `b` were checked to lie inside their slices (`Mat::rows` asserts, `t` keeps
    // the same elements); `dst` per the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            a.data.as_ptr().add(a.off),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr().add(b.off),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// A fresh `len`-element buffer that `write` fills completely through the raw pointer it gets.
///
/// # Safety
/// `write` must initialise all `len` elements.
unsafe fn filled(len: usize, write: impl FnOnce(Out)) -> Vec<f32> {
    let mut v: Vec<f32> = Vec::with_capacity(len);
    write(Out(v.spare_capacity_mut().as_mut_ptr().cast()));
    // SAFETY: all `len` elements were written, per the contract.
    unsafe { v.set_len(len) };
    v
}

fn dims(t: &FlexTensor) -> &[usize] {
    t.layout().shape().as_slice()
}

// ---------------------------------------------------------------------------------------------
// Linear: y = x·W + b, x [M, K], W [K, N], b [N].
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct LinearState {
    x: FlexTensor,
    w: FlexTensor,
}

fn linear_forward(x: &FlexTensor, w: &FlexTensor, b: &FlexTensor) -> Option<(FlexTensor, LinearState)> {
    let (xs, ws, bs) = (f32_slice(x)?, f32_slice(w)?, f32_slice(b)?);
    let (&[m, k], &[k2, n]) = (dims(x), dims(w)) else {
        return None;
    };
    if k != k2 || bs.len() != n || n == 0 {
        return None;
    }
    let mut y: Vec<f32> = Vec::with_capacity(m * n);
    // The bias is the product's starting value: one write of the output, no separate add.
    y.spare_capacity_mut()[..m * n]
        .par_chunks_mut(rows_per_task(n) * n)
        .for_each(|chunk| {
            for row in chunk.chunks_exact_mut(n) {
                for (o, &v) in row.iter_mut().zip(bs) {
                    *o = MaybeUninit::new(v);
                }
            }
        });
    // SAFETY: every row was set to the bias just above.
    unsafe { y.set_len(m * n) };
    // SAFETY: `y` is an initialised, exclusively borrowed m×n row-major buffer.
    unsafe {
        gemm_into(
            y.as_mut_ptr(),
            n,
            Mat::rows(xs, 0, m, k, k),
            Mat::rows(ws, 0, k, n, n),
            true,
            true,
        )
    };
    let state = LinearState {
        x: x.clone(),
        w: w.clone(),
    };
    Some((tensor(y, [m, n]), state))
}

#[derive(Debug)]
struct LinearOp;

impl Backward<Flex, 3> for LinearOp {
    type State = LinearState;

    fn backward(self, ops: Ops<LinearState, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = dense(grads.consume::<Flex>(&ops.node));
        let [px, pw, pb] = ops.parents;
        let (gs, xs, ws) = (values(&g), values(&ops.state.x), values(&ops.state.w));
        let (&[m, k], &[_, n]) = (dims(&ops.state.x), dims(&ops.state.w)) else {
            unreachable!("linear operands are matrices")
        };
        let gm = Mat::rows(gs, 0, m, n, n);
        if let Some(node) = px {
            // dx = g·Wᵀ
            // SAFETY: `filled` hands over an m×k buffer; gemm writes all of it.
            let dx = unsafe {
                filled(m * k, |o| {
                    gemm_into(o.at(0), k, gm, Mat::rows(ws, 0, k, n, n).t(), false, true)
                })
            };
            grads.register::<Flex>(node.id, tensor(dx, [m, k]));
        }
        if let Some(node) = pw {
            // dW = xᵀ·g
            // SAFETY: as above, a k×n buffer.
            let dw = unsafe {
                filled(k * n, |o| {
                    gemm_into(o.at(0), n, Mat::rows(xs, 0, m, k, k).t(), gm, false, true)
                })
            };
            grads.register::<Flex>(node.id, tensor(dw, [k, n]));
        }
        if let Some(node) = pb {
            // db = Σ_rows g, one partial sum per task.
            let partials = gs
                .par_chunks(rows_per_task(n) * n)
                .map(|chunk| {
                    let mut acc = vec![0.0f32; n];
                    for row in chunk.chunks_exact(n) {
                        for (a, &v) in acc.iter_mut().zip(row) {
                            *a += v;
                        }
                    }
                    acc
                })
                .collect();
            let db = sum_partials(partials, n);
            grads.register::<Flex>(node.id, tensor(db, [n]));
        }
    }
}

/// `x·W + b` on Flex / Autodiff<Flex>; the inputs back on any other backend or shape.
#[allow(clippy::type_complexity)]
pub fn linear<B: Backend>(
    x: Tensor<B, 2>,
    w: Tensor<B, 2>,
    b: Tensor<B, 1>,
) -> Result<Tensor<B, 2>, (Tensor<B, 2>, Tensor<B, 2>, Tensor<B, 1>)> {
    apply3((x, w, b), linear_forward, LinearOp)
}

// ---------------------------------------------------------------------------------------------
// Attention core: ctx = softmax(q·kᵀ·scale)·v per head; q, ctx [B, Tq, H·hd], k, v [B, Tk, H·hd].
// ---------------------------------------------------------------------------------------------

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
        let ok =
            b == bk && d == dk && dims(v) == [b, tk, d] && heads > 0 && d % heads == 0 && tq > 0 && tk > 0;
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
        for (((parent, mut buf), size), shape) in [pq, pk, pv].into_iter().zip(bufs).zip(sizes).zip(shapes) {
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

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{Distribution, Tensor, TensorData, Tolerance};

    type A = Autodiff<Flex>;

    fn random<const D: usize>(shape: [usize; D]) -> Tensor<Flex, D> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
    }

    /// Gradients of `Σ f(inputs)⊙g` for each input that requires grad (`None` for the others).
    fn grads<const D: usize, const O: usize>(
        inputs: &[Tensor<Flex, D>],
        tracked: &[bool],
        g: &Tensor<Flex, O>,
        f: impl Fn(Vec<Tensor<A, D>>) -> Tensor<A, O>,
    ) -> Vec<Option<TensorData>> {
        let ad: Vec<Tensor<A, D>> = inputs
            .iter()
            .zip(tracked)
            .map(|(t, &on)| {
                let t = Tensor::<A, D>::from_inner(t.clone());
                if on {
                    t.require_grad()
                } else {
                    t
                }
            })
            .collect();
        let loss = (f(ad.clone()) * Tensor::from_inner(g.clone())).sum();
        let gr = loss.backward();
        ad.iter().map(|t| t.grad(&gr).map(|t| t.into_data())).collect()
    }

    fn assert_same(fused: Vec<Option<TensorData>>, reference: Vec<Option<TensorData>>, tol: f32) {
        assert_eq!(fused.len(), reference.len());
        for (i, (f, r)) in fused.into_iter().zip(reference).enumerate() {
            match (f, r) {
                (Some(f), Some(r)) => f.assert_approx_eq::<f32>(&r, Tolerance::absolute(tol)),
                (None, None) => {}
                (f, r) => panic!(
                    "input {i}: fused grad {:?} vs reference {:?}",
                    f.is_some(),
                    r.is_some()
                ),
            }
        }
    }

    #[test]
    fn linear_matches_burns_linear_forward_and_tracked_gradients() {
        // 300×200·200×70: above the parallel-gemm threshold; 3×5·5×2: far below it.
        for (m, k, n) in [(300usize, 200usize, 70usize), (3, 5, 2)] {
            let (x, w) = (random([m, k]), random([k, n]));
            let b = random([n]);
            let want = burn::tensor::module::linear(x.clone(), w.clone(), Some(b.clone()));
            let Ok(y) = super::linear(x.clone(), w.clone(), b.clone()) else {
                panic!("the fused linear declined a contiguous f32 input")
            };
            y.into_data()
                .assert_approx_eq::<f32>(&want.into_data(), Tolerance::absolute(1e-4));

            let g = random([m, n]);
            // Everything trained, then a frozen weight and bias (prompt tuning's case).
            for tracked in [[true, true, true], [true, false, false], [false, true, true]] {
                // x and W gradients here; the bias gradient has its own test below.
                let run = |fused: bool| {
                    grads(&[x.clone(), w.clone()], &tracked[..2], &g, |t| {
                        let bias = Tensor::<A, 1>::from_inner(b.clone());
                        let bias = if tracked[2] { bias.require_grad() } else { bias };
                        if fused {
                            crate::kernels::linear(t[0].clone(), t[1].clone(), Some(bias))
                        } else {
                            burn::tensor::module::linear(t[0].clone(), t[1].clone(), Some(bias))
                        }
                    })
                };
                assert_same(run(true), run(false), 1e-3);
            }
        }
    }

    #[test]
    fn linear_bias_gradient_matches_burn() {
        let (x, w, b, g) = (random([40, 8]), random([8, 6]), random([6]), random([40, 6]));
        let run = |fused: bool| {
            grads(std::slice::from_ref(&b), &[true], &g, |t| {
                let (x, w) = (
                    Tensor::<A, 2>::from_inner(x.clone()),
                    Tensor::<A, 2>::from_inner(w.clone()),
                );
                if fused {
                    crate::kernels::linear(x, w, Some(t[0].clone()))
                } else {
                    burn::tensor::module::linear(x, w, Some(t[0].clone()))
                }
            })
        };
        assert_same(run(true), run(false), 1e-4);
    }

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
            let Ok(ctx) = super::attention(qkv[0].clone(), qkv[1].clone(), qkv[2].clone(), heads, scale)
            else {
                panic!("the fused attention declined contiguous f32 inputs")
            };
            ctx.into_data()
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
                            crate::kernels::attention(q, k, v, heads, scale)
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
