//! Pfeiffer adapters (the authors' `adapter` transfer type): in every block, after the MLP and
//! before its residual addition, `m ← m + up(GELU(down(m)))` with `down` D → D / reduction and
//! `up` back, both with biases, exact erf GELU.
//!
//! Initialisation. The authors set all four tensors to zero, so a fresh adapter is the identity —
//! and `down`, its bias and `up.weight` then get an exactly zero gradient at every step (the input
//! of `up` is GELU(0) = 0 and the gradient to `down` passes through `up.weight` = 0): only
//! `up.bias` ever trains. [`AdapterInit::Zero`] reproduces that for parity with the paper's
//! numbers; the default, [`AdapterInit::RandomDown`], starts `down` from PyTorch's `nn.Linear`
//! initialisation and `up` at zero — still the identity at step 0, but every tensor trains.
//!
//! Module paths `adapter.blocks.{i}.{down,up}.{weight,bias}` (PyTorch layout: `down.weight`
//! `[r, D]`); external names `adapter.{i}.…`.

use std::fmt;
use std::str::FromStr;

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};
use vapt_vit::VitConfig;

use crate::error::ConfigError;
use crate::torch_linear::{self, Init, TorchLinear};

/// How adapters start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdapterInit {
    /// `down` from PyTorch's default init, `up` zero: the identity at step 0, every tensor trains.
    RandomDown,
    /// The authors' init: all zero; only `up.bias` ever receives a gradient.
    Zero,
}

impl FromStr for AdapterInit {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "random-down" | "random" | "default" => Ok(AdapterInit::RandomDown),
            "zero" | "zeros" | "official" => Ok(AdapterInit::Zero),
            _ => Err(ConfigError::Invalid(format!(
                "unknown adapter init `{s}`: expected random-down or zero"
            ))),
        }
    }
}

impl fmt::Display for AdapterInit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AdapterInit::RandomDown => "random-down",
            AdapterInit::Zero => "zero",
        })
    }
}

/// Adapter knobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdapterConfig {
    /// Reduction factor: the bottleneck is D / reduction wide (integer division, as the authors').
    pub reduction: usize,
    /// Initialisation.
    pub init: AdapterInit,
}

impl Default for AdapterConfig {
    fn default() -> Self {
        Self {
            reduction: 8,
            init: AdapterInit::RandomDown,
        }
    }
}

impl AdapterConfig {
    /// The bottleneck width on a backbone of width `d`.
    pub fn dim(&self, d: usize) -> usize {
        d / self.reduction.max(1)
    }

    /// Checks the knobs against a backbone.
    pub fn validate(&self, vit: &VitConfig) -> Result<(), ConfigError> {
        if self.reduction == 0 || self.dim(vit.hidden) == 0 {
            return Err(ConfigError::Invalid(format!(
                "adapter reduction {} leaves no bottleneck on width {}",
                self.reduction, vit.hidden
            )));
        }
        Ok(())
    }
}

/// One block's adapter.
#[derive(Module, Debug)]
pub struct Adapter<B: Backend> {
    /// `D → r`.
    pub down: TorchLinear<B>,
    /// `r → D`.
    pub up: TorchLinear<B>,
}

impl<B: Backend> Adapter<B> {
    /// The branch `up(GELU(down(m)))` that is added to the MLP output `m`.
    pub fn branch(&self, m: Tensor<B, 3>) -> Tensor<B, 3> {
        self.up.forward(vapt_kernels::gelu(self.down.forward(m)))
    }
}

/// One adapter per block.
#[derive(Module, Debug)]
pub struct Adapters<B: Backend> {
    /// Adapter `i` sits in block `i`.
    pub blocks: Vec<Adapter<B>>,
}

impl<B: Backend> Adapters<B> {
    /// Fresh adapters for every block of `vit`.
    pub fn new(cfg: &AdapterConfig, vit: &VitConfig, device: &B::Device) -> Self {
        let (d, r) = (vit.hidden, cfg.dim(vit.hidden));
        let down_init = match cfg.init {
            AdapterInit::RandomDown => Init::TorchDefault,
            AdapterInit::Zero => Init::Zeros,
        };
        Self {
            blocks: (0..vit.depth)
                .map(|_| Adapter {
                    down: TorchLinear::new(d, r, true, down_init, device),
                    up: TorchLinear::new(r, d, true, Init::Zeros, device),
                })
                .collect(),
        }
    }
}

/// The adapter tensors on `vit`, with their shapes.
pub fn shapes(cfg: &AdapterConfig, vit: &VitConfig) -> Vec<(String, Vec<usize>)> {
    let (d, r) = (vit.hidden, cfg.dim(vit.hidden));
    let mut v = Vec::new();
    for i in 0..vit.depth {
        v.extend(torch_linear::shapes(&format!("adapter.{i}.down"), d, r, true));
        v.extend(torch_linear::shapes(&format!("adapter.{i}.up"), r, d, true));
    }
    v
}
