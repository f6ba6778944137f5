//! MLP-k (VPT's baseline): the classifier is a k-layer MLP on the frozen features — k − 1 hidden
//! layers of width D, each Linear → ReLU → BatchNorm1d → Dropout(0.1) as in the authors' `MLP`
//! class, then the usual head ([`crate::Head`], the k-th layer). Hidden weights are Kaiming normal
//! (fan_out, gain √2), their biases PyTorch's default; BatchNorm starts at γ = 1, β = 0 with
//! running mean 0 and variance 1.
//!
//! Module paths `mlp.layers.{j}.fc.{weight,bias}`, `mlp.layers.{j}.bn.{weight,bias}` (trainable)
//! and `mlp.layers.{j}.bn.{running_mean,running_var}` (buffers, saved in artifacts, not counted);
//! external names drop the `layers.`.

use burn::module::{Module, Param, RunningState};
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use vapt_kernels::nn::Dropout;

use crate::torch_linear::{self, Init, TorchLinear};

/// Dropout after each hidden layer (the authors' `MLP` default).
pub const HIDDEN_DROPOUT: f64 = 0.1;
/// BatchNorm ε (PyTorch's default).
pub const BN_EPS: f64 = 1e-5;
/// BatchNorm momentum of the running statistics (PyTorch's default).
pub const BN_MOMENTUM: f64 = 0.1;

/// PyTorch's `BatchNorm1d` on `[B, D]`: batch statistics while training (the running variance is
/// updated with the unbiased batch variance, as PyTorch does), running statistics in eval.
#[derive(Module, Debug)]
pub struct BatchNorm1d<B: Backend> {
    /// γ, `[D]`.
    pub weight: Param<Tensor<B, 1>>,
    /// β, `[D]`.
    pub bias: Param<Tensor<B, 1>>,
    /// Running mean, `[D]`.
    pub running_mean: RunningState<Tensor<B, 1>>,
    /// Running variance, `[D]`.
    pub running_var: RunningState<Tensor<B, 1>>,
}

impl<B: Backend> BatchNorm1d<B> {
    fn new(d: usize, device: &B::Device) -> Self {
        Self {
            weight: Param::from_tensor(Tensor::ones([d], device)),
            bias: Param::from_tensor(Tensor::zeros([d], device)),
            running_mean: RunningState::new(Tensor::zeros([d], device)),
            running_var: RunningState::new(Tensor::ones([d], device)),
        }
    }

    /// `[B, D]` → `[B, D]`.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let device = x.device();
        let [n, _] = x.dims();
        let (mean, var) = if B::ad_enabled(&device) && n > 1 {
            let mean = x.clone().mean_dim(0);
            let var = (x.clone() - mean.clone()).square().mean_dim(0);
            let m = BN_MOMENTUM;
            let unbiased = var.clone().detach().mul_scalar(n as f64 / (n - 1) as f64);
            let running_mean = self.running_mean.value_sync().mul_scalar(1.0 - m)
                + mean.clone().detach().squeeze_dim::<1>(0).mul_scalar(m);
            let running_var = self.running_var.value_sync().mul_scalar(1.0 - m)
                + unbiased.squeeze_dim::<1>(0).mul_scalar(m);
            self.running_mean.update(running_mean.detach());
            self.running_var.update(running_var.detach());
            // Commit the update now, so that visitors (artifacts, checkpoints) read it.
            let _ = (self.running_mean.value_sync(), self.running_var.value_sync());
            (mean, var)
        } else {
            (
                self.running_mean.value().unsqueeze::<2>(),
                self.running_var.value().unsqueeze::<2>(),
            )
        };
        (x - mean) / (var + BN_EPS).sqrt() * self.weight.val().unsqueeze::<2>()
            + self.bias.val().unsqueeze::<2>()
    }
}

/// One hidden layer: Linear → ReLU → BatchNorm1d.
#[derive(Module, Debug)]
pub struct HiddenLayer<B: Backend> {
    /// `D → D`.
    pub fc: TorchLinear<B>,
    /// The normalisation after the activation.
    pub bn: BatchNorm1d<B>,
}

/// The hidden layers of an MLP head.
#[derive(Module, Debug)]
pub struct MlpHead<B: Backend> {
    /// The k − 1 hidden layers, input side first.
    pub layers: Vec<HiddenLayer<B>>,
    /// Dropout after each hidden layer (training only).
    pub drop: Dropout,
}

impl<B: Backend> MlpHead<B> {
    /// The hidden part of a `layers`-layer MLP head on `d` features (`None` for `layers` ≤ 1).
    pub fn new(layers: usize, d: usize, device: &B::Device) -> Option<Self> {
        (layers > 1).then(|| Self {
            layers: (1..layers)
                .map(|_| HiddenLayer {
                    fc: TorchLinear::new(d, d, true, Init::KaimingFanOut, device),
                    bn: BatchNorm1d::new(d, device),
                })
                .collect(),
            drop: Dropout::new(HIDDEN_DROPOUT),
        })
    }

    /// Features `[B, D]` → the head's input `[B, D]`.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.layers
            .iter()
            .fold(x, |x, l| self.drop.forward(l.bn.forward(relu(l.fc.forward(x)))))
    }
}

/// The trainable tensors of the hidden layers of a `layers`-layer head on `d` features.
pub fn shapes(layers: usize, d: usize) -> Vec<(String, Vec<usize>)> {
    let mut v = Vec::new();
    for j in 0..layers.saturating_sub(1) {
        v.extend(torch_linear::shapes(&format!("mlp.{j}.fc"), d, d, true));
        v.push((format!("mlp.{j}.bn.weight"), vec![d]));
        v.push((format!("mlp.{j}.bn.bias"), vec![d]));
    }
    v
}

/// The buffers (BatchNorm running statistics) of the same head: saved, never trained or counted.
pub fn buffer_shapes(layers: usize, d: usize) -> Vec<(String, Vec<usize>)> {
    let mut v = Vec::new();
    for j in 0..layers.saturating_sub(1) {
        v.push((format!("mlp.{j}.bn.running_mean"), vec![d]));
        v.push((format!("mlp.{j}.bn.running_var"), vec![d]));
    }
    v
}
