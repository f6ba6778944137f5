//! LayerNorm over the last dimension, forward and backward (`x`, `gamma`, `beta`): one pass per row
//! on Flex (Burn's is decomposed into mean, centring, variance, division and the affine map, each
//! with its own backward); Burn's `layer_norm` op elsewhere.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};

/// `(x − μ)/√(σ² + eps) · gamma + beta` over the last dimension (biased variance), as Burn's
/// `LayerNorm` computes it; fused on Flex.
pub fn layer_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, D> {
    #[cfg(feature = "flex")]
    let (x, gamma, beta) = match flex::layer_norm(x, gamma, beta, eps as f32) {
        Ok(y) => return y,
        Err(back) => back,
    };
    Tensor::from_primitive(TensorPrimitive::Float(B::layer_norm(
        x.into_primitive().tensor(),
        gamma.into_primitive().tensor(),
        Some(beta.into_primitive().tensor()),
        eps,
    )))
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

    use crate::dispatch::{
        apply3, dense, f32_slice, multiversion, new_like, rows_per_task, sum_partials, tensor, values, zeroed,
    };
    use crate::math;

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
}

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, Flex};
    use burn::nn::LayerNormConfig;
    use burn::tensor::{Distribution, Tensor, Tolerance};

    use super::*;

    type A = Autodiff<Flex>;

    #[test]
    fn layer_norm_matches_burns_forward_and_all_three_gradients() {
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
