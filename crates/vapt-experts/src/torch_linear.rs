//! A linear layer in PyTorch's layout — weight `[out, in]`, `y = x · Wᵀ + b` — for the modules
//! whose tensors are named and shaped as the authors' (or peft's) are: adapters, LoRA factors, the
//! MLP head. Its module paths are `weight` and `bias`, so a tensor's name in a file is its path.

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::module::linear;
use burn::tensor::{Distribution, Tensor};

/// `y = x · Wᵀ + b`, `W` `[out, in]`.
#[derive(Module, Debug)]
pub struct TorchLinear<B: Backend> {
    /// `[out, in]`.
    pub weight: Param<Tensor<B, 2>>,
    /// `[out]`, if the layer has one.
    pub bias: Option<Param<Tensor<B, 1>>>,
}

/// How a [`TorchLinear`]'s tensors start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Every value zero.
    Zeros,
    /// PyTorch's `nn.Linear` default: weight and bias from U(−1/√in, 1/√in) (Kaiming-uniform with
    /// a = √5).
    TorchDefault,
    /// Kaiming normal, mode fan_out, gain √2 (std √(2 / out)); bias as `TorchDefault`.
    KaimingFanOut,
}

impl<B: Backend> TorchLinear<B> {
    /// An `inp → out` layer (with a bias if `bias`) initialised as `init` says.
    pub fn new(inp: usize, out: usize, bias: bool, init: Init, device: &B::Device) -> Self {
        let bound = 1.0 / (inp.max(1) as f64).sqrt();
        let uniform = Distribution::Uniform(-bound, bound);
        let weight = match init {
            Init::Zeros => Tensor::zeros([out, inp], device),
            Init::TorchDefault => Tensor::random([out, inp], uniform, device),
            Init::KaimingFanOut => Tensor::random(
                [out, inp],
                Distribution::Normal(0.0, (2.0 / out.max(1) as f64).sqrt()),
                device,
            ),
        };
        let bias = bias.then(|| {
            Param::from_tensor(match init {
                Init::Zeros => Tensor::zeros([out], device),
                _ => Tensor::random([out], uniform, device),
            })
        });
        Self {
            weight: Param::from_tensor(weight),
            bias,
        }
    }

    /// `[.., in]` → `[.., out]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        linear(
            x,
            self.weight.val().transpose(),
            self.bias.as_ref().map(|b| b.val()),
        )
    }
}

/// The tensors of a layer at `path`, `inp → out`, with their shapes.
pub fn shapes(path: &str, inp: usize, out: usize, bias: bool) -> Vec<(String, Vec<usize>)> {
    let mut v = vec![(format!("{path}.weight"), vec![out, inp])];
    if bias {
        v.push((format!("{path}.bias"), vec![out]));
    }
    v
}
