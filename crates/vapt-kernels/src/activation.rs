//! Activations: exact (erf) GELU and the scaled softmax of attention, forward and backward.
//!
//! Burn 0.21's Flex computes GELU with a scalar, single-threaded `erff` per element and softmax as
//! five separate tensor ops; here each is one vectorised, multi-threaded pass per direction (GELU
//! with the Abramowitz–Stegun 7.1.26 erf, absolute error ≤ 1.5·10⁻⁷, the approximation PyTorch's
//! vectorised CPU GELU uses).

use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// Exact (erf) GELU, `x·Φ(x)`, whose gradient is exact on every backend.
///
/// Burn 0.21's default `gelu_backward`, which the CubeCL backends (WGPU, CUDA) inherit,
/// differentiates the *tanh approximation* (measured: 3e-4 relative error against the exact
/// derivative), while Flex and LibTorch override it with the exact one. On other autodiff backends
/// GELU is therefore composed as `x · ½(1 + erf(x/√2))`, whose backward goes through `erf`'s exact
/// derivative; everywhere else Burn's fused op is used, and on Flex vapt's own kernel.
pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    #[cfg(feature = "flex")]
    let x = match flex::gelu(x) {
        Ok(y) => return y,
        Err(x) => x,
    };
    let device = x.device();
    if !B::ad_enabled(&device) || fused_gelu_backward_is_exact(&B::name(&device)) {
        return burn::tensor::activation::gelu(x);
    }
    let cdf = x
        .clone()
        .div_scalar(std::f64::consts::SQRT_2)
        .erf()
        .add_scalar(1.0)
        .mul_scalar(0.5);
    x * cdf
}

/// Backends (by `Backend::name`) whose fused `gelu_backward` is the exact derivative.
fn fused_gelu_backward_is_exact(name: &str) -> bool {
    let inner = name.strip_prefix("autodiff<").unwrap_or(name);
    inner.starts_with("flex") || inner.starts_with("tch")
}

/// `softmax(x · scale)` over the last dimension, fused on Flex.
pub fn scaled_softmax<B: Backend, const D: usize>(x: Tensor<B, D>, scale: f32) -> Tensor<B, D> {
    #[cfg(feature = "flex")]
    let x = match flex::scaled_softmax(x, scale) {
        Ok(y) => return y,
        Err(x) => x,
    };
    softmax(x.mul_scalar(scale), D - 1)
}

#[cfg(feature = "flex")]
pub(crate) use flex::{softmax_grad_rows_in_place, softmax_rows_in_place};

#[cfg(feature = "flex")]
mod flex {
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{unary, Backward, Ops};
    use burn::backend::flex::{Flex, FlexTensor};
    use burn::tensor::backend::Backend;
    use burn::tensor::ops::ActivationOps;
    use burn::tensor::Tensor;
    use rayon::prelude::*;

    use crate::dispatch::{
        apply1, dense, f32_slice, multiversion, new_like, rows_per_task, values, zeroed, CHUNK,
    };
    use crate::math;

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
        pub(crate) fn softmax_rows_in_place(x: &mut [f32], len: usize, scale: f32) {
            for row in x.chunks_exact_mut(len) {
                math::softmax_row_in_place(row, scale);
            }
        }
    );

    multiversion!(
        pub(crate) fn softmax_grad_rows_in_place(y: &[f32], g: &mut [f32], len: usize, scale: f32) {
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

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{Distribution, Tensor, TensorData, Tolerance};

    use super::*;

    type A = Autodiff<Flex>;

    #[test]
    fn gelu_has_the_exact_erf_derivative() {
        let xs = vec![-3.0f32, -1.0, -0.3, 0.0, 0.4, 1.5, 2.5];
        let x = Tensor::<A, 1>::from_data(TensorData::new(xs.clone(), [xs.len()]), &Default::default())
            .require_grad();
        let y = gelu(x.clone());
        let g = x.grad(&y.clone().sum().backward()).unwrap();
        let g = g.into_data().convert::<f32>().into_vec::<f32>().unwrap();
        let y = y.into_data().convert::<f32>().into_vec::<f32>().unwrap();
        // Reference values of x·Φ(x) and Φ(x) + x·φ(x) (computed in f64 with math.erf).
        let expect_y = [
            -0.0040497, -0.1586553, -0.1146266, 0.0, 0.2621687, 1.3997892, 2.4844758,
        ];
        let expect_g = [
            -0.0119456, -0.0833155, 0.2676722, 0.5, 0.8027298, 1.1274692, 1.0376111,
        ];
        for i in 0..xs.len() {
            assert!((y[i] - expect_y[i]).abs() < 2e-6, "gelu({}) = {}", xs[i], y[i]);
            assert!((g[i] - expect_g[i]).abs() < 2e-6, "gelu'({}) = {}", xs[i], g[i]);
        }
    }

    #[test]
    fn only_backends_with_an_exact_fused_backward_use_it() {
        assert!(fused_gelu_backward_is_exact("autodiff<flex>"));
        assert!(fused_gelu_backward_is_exact("flex"));
        assert!(!fused_gelu_backward_is_exact("autodiff<fusion<jit<wgpu>>>"));
        assert!(!fused_gelu_backward_is_exact("autodiff<cuda>"));
    }

    /// Wide-range inputs (fixed, so a comparison that passes once always passes), plus the exact
    /// values where the formulas switch branch.
    fn inputs<B: Backend>(shape: [usize; 3]) -> Tensor<B, 3> {
        let n: usize = shape.iter().product();
        // A deterministic spread over about ±12 (sums of two hashed uniforms, scaled).
        let mut v: Vec<f32> = (0..n as u64)
            .map(|i| {
                let u = |k: u64| {
                    ((i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ k).wrapping_mul(0xBF58_476D_1CE4_E5B9) >> 40)
                        as f32
                        / (1u64 << 24) as f32
                };
                12.0 * (u(1) + u(2) - 1.0)
            })
            .collect();
        for (i, e) in [0.0f32, -0.0, 1e-8, -1e-8, 9.0, -9.0, 30.0, -30.0, 100.0, -100.0]
            .iter()
            .enumerate()
        {
            v[i] = *e;
        }
        Tensor::from_data(TensorData::new(v, shape), &Default::default())
    }

    #[test]
    fn gelu_matches_burns_exact_gelu_forward_and_backward() {
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
    fn scaled_softmax_matches_burns_softmax_forward_and_backward() {
        // Rows of 207 (the ViT-B/16 + 10 prompts sequence) and of 5 (shorter than one SIMD lane).
        for len in [207usize, 5] {
            let x = inputs::<Flex>([4, 6, len]);
            let scale = 0.125f32;
            let want = burn::tensor::activation::softmax(x.clone().mul_scalar(scale), 2);
            // Probabilities near 1 differ by a few ulp (exp's error, then the division).
            scaled_softmax(x.clone(), scale)
                .into_data()
                .assert_approx_eq::<f32>(&want.into_data(), Tolerance::rel_abs(2e-6, 1e-6));

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
