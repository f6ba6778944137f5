//! The linear layer `x·W + b` (`x` `[M, K]`, `W` `[K, N]`): on Flex the bias is the product's
//! starting value and the output is written once; the backward computes only the gradients that
//! are tracked. Elsewhere it is Burn's `linear`.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// `x·weight + bias` (`x` `[M, K]`, `weight` `[K, N]`), Burn's `linear`. On Flex the bias is the
/// product's starting value and the output is written once; the backward computes only the
/// gradients that are tracked.
pub fn linear<B: Backend>(x: Tensor<B, 2>, weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) -> Tensor<B, 2> {
    #[cfg(feature = "flex")]
    let (x, weight, bias) = match bias {
        Some(b) => match flex::linear(x, weight, b) {
            Ok(y) => return y,
            Err((x, w, b)) => (x, w, Some(b)),
        },
        None => (x, weight, None),
    };
    burn::tensor::module::linear(x, weight, bias)
}

#[cfg(feature = "flex")]
mod flex {
    use std::mem::MaybeUninit;

    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops};
    use burn::backend::flex::{Flex, FlexTensor};
    use burn::tensor::backend::Backend;
    use burn::tensor::Tensor;
    use rayon::prelude::*;

    use crate::dispatch::{apply3, dense, f32_slice, rows_per_task, sum_partials, tensor, values};
    use crate::gemm::{dims, filled, gemm_into, Mat};

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
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Tensor, Tolerance};

    use crate::test_util::{assert_same, grads, random, A};

    #[test]
    fn linear_matches_burns_linear_forward_and_tracked_gradients() {
        // 300×200·200×70: above the parallel-gemm threshold; 3×5·5×2: far below it.
        for (m, k, n) in [(300usize, 200usize, 70usize), (3, 5, 2)] {
            let (x, w) = (random([m, k]), random([k, n]));
            let b = random([n]);
            let want = burn::tensor::module::linear(x.clone(), w.clone(), Some(b.clone()));
            super::linear(x.clone(), w.clone(), Some(b.clone()))
                .into_data()
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
                            crate::linear(t[0].clone(), t[1].clone(), Some(bias))
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
                    crate::linear(x, w, Some(t[0].clone()))
                } else {
                    burn::tensor::module::linear(x, w, Some(t[0].clone()))
                }
            })
        };
        assert_same(run(true), run(false), 1e-4);
    }
}
