//! The classifier head on the backbone's features (SPEC §4.3): `logits = x · Wᵀ + b` with `W`
//! `[C, D]` (PyTorch layout, as in the fixtures), Kaiming-normal (fan-out) weight and the bias
//! −ln 99.

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::module::linear;
use burn::tensor::{Distribution, Tensor};

/// The classifier; module paths `head.weight`, `head.bias`.
#[derive(Module, Debug)]
pub struct Head<B: Backend> {
    /// `head.weight`, `[C, D]`.
    pub weight: Param<Tensor<B, 2>>,
    /// `head.bias`, `[C]`.
    pub bias: Param<Tensor<B, 1>>,
}

/// The head tensors for `classes` classes on `d` features (none without classes), with their
/// shapes.
pub fn shapes(classes: usize, d: usize) -> Vec<(String, Vec<usize>)> {
    if classes == 0 {
        return Vec::new();
    }
    vec![
        ("head.weight".to_string(), vec![classes, d]),
        ("head.bias".to_string(), vec![classes]),
    ]
}

impl<B: Backend> Head<B> {
    /// A fresh head for `classes` classes on `d` features, or `None` for 0 classes: Kaiming
    /// normal, mode fan_out (= C for a (C, D) weight), gain √2; bias −ln 99 (the official
    /// `special_bias`).
    pub fn new(classes: usize, d: usize, device: &B::Device) -> Option<Self> {
        (classes > 0).then(|| {
            let std = (2.0 / classes as f64).sqrt();
            Self {
                weight: Param::from_tensor(Tensor::random(
                    [classes, d],
                    Distribution::Normal(0.0, std),
                    device,
                )),
                bias: Param::from_tensor(Tensor::full([classes], -(99f64.ln()), device)),
            }
        })
    }

    /// `[B, D]` → `[B, C]`.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        linear(x, self.weight.val().transpose(), Some(self.bias.val()))
    }
}
