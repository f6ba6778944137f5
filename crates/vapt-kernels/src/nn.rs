//! Small nn modules whose `forward` runs this crate's operations, so model code reads as ordinary
//! Burn (`self.fc1.forward(x)`) while the kernel-or-Burn choice stays here.
//!
//! Field names are the tensor names checkpoints use (`weight`, `bias`), so a module's path *is* its
//! key in vapt's native weight layout (`blocks.3.attn.query.weight`). Initialisation is Burn's
//! (`LinearConfig`, `LayerNormConfig`), so a model built from these draws the same random numbers
//! as one built from Burn's modules.

use burn::module::{Module, Param};
use burn::nn::{LayerNormConfig, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// `y = x·W + b` on the last dimension, any rank (Burn's row layout: `W` is `[d_in, d_out]`).
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    /// `[d_in, d_out]`.
    pub weight: Param<Tensor<B, 2>>,
    /// `[d_out]`, if the layer has a bias.
    pub bias: Option<Param<Tensor<B, 1>>>,
}

impl<B: Backend> Linear<B> {
    /// A layer with a bias, initialised as Burn's `LinearConfig::new(d_in, d_out)` (lazily, with
    /// Kaiming-uniform weight and bias).
    pub fn new(d_in: usize, d_out: usize, device: &B::Device) -> Self {
        let l = LinearConfig::new(d_in, d_out).init::<B>(device);
        Self {
            weight: l.weight,
            bias: l.bias,
        }
    }

    /// `[.., d_in]` → `[.., d_out]`, computed as one `[M, d_in]` matrix product whatever the rank
    /// (Burn's `Linear` broadcasts a rank-3 input into a batched product: B small products and, when
    /// the weight trains, B weight gradients that are then summed; same numbers).
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let mut dims = x.dims();
        let d_in = dims[D - 1];
        let rows = dims[..D - 1].iter().product();
        let y = crate::linear(
            x.reshape([rows, d_in]),
            self.weight.val(),
            self.bias.as_ref().map(Param::val),
        );
        dims[D - 1] = y.dims()[1];
        y.reshape(dims)
    }
}

/// LayerNorm over the last dimension with an affine map; `eps` is part of the module.
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    /// γ, `[d]`.
    pub weight: Param<Tensor<B, 1>>,
    /// β, `[d]`.
    pub bias: Param<Tensor<B, 1>>,
    /// ε added to the variance.
    pub eps: f64,
}

impl<B: Backend> LayerNorm<B> {
    /// γ = 1, β = 0 (Burn's `LayerNormConfig` initialisation) with the given `eps`.
    pub fn new(d: usize, eps: f64, device: &B::Device) -> Self {
        let n = LayerNormConfig::new(d).with_epsilon(eps).init::<B>(device);
        Self {
            weight: n.gamma,
            bias: n
                .beta
                .unwrap_or_else(|| Param::from_tensor(Tensor::zeros([d], device))),
            eps,
        }
    }

    /// Normalises `[.., d]` row by row.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        crate::layer_norm(x, self.weight.val(), self.bias.val(), self.eps)
    }
}

/// Dropout with probability `prob`, active only while training on an autodiff backend.
#[derive(Module, Clone, Debug)]
pub struct Dropout {
    /// Probability of zeroing an element.
    pub prob: f64,
}

impl Dropout {
    /// Dropout with probability `prob`.
    pub fn new(prob: f64) -> Self {
        Self { prob }
    }

    /// `x` with elements zeroed with probability `prob` and the rest scaled by 1/(1 − prob).
    pub fn forward<B: Backend, const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        crate::dropout(x, self.prob)
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;
    use burn::nn::{LayerNormConfig, LinearConfig};
    use burn::tensor::{Distribution, Tensor, Tolerance};

    use super::*;

    #[test]
    fn linear_and_layer_norm_compute_what_burns_modules_compute() {
        let dev = Default::default();
        let ours = Linear::<Flex>::new(6, 4, &dev);
        // Burn's Kaiming-uniform initialisation (gain 1/√3): U(±1/√d_in).
        let w = ours.weight.val().into_data().to_vec::<f32>().unwrap();
        assert!(w.iter().all(|v| v.abs() <= 1.0 / 6f32.sqrt()), "{w:?}");
        let mut burns = LinearConfig::new(6, 4).init::<Flex>(&dev);
        burns.weight = Param::from_tensor(ours.weight.val());
        burns.bias = ours.bias.as_ref().map(|b| Param::from_tensor(b.val()));
        let x = Tensor::<Flex, 3>::random([2, 5, 6], Distribution::Normal(0.0, 1.0), &dev);
        ours.forward(x.clone())
            .into_data()
            .assert_approx_eq::<f32>(&burns.forward(x.clone()).into_data(), Tolerance::absolute(1e-5));

        let ln = LayerNorm::<Flex>::new(6, 1e-6, &dev);
        let reference = LayerNormConfig::new(6).with_epsilon(1e-6).init::<Flex>(&dev);
        ln.forward(x.clone())
            .into_data()
            .assert_approx_eq::<f32>(&reference.forward(x).into_data(), Tolerance::absolute(1e-5));
    }
}
