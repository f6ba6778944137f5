//! VAPT's adaptive prompt experts (SPEC §3): per adaptive block a generator — LayerNorm →
//! channel-wise conv → Dropout2d → token-wise projector — and the feature projector, shared by all
//! blocks or one per block. Every knob of the official code is in [`VaptConfig`].
//!
//! Module paths: `vapt.blocks.{k}.norm.weight`, `vapt.blocks.{k}.conv.kernel`,
//! `vapt.blocks.{k}.token_proj.{weight,bias}`, `vapt.mlp.{fc1,fc2}.weight` (`vapt.blocks.{k}.mlp.*`
//! when unshared), `*.mlp.scale`; their external names (SPEC §3.4) drop the `blocks.` (see
//! `names.rs`).

use std::str::FromStr;

use burn::module::{Module, Param};
use burn::tensor::activation::{relu, sigmoid, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::module::linear;
use burn::tensor::{Distribution, Tensor};
use serde::{Deserialize, Serialize};
use vapt_kernels::nn::{Dropout, LayerNorm};
use vapt_vit::VitConfig;

use crate::error::ConfigError;

/// σ in VAPT's feature projector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Activation {
    /// max(0, x) — the default.
    Relu,
    /// Exact erf GELU.
    Gelu,
    /// Logistic sigmoid.
    Sigmoid,
    /// Softmax over the hidden axis (official `attention`).
    Attention,
    /// No activation (the official code's fallback for any other name).
    Identity,
}

impl FromStr for Activation {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "relu" => Ok(Activation::Relu),
            "gelu" => Ok(Activation::Gelu),
            "sigmoid" => Ok(Activation::Sigmoid),
            "attention" | "softmax" => Ok(Activation::Attention),
            "identity" | "none" | "linear" => Ok(Activation::Identity),
            _ => Err(ConfigError::UnknownActivation(s.to_string())),
        }
    }
}

/// Knobs of the adaptive prompt experts (SPEC §3.3; defaults are vapt's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VaptConfig {
    /// Leading blocks with static prompts (≥ 1): block 0 gets `prompt.static`, blocks
    /// 1..vpt_depth−1 get `prompt.deep_static`, the rest adaptive prompts.
    pub vpt_depth: usize,
    /// Whether the channel-wise convolution is used (false: the token projector acts on the N
    /// patch tokens directly).
    pub conv: bool,
    /// Conv kernel side K.
    pub kernel: usize,
    /// Zero padding on every side of the grid.
    pub padding: usize,
    /// `true`: ONE K×K kernel shared by all channels (official meaning); `false`: one per channel.
    pub channelwise: bool,
    /// Feature-projector hidden width r.
    pub hidden_dim: usize,
    /// Feature-projector activation.
    pub activation: Activation,
    /// Whether the feature projector is used at all.
    pub feat_projector: bool,
    /// One projector shared by every adaptive block (true) or one per block.
    pub share_projector: bool,
    /// A trainable scale (init 1.0) on the projector's MLP branch.
    pub learnable_scale: bool,
    /// Dropout after the projector activation (training only).
    pub dropout_mlp: f64,
    /// Dropout2d on the conv output (hard-coded 0.1 in the official code; training only).
    pub conv_dropout: f64,
    /// LayerNorm eps of the per-block norm (1e-5, PyTorch's default).
    pub norm_eps: f64,
}

impl Default for VaptConfig {
    fn default() -> Self {
        Self {
            vpt_depth: 1,
            conv: true,
            kernel: 2,
            padding: 0,
            channelwise: true,
            hidden_dim: 8,
            activation: Activation::Relu,
            feat_projector: true,
            share_projector: true,
            learnable_scale: false,
            dropout_mlp: 0.1,
            conv_dropout: 0.1,
            norm_eps: 1e-5,
        }
    }
}

impl VaptConfig {
    /// Side of the conv output g' = g + 2·padding − K + 1.
    pub fn conv_out(&self, grid: usize) -> usize {
        grid + 2 * self.padding + 1 - self.kernel
    }

    /// Input width S of the token projector: g'² with conv, N without.
    pub fn token_proj_in(&self, grid: usize) -> usize {
        if self.conv {
            let s = self.conv_out(grid);
            s * s
        } else {
            grid * grid
        }
    }

    /// Checks the structural knobs against a backbone (the dropout rates are checked with the rest
    /// of the configuration).
    pub fn validate(&self, vit: &VitConfig) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.vpt_depth == 0 {
            return bad("vpt_depth must be at least 1 (block 0 always gets static prompts)".into());
        }
        if self.vpt_depth > vit.depth {
            return bad(format!(
                "vpt_depth {} exceeds the backbone depth {}",
                self.vpt_depth, vit.depth
            ));
        }
        if self.conv {
            let side = vit.grid() + 2 * self.padding;
            if self.kernel == 0 {
                return bad("kernel must be at least 1".into());
            }
            if self.kernel > side {
                return bad(format!(
                    "kernel {} is larger than the padded {side}x{side} patch grid",
                    self.kernel
                ));
            }
        }
        if self.feat_projector && self.hidden_dim == 0 {
            return bad("hidden_dim must be at least 1 with a feature projector".into());
        }
        if self.norm_eps.is_nan() || self.norm_eps <= 0.0 {
            return bad("norm_eps must be positive".into());
        }
        Ok(())
    }
}

/// The adaptive tensors (external names) for knobs `c`, `np` prompts and `adaptive` adaptive
/// blocks on `vit`, with their shapes.
pub fn shapes(c: &VaptConfig, np: usize, adaptive: usize, vit: &VitConfig) -> Vec<(String, Vec<usize>)> {
    let mut v = Vec::new();
    let d = vit.hidden;
    let mlp = |prefix: &str, v: &mut Vec<(String, Vec<usize>)>| {
        v.push((format!("{prefix}.fc1.weight"), vec![c.hidden_dim, d]));
        v.push((format!("{prefix}.fc2.weight"), vec![d, c.hidden_dim]));
        if c.learnable_scale {
            v.push((format!("{prefix}.scale"), vec![1]));
        }
    };
    for k in 0..adaptive {
        v.push((format!("vapt.{k}.norm.weight"), vec![d]));
        v.push((format!("vapt.{k}.norm.bias"), vec![d]));
        if c.conv {
            let kk = c.kernel;
            let shape = if c.channelwise {
                vec![kk, kk]
            } else {
                vec![d, kk, kk]
            };
            v.push((format!("vapt.{k}.conv.kernel"), shape));
        }
        v.push((
            format!("vapt.{k}.token_proj.weight"),
            vec![np, c.token_proj_in(vit.grid())],
        ));
        v.push((format!("vapt.{k}.token_proj.bias"), vec![np]));
        if c.feat_projector && !c.share_projector {
            mlp(&format!("vapt.{k}.mlp"), &mut v);
        }
    }
    if c.feat_projector && c.share_projector && adaptive > 0 {
        mlp("vapt.mlp", &mut v);
    }
    v
}

/// A bias-free linear map in PyTorch's `(out, in)` layout, as the feature projector's layers.
#[derive(Module, Debug)]
pub struct ProjectorLayer<B: Backend> {
    /// `[out, in]`.
    pub weight: Param<Tensor<B, 2>>,
}

impl<B: Backend> ProjectorLayer<B> {
    /// PyTorch's `nn.Linear` init: U(±1/√in).
    fn new(out: usize, input: usize, device: &B::Device) -> Self {
        let bound = 1.0 / (input as f64).sqrt();
        Self {
            weight: Param::from_tensor(Tensor::random(
                [out, input],
                Distribution::Uniform(-bound, bound),
                device,
            )),
        }
    }

    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        linear(x, self.weight.val().transpose(), None)
    }
}

/// VAPT's feature projector `P = U + scale · W2 · drop(σ(W1 · U))` (no biases).
#[derive(Module, Debug)]
pub struct ProjectorMlp<B: Backend> {
    /// `fc1.weight`, `[r, D]`.
    pub fc1: ProjectorLayer<B>,
    /// `fc2.weight`, `[D, r]`.
    pub fc2: ProjectorLayer<B>,
    /// Learnable scale `[1]`, if enabled (otherwise the constant 1).
    pub scale: Option<Param<Tensor<B, 1>>>,
    /// Dropout after the activation.
    pub drop: Dropout,
    /// σ.
    #[module(skip)]
    pub activation: Activation,
}

impl<B: Backend> ProjectorMlp<B> {
    fn new(cfg: &VaptConfig, d: usize, device: &B::Device) -> Self {
        let r = cfg.hidden_dim;
        Self {
            fc1: ProjectorLayer::new(r, d, device),
            fc2: ProjectorLayer::new(d, r, device),
            scale: cfg
                .learnable_scale
                .then(|| Param::from_tensor(Tensor::ones([1], device))),
            drop: Dropout::new(cfg.dropout_mlp),
            activation: cfg.activation,
        }
    }

    /// `[B, Np, D]` → `[B, Np, D]`.
    pub fn forward(&self, u: Tensor<B, 3>) -> Tensor<B, 3> {
        let h = self.fc1.forward(u.clone());
        let h = match self.activation {
            Activation::Relu => relu(h),
            Activation::Gelu => vapt_kernels::gelu(h),
            Activation::Sigmoid => sigmoid(h),
            Activation::Attention => softmax(h, 2),
            Activation::Identity => h,
        };
        let branch = self.fc2.forward(self.drop.forward(h));
        let branch = match &self.scale {
            Some(s) => branch * s.val().unsqueeze::<3>(),
            None => branch,
        };
        u + branch
    }
}

/// The depth-wise kernel: `[1, K, K]` (one kernel shared by all channels) or `[D, K, K]`.
#[derive(Module, Debug)]
pub struct ChannelConv<B: Backend> {
    /// The kernel (external shape `(K, K)` when shared).
    pub kernel: Param<Tensor<B, 3>>,
}

/// The token-wise projector `U = W·F + b` over the spatial axis (`[Np, S]`, bias per prompt).
#[derive(Module, Debug)]
pub struct TokenProjector<B: Backend> {
    /// `[Np, S]`, zero at initialisation.
    pub weight: Param<Tensor<B, 2>>,
    /// `[Np]`, zero at initialisation.
    pub bias: Param<Tensor<B, 1>>,
}

/// The adaptive prompt generator of one block (SPEC §3.2).
#[derive(Module, Debug)]
pub struct AdaptiveGenerator<B: Backend> {
    /// Per-block LayerNorm (eps 1e-5).
    pub norm: LayerNorm<B>,
    /// The channel-wise conv; `None` without conv.
    pub conv: Option<ChannelConv<B>>,
    /// The token-wise projector.
    pub token_proj: TokenProjector<B>,
    /// Per-block feature projector (unshared projectors only).
    pub mlp: Option<ProjectorMlp<B>>,
    /// Patch-grid side g.
    pub grid: usize,
    /// Zero padding of the conv.
    pub padding: usize,
    /// Dropout2d probability on the conv output.
    pub conv_dropout: f64,
}

/// Intermediates of one generator call, for parity checks.
pub struct GeneratorTrace<B: Backend> {
    /// Channel-first grid G `[B, D, g, g]` (with conv) or F `[B, D, 1, N]` (without).
    pub norm_grid: Tensor<B, 4>,
    /// Conv output `[B, D, g', g']` (conv only).
    pub conv: Option<Tensor<B, 4>>,
    /// Token-projector output U `[B, Np, D]`.
    pub token_proj: Tensor<B, 3>,
}

impl<B: Backend> AdaptiveGenerator<B> {
    fn new(c: &VaptConfig, np: usize, vit: &VitConfig, device: &B::Device) -> Self {
        let d = vit.hidden;
        let s = c.token_proj_in(vit.grid());
        Self {
            norm: LayerNorm::new(d, c.norm_eps, device),
            conv: c.conv.then(|| {
                let kc = if c.channelwise { 1 } else { d };
                ChannelConv {
                    kernel: Param::from_tensor(Tensor::random(
                        [kc, c.kernel, c.kernel],
                        Distribution::Normal(0.0, 1.0),
                        device,
                    )),
                }
            }),
            token_proj: TokenProjector {
                weight: Param::from_tensor(Tensor::zeros([np, s], device)),
                bias: Param::from_tensor(Tensor::zeros([np], device)),
            },
            mlp: (c.feat_projector && !c.share_projector).then(|| ProjectorMlp::new(c, d, device)),
            grid: vit.grid(),
            padding: c.padding,
            conv_dropout: c.conv_dropout,
        }
    }

    /// Generates `[B, Np, D]` prompts from the patch tokens `[B, N, D]` of the previous block's
    /// output; `shared` is the shared projector (used when this block has none of its own). With
    /// `keep`, also the intermediates.
    pub fn forward(
        &self,
        patches: Tensor<B, 3>,
        shared: Option<&ProjectorMlp<B>>,
        keep: bool,
    ) -> (Tensor<B, 3>, Option<GeneratorTrace<B>>) {
        let [b, n, d] = patches.dims();
        let g = self.grid;
        // Token-major throughout: the patch tokens [B, N, D] are the channels-last grid
        // [B, g, g, D], and U = W·F is one product per sample with no transposes.
        let z = self.norm.forward(patches);
        let (f, conv_out) = match &self.conv {
            Some(conv) => {
                let out = vapt_kernels::depthwise_conv(
                    z.clone().reshape([b, g, g, d]),
                    conv.kernel.val(),
                    self.padding,
                );
                let go = out.dims()[1];
                let f = vapt_kernels::dropout2d(out.clone().reshape([b, go * go, d]), self.conv_dropout);
                (f, Some(out))
            }
            None => (z.clone(), None),
        };
        // U[b, j, c] = Σ_s W[j, s] · F[b, s, c] + bias[j]
        let [np, _] = self.token_proj.weight.dims();
        let u = self.token_proj.weight.val().unsqueeze::<3>().matmul(f)
            + self.token_proj.bias.val().reshape([1, np, 1]);
        let trace = keep.then(|| GeneratorTrace {
            // The fixtures' channel-first layout.
            norm_grid: match conv_out {
                Some(_) => z.clone().reshape([b, g, g, d]).permute([0, 3, 1, 2]),
                None => z.clone().swap_dims(1, 2).reshape([b, d, 1, n]),
            },
            conv: conv_out.map(|c| c.permute([0, 3, 1, 2])),
            token_proj: u.clone(),
        });
        let p = match self.mlp.as_ref().or(shared) {
            Some(mlp) => mlp.forward(u),
            None => u,
        };
        (p, trace)
    }
}

/// All adaptive experts of a model: one generator per adaptive block (generator k serves block
/// vpt_depth + k) and the shared feature projector.
#[derive(Module, Debug)]
pub struct AdaptivePrompts<B: Backend> {
    /// The generators.
    pub blocks: Vec<AdaptiveGenerator<B>>,
    /// The shared feature projector (`share_projector`).
    pub mlp: Option<ProjectorMlp<B>>,
}

impl<B: Backend> AdaptivePrompts<B> {
    /// Freshly initialised experts (SPEC §3.2) for knobs `c`, `np` prompts and `adaptive`
    /// adaptive blocks. The token projectors start at zero, so every adaptive prompt is exactly
    /// zero at initialisation.
    pub fn new(c: &VaptConfig, np: usize, adaptive: usize, vit: &VitConfig, device: &B::Device) -> Self {
        let blocks: Vec<_> = (0..adaptive)
            .map(|_| AdaptiveGenerator::new(c, np, vit, device))
            .collect();
        let mlp = (c.feat_projector && c.share_projector && !blocks.is_empty())
            .then(|| ProjectorMlp::new(c, vit.hidden, device));
        Self { blocks, mlp }
    }

    /// The prompts of generator `k` from the patch tokens `[B, N, D]`, and its intermediates with
    /// `keep`.
    pub fn generate(
        &self,
        k: usize,
        patches: Tensor<B, 3>,
        keep: bool,
    ) -> (Tensor<B, 3>, Option<GeneratorTrace<B>>) {
        self.blocks[k].forward(patches, self.mlp.as_ref(), keep)
    }
}
