//! LoRA with peft's conventions: on each targeted projection `W` (`query` and `value` by
//! default), `y = x·W + b + (α / r) · dropout(x) · Aᵀ · Bᵀ`, with `A` `[r, in]` drawn as peft does
//! (Kaiming-uniform, a = √5: U(−1/√in, 1/√in)) and `B` `[out, r]` zero, so training starts from the
//! backbone's function. Defaults are peft's: rank 8, α 8, dropout 0.
//!
//! A trained update folds into the backbone ([`Lora::merge_into`]): `W ← W + (α / r)·(B·A)ᵀ` in
//! vapt's `[in, out]` layout, after which the plain backbone gives the same logits.
//!
//! Module paths `lora.blocks.{i}.{query,key,value,out,fc1,fc2}.{a,b}` (peft's `lora_A.weight`,
//! `lora_B.weight` layouts); external names `lora.{i}.…`.

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use serde::{Deserialize, Serialize};
use vapt_kernels::nn::Dropout;
use vapt_vit::{BlockDelta, Projection, Vit, VitConfig};

use crate::error::ConfigError;

/// LoRA knobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank r.
    pub rank: usize,
    /// α; the update is scaled by α / r.
    pub alpha: f64,
    /// The projections that get an update, in every block.
    pub targets: Vec<Projection>,
    /// Dropout on the update's input (training only).
    pub dropout: f64,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            rank: 8,
            alpha: 8.0,
            targets: vec![Projection::Query, Projection::Value],
            dropout: 0.0,
        }
    }
}

impl LoraConfig {
    /// α / r.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank.max(1) as f64
    }

    /// Checks the knobs.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.rank == 0 {
            return Err(ConfigError::Invalid("lora rank must be at least 1".into()));
        }
        if self.targets.is_empty() {
            return Err(ConfigError::Invalid(
                "lora needs at least one target projection".into(),
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(ConfigError::Invalid(format!(
                "lora dropout = {} must lie in [0, 1)",
                self.dropout
            )));
        }
        Ok(())
    }
}

/// The low-rank update of one projection.
#[derive(Module, Debug)]
pub struct LoraPair<B: Backend> {
    /// `A`, `[r, in]`.
    pub a: Param<Tensor<B, 2>>,
    /// `B`, `[out, r]`.
    pub b: Param<Tensor<B, 2>>,
    /// Dropout on the input.
    pub drop: Dropout,
    /// α / r.
    #[module(skip)]
    pub scale: f64,
}

impl<B: Backend> LoraPair<B> {
    fn new(cfg: &LoraConfig, inp: usize, out: usize, device: &B::Device) -> Self {
        let bound = 1.0 / (inp as f64).sqrt();
        Self {
            a: Param::from_tensor(Tensor::random(
                [cfg.rank, inp],
                Distribution::Uniform(-bound, bound),
                device,
            )),
            b: Param::from_tensor(Tensor::zeros([out, cfg.rank], device)),
            drop: Dropout::new(cfg.dropout),
            scale: cfg.scale(),
        }
    }

    /// The update for input `x` `[B, T, in]`: `[B, T, out]`.
    pub fn update(&self, x: &Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, t, inp] = x.dims();
        let x = self.drop.forward(x.clone()).reshape([b * t, inp]);
        let low = x.matmul(self.a.val().transpose());
        let out = low.matmul(self.b.val().transpose()).mul_scalar(self.scale);
        let o = out.dims()[1];
        out.reshape([b, t, o])
    }

    /// `(α / r)·(B·A)ᵀ`, `[in, out]`: the update in the layout of vapt's weights.
    pub fn delta_weight(&self) -> Tensor<B, 2> {
        self.b
            .val()
            .matmul(self.a.val())
            .transpose()
            .mul_scalar(self.scale)
    }
}

/// One block's updates.
#[derive(Module, Debug)]
pub struct LoraBlock<B: Backend> {
    /// On `attn.query`.
    pub query: Option<LoraPair<B>>,
    /// On `attn.key`.
    pub key: Option<LoraPair<B>>,
    /// On `attn.value`.
    pub value: Option<LoraPair<B>>,
    /// On `attn.out`.
    pub out: Option<LoraPair<B>>,
    /// On `mlp.fc1`.
    pub fc1: Option<LoraPair<B>>,
    /// On `mlp.fc2`.
    pub fc2: Option<LoraPair<B>>,
}

impl<B: Backend> LoraBlock<B> {
    /// The update on projection `p`, if it is a target.
    pub fn get(&self, p: Projection) -> Option<&LoraPair<B>> {
        match p {
            Projection::Query => self.query.as_ref(),
            Projection::Key => self.key.as_ref(),
            Projection::Value => self.value.as_ref(),
            Projection::Out => self.out.as_ref(),
            Projection::Fc1 => self.fc1.as_ref(),
            Projection::Fc2 => self.fc2.as_ref(),
        }
    }
}

impl<B: Backend> BlockDelta<B> for LoraBlock<B> {
    fn projection(&self, p: Projection, x: &Tensor<B, 3>) -> Option<Tensor<B, 3>> {
        self.get(p).map(|pair| pair.update(x))
    }
}

/// The updates of every block.
#[derive(Module, Debug)]
pub struct Lora<B: Backend> {
    /// Block `i`'s updates.
    pub blocks: Vec<LoraBlock<B>>,
}

impl<B: Backend> Lora<B> {
    /// Fresh updates on `cfg.targets` in every block of `vit` (drawn block by block, in
    /// projection order).
    pub fn new(cfg: &LoraConfig, vit: &VitConfig, device: &B::Device) -> Self {
        let blocks = (0..vit.depth)
            .map(|_| {
                let pair = |p: Projection| {
                    cfg.targets.contains(&p).then(|| {
                        let (inp, out) = p.dims(vit);
                        LoraPair::new(cfg, inp, out, device)
                    })
                };
                LoraBlock {
                    query: pair(Projection::Query),
                    key: pair(Projection::Key),
                    value: pair(Projection::Value),
                    out: pair(Projection::Out),
                    fc1: pair(Projection::Fc1),
                    fc2: pair(Projection::Fc2),
                }
            })
            .collect();
        Self { blocks }
    }

    /// `vit` with every update folded into its weights: `W ← W + (α / r)·(B·A)ᵀ`.
    pub fn merge_into(&self, mut vit: Vit<B>) -> Vit<B> {
        for (block, updates) in vit.blocks.iter_mut().zip(&self.blocks) {
            for p in Projection::all() {
                let Some(pair) = updates.get(p) else { continue };
                let linear = match p {
                    Projection::Query => &mut block.attn.query,
                    Projection::Key => &mut block.attn.key,
                    Projection::Value => &mut block.attn.value,
                    Projection::Out => &mut block.attn.out,
                    Projection::Fc1 => &mut block.mlp.fc1,
                    Projection::Fc2 => &mut block.mlp.fc2,
                };
                let delta = pair.delta_weight();
                linear.weight = linear.weight.clone().map(|w| w + delta);
            }
        }
        vit
    }
}

/// The LoRA tensors on `vit`, with their shapes (peft's count: r · (in + out) per target).
pub fn shapes(cfg: &LoraConfig, vit: &VitConfig) -> Vec<(String, Vec<usize>)> {
    let mut v = Vec::new();
    for i in 0..vit.depth {
        for p in Projection::all().filter(|p| cfg.targets.contains(p)) {
            let (inp, out) = p.dims(vit);
            v.push((format!("lora.{i}.{p}.a"), vec![cfg.rank, inp]));
            v.push((format!("lora.{i}.{p}.b"), vec![out, cfg.rank]));
        }
    }
    v
}
