//! # vapt-kernels
//!
//! The operations of vapt's Vision Transformer, backend-generic: on Burn's pure-Rust CPU backend
//! (`Flex`, plain or under `Autodiff`) on f32 data they run vapt's own fused, vectorised
//! (AVX-512 / AVX2 picked at run time), multi-threaded kernels with their own backward, which
//! computes only the gradients of tracked inputs; on every other backend (WGPU, CUDA, …), dtype or
//! layout they are Burn's own ops. Without the `flex` feature (default on) every function is
//! Burn's op everywhere.
//!
//! | kind | functions (file) |
//! |---|---|
//! | dispatch | the `TypeId` check and primitive moves shared by all kernels (`dispatch.rs`) |
//! | element-wise maths | `exp`, normal CDF, softmax and LayerNorm rows (`math.rs`) |
//! | activations | [`gelu`] (exact, exact gradient on every backend), [`scaled_softmax`] (`activation.rs`) |
//! | normalisation | [`layer_norm`] (`norm.rs`) |
//! | matrix products | [`linear`] (`linear.rs`, on the shared `gemm.rs`) |
//! | attention | [`attention`], [`attention_probs`], [`attention_context`] (`attention.rs`) |
//! | token layout | [`swap_dims_12`], [`narrow_tokens`], [`replace_tokens`] (`layout.rs`) |
//! | convolution | [`depthwise_conv`] (`conv.rs`) |
//! | dropout | [`dropout`], [`dropout2d`], [`scale_channels`] (`dropout.rs`) |
//! | modules | [`nn::Linear`], [`nn::LayerNorm`], [`nn::Dropout`] (`nn.rs`) |
//!
//! `docs/benchmarks.md` has the profile that motivated each kernel.

mod activation;
mod attention;
mod conv;
#[cfg(feature = "flex")]
mod dispatch;
mod dropout;
#[cfg(feature = "flex")]
mod gemm;
mod layout;
mod linear;
#[cfg(feature = "flex")]
mod math;
pub mod nn;
mod norm;

pub use activation::{gelu, scaled_softmax};
pub use attention::{attention, attention_context, attention_probs};
pub use conv::depthwise_conv;
pub use dropout::{dropout, dropout2d, scale_channels};
pub use layout::{narrow_tokens, replace_tokens, swap_dims_12};
pub use linear::linear;
pub use norm::layer_norm;

/// Whether vapt's own kernels serve backend `B` (f32 tensors assumed): `Flex` or `Autodiff<Flex>`
/// with the `flex` feature on.
pub fn fused_on<B: burn::tensor::backend::Backend>() -> bool {
    #[cfg(feature = "flex")]
    {
        dispatch::serves::<B>()
    }
    #[cfg(not(feature = "flex"))]
    {
        false
    }
}

/// Helpers shared by the kernels' tests: each kernel is compared with Burn's own ops on the same
/// inputs, values and gradients.
#[cfg(test)]
mod test_util {
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{Distribution, Tensor, TensorData, Tolerance};

    pub type A = Autodiff<Flex>;

    /// Standard-normal values.
    pub fn random<const D: usize>(shape: [usize; D]) -> Tensor<Flex, D> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
    }

    /// Gradients of `Σ f(inputs)⊙g` for each input that requires grad (`None` for the others).
    pub fn grads<const D: usize, const O: usize>(
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

    /// The same gradients (present for the same inputs) within `tol`.
    pub fn assert_same(fused: Vec<Option<TensorData>>, reference: Vec<Option<TensorData>>, tol: f32) {
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

    #[cfg(feature = "flex")]
    #[test]
    fn the_fused_kernels_serve_flex_and_autodiff_flex_only() {
        assert!(crate::fused_on::<Flex>());
        assert!(crate::fused_on::<A>());
    }
}
