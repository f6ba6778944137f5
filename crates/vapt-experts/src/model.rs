//! The prompted model: frozen backbone + prompt experts + head.
//!
//! Token order is `[CLS, P_1..P_Np, patch_0..patch_{N−1}]`; prompts are inserted after the position
//! embedding (they get none) and the sequence length stays 1 + Np + N in every block. Deep and
//! adaptive prompts *replace* positions 1..Np before a block; the previous block's outputs there
//! are discarded.

use std::collections::BTreeMap;

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, LayerNorm, LayerNormConfig};
use burn::tensor::activation::{log_softmax, relu, sigmoid, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::module::linear;
use burn::tensor::{Distribution, Int, Tensor};
use vapt_vit::{gelu_exact, Vit, VitConfig};

use crate::config::{Activation, ConfigError, Method, PromptConfig};

/// Static (VPT) prompts: the block-0 prompt and, for deep methods, one set per later block.
#[derive(Module, Debug)]
pub struct StaticPrompts<B: Backend> {
    /// `prompt.static`, `[Np, D]`.
    pub prompt: Param<Tensor<B, 2>>,
    /// `prompt.deep_static`, `[rows, Np, D]` (row j is used before block j+1).
    pub deep: Option<Param<Tensor<B, 3>>>,
    /// Prompt dropout (training only).
    pub drop: Dropout,
}

impl<B: Backend> StaticPrompts<B> {
    /// Block-0 prompts broadcast over the batch, after dropout: `[B, Np, D]`.
    fn initial(&self, batch: usize) -> Tensor<B, 3> {
        let [np, d] = self.prompt.dims();
        let prompts = self.prompt.val().unsqueeze::<3>().expand([batch, np, d]);
        vapt_vit::kernels::dropout(prompts, self.drop.prob)
    }

    /// Deep prompts for block `row + 1`: `[B, Np, D]`.
    fn deep(&self, row: usize, batch: usize) -> Option<Tensor<B, 3>> {
        let deep = self.deep.as_ref()?.val();
        let [_, np, d] = deep.dims();
        Some(vapt_vit::kernels::dropout(
            deep.narrow(0, row, 1).expand([batch, np, d]),
            self.drop.prob,
        ))
    }
}

/// VAPT's feature projector `P = U + scale · W2 · drop(σ(W1 · U))` (no biases).
#[derive(Module, Debug)]
pub struct ProjectorMlp<B: Backend> {
    /// `fc1.weight`, `[r, D]` (PyTorch `(out, in)` layout).
    pub fc1: Param<Tensor<B, 2>>,
    /// `fc2.weight`, `[D, r]`.
    pub fc2: Param<Tensor<B, 2>>,
    /// Learnable scale `[1]`, if enabled (otherwise the constant 1).
    pub scale: Option<Param<Tensor<B, 1>>>,
    /// Dropout after the activation.
    pub drop: Dropout,
    /// σ.
    #[module(skip)]
    pub activation: Activation,
}

impl<B: Backend> ProjectorMlp<B> {
    /// `[B, Np, D]` → `[B, Np, D]`.
    pub fn forward(&self, u: Tensor<B, 3>) -> Tensor<B, 3> {
        let h = linear(u.clone(), self.fc1.val().transpose(), None);
        let h = match self.activation {
            Activation::Relu => relu(h),
            Activation::Gelu => gelu_exact(h),
            Activation::Sigmoid => sigmoid(h),
            Activation::Attention => softmax(h, 2),
            Activation::Identity => h,
        };
        let branch = linear(
            vapt_vit::kernels::dropout(h, self.drop.prob),
            self.fc2.val().transpose(),
            None,
        );
        let branch = match &self.scale {
            Some(s) => branch * s.val().unsqueeze::<3>(),
            None => branch,
        };
        u + branch
    }
}

/// Dropout2d on channels-last maps `[B, S, C]`: zeroes whole (sample, channel) maps with
/// probability `p` and scales the survivors by 1/(1−p). Like Burn's `Dropout`, active only on an
/// autodiff backend.
pub fn dropout2d<B: Backend>(x: Tensor<B, 3>, p: f64) -> Tensor<B, 3> {
    if p == 0.0 || !B::ad_enabled(&x.device()) {
        return x;
    }
    let [b, _, c] = x.dims();
    let keep = Tensor::<B, 2>::random([b, c], Distribution::Bernoulli(1.0 - p), &x.device());
    vapt_vit::kernels::scale_channels(x, keep.div_scalar(1.0 - p))
}

/// The adaptive prompt generator of one block (SPEC §3.2).
#[derive(Module, Debug)]
pub struct AdaptiveGenerator<B: Backend> {
    /// Per-block LayerNorm (eps 1e-5).
    pub norm: LayerNorm<B>,
    /// Depth-wise kernel `[1, K, K]` (shared by all channels) or `[D, K, K]`; `None` without conv.
    pub conv: Option<Param<Tensor<B, 3>>>,
    /// Token-wise projector weight `[Np, S]`.
    pub token_proj_weight: Param<Tensor<B, 2>>,
    /// Token-wise projector bias `[Np]` (one value per prompt, shared by all channels).
    pub token_proj_bias: Param<Tensor<B, 1>>,
    /// Per-block feature projector (unshared projectors only).
    pub mlp: Option<ProjectorMlp<B>>,
    /// Patch-grid side g.
    pub grid: usize,
    /// Zero padding of the conv.
    pub padding: usize,
    /// Dropout2d probability on the conv output.
    pub conv_dropout: f64,
    /// Epsilon of `norm`.
    pub norm_eps: f64,
}

/// Intermediates of one generator call, for parity checks.
pub struct GeneratorTrace<B: Backend> {
    /// Channel-first grid G `[B, D, g, g]` (with conv) or F `[B, D, N]` (without).
    pub norm_grid: Tensor<B, 4>,
    /// Conv output `[B, D, g', g']` (conv only).
    pub conv: Option<Tensor<B, 4>>,
    /// Token-projector output U `[B, Np, D]`.
    pub token_proj: Tensor<B, 3>,
}

impl<B: Backend> AdaptiveGenerator<B> {
    /// Generates `[B, Np, D]` prompts from the patch tokens `[B, N, D]` of the previous block's
    /// output; `shared` is the shared projector (used when this block has none of its own).
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
        let z = vapt_vit::model::layer_norm(&self.norm, self.norm_eps, patches);
        let (f, conv_out) = match &self.conv {
            Some(kernel) => {
                let conv = vapt_vit::kernels::depthwise_conv(
                    z.clone().reshape([b, g, g, d]),
                    kernel.val(),
                    self.padding,
                );
                let go = conv.dims()[1];
                let f = dropout2d(conv.clone().reshape([b, go * go, d]), self.conv_dropout);
                (f, Some(conv))
            }
            None => (z.clone(), None),
        };
        // U[b, j, c] = Σ_s W[j, s] · F[b, s, c] + bias[j]
        let [np, _] = self.token_proj_weight.dims();
        let u = self.token_proj_weight.val().unsqueeze::<3>().matmul(f)
            + self.token_proj_bias.val().reshape([1, np, 1]);
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

/// The classifier: `logits = x · Wᵀ + b` with `W` `[C, D]` (PyTorch layout, as in the fixtures).
#[derive(Module, Debug)]
pub struct Head<B: Backend> {
    /// `head.weight`, `[C, D]`.
    pub weight: Param<Tensor<B, 2>>,
    /// `head.bias`, `[C]`.
    pub bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> Head<B> {
    /// `[B, D]` → `[B, C]`.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        linear(x, self.weight.val().transpose(), Some(self.bias.val()))
    }
}

/// Tensors recorded during a forward pass (for parity checks and the MoE view).
#[derive(Debug)]
pub struct Trace<B: Backend> {
    /// Record the per-block intermediates named as in the parity fixtures (`out.*`).
    pub intermediates: bool,
    /// Keep every block's attention probabilities `[B, H, T, T]`.
    pub attention: bool,
    /// Recorded tensors by fixture name, flattened, with their shapes.
    pub tensors: BTreeMap<String, (Vec<usize>, Tensor<B, 1>)>,
    /// Attention probabilities per block (when `attention`).
    pub attn: Vec<Tensor<B, 4>>,
}

impl<B: Backend> Trace<B> {
    /// A trace recording the intermediates and/or attention.
    pub fn new(intermediates: bool, attention: bool) -> Self {
        Self {
            intermediates,
            attention,
            tensors: BTreeMap::new(),
            attn: Vec::new(),
        }
    }

    fn record<const D: usize>(&mut self, name: impl Into<String>, t: Tensor<B, D>) {
        if self.intermediates {
            let shape = t.dims().to_vec();
            let n: usize = shape.iter().product();
            self.tensors.insert(name.into(), (shape, t.reshape([n])));
        }
    }
}

/// Frozen backbone + prompt experts + head.
#[derive(Module, Debug)]
pub struct PromptedVit<B: Backend> {
    /// The backbone (frozen, without dropout, for every method but `full`).
    pub backbone: Vit<B>,
    /// Static prompts (VPT methods and VAPT).
    pub prompts: Option<StaticPrompts<B>>,
    /// Adaptive generators, one per adaptive block (module k belongs to block vpt_depth + k).
    pub generators: Vec<AdaptiveGenerator<B>>,
    /// The shared feature projector.
    pub shared_mlp: Option<ProjectorMlp<B>>,
    /// The classifier (absent when `num_classes == 0`).
    pub head: Option<Head<B>>,
    /// The prompt configuration.
    #[module(skip)]
    pub config: PromptConfig,
}

/// Uniform init bound of static prompts: √(6 / (3·p² + D)) (VPT's xavier-uniform).
pub fn prompt_init_bound(vit: &VitConfig) -> f64 {
    (6.0 / (3 * vit.patch_size * vit.patch_size + vit.hidden) as f64).sqrt()
}

fn new_mlp<B: Backend>(cfg: &PromptConfig, d: usize, device: &B::Device) -> ProjectorMlp<B> {
    let r = cfg.vapt.hidden_dim;
    let u =
        |fan_in: usize| Distribution::Uniform(-1.0 / (fan_in as f64).sqrt(), 1.0 / (fan_in as f64).sqrt());
    ProjectorMlp {
        fc1: Param::from_tensor(Tensor::random([r, d], u(d), device)),
        fc2: Param::from_tensor(Tensor::random([d, r], u(r), device)),
        scale: cfg
            .vapt
            .learnable_scale
            .then(|| Param::from_tensor(Tensor::ones([1], device))),
        drop: DropoutConfig::new(cfg.vapt.dropout_mlp).init(),
        activation: cfg.vapt.activation,
    }
}

impl<B: Backend> PromptedVit<B> {
    /// Wraps `backbone` with freshly initialised experts and head (SPEC §3–4 initialisation).
    ///
    /// For every method but `full` the backbone is frozen (`no_grad`) and its dropout switched off.
    /// The backbone's own head, if any, is dropped.
    pub fn new(backbone: Vit<B>, config: PromptConfig, device: &B::Device) -> Result<Self, ConfigError> {
        let vit = backbone.config.clone();
        config.validate(&vit)?;
        let mut backbone = backbone;
        backbone.head = None;
        backbone.config.num_classes = None;
        let backbone = if config.method.frozen_backbone() {
            backbone.with_dropout(0.0, 0.0).no_grad()
        } else {
            backbone
        };
        let (np, d, depth) = (config.num_prompts, vit.hidden, vit.depth);
        let v = prompt_init_bound(&vit);
        let uniform = Distribution::Uniform(-v, v);
        let prompts = config.method.has_prompts().then(|| {
            let rows = config.num_deep_static(depth);
            StaticPrompts {
                prompt: Param::from_tensor(Tensor::random([np, d], uniform, device)),
                deep: (rows > 0).then(|| Param::from_tensor(Tensor::random([rows, np, d], uniform, device))),
                drop: DropoutConfig::new(config.prompt_dropout).init(),
            }
        });
        let c = &config.vapt;
        let s = config.token_proj_in(vit.grid());
        let generators = (0..config.num_adaptive(depth))
            .map(|_| AdaptiveGenerator {
                norm: LayerNormConfig::new(d).with_epsilon(c.norm_eps).init(device),
                conv: c.conv.then(|| {
                    let kc = if c.channelwise { 1 } else { d };
                    Param::from_tensor(Tensor::random(
                        [kc, c.kernel, c.kernel],
                        Distribution::Normal(0.0, 1.0),
                        device,
                    ))
                }),
                token_proj_weight: Param::from_tensor(Tensor::zeros([np, s], device)),
                token_proj_bias: Param::from_tensor(Tensor::zeros([np], device)),
                mlp: (c.feat_projector && !c.share_projector).then(|| new_mlp(&config, d, device)),
                grid: vit.grid(),
                padding: c.padding,
                conv_dropout: c.conv_dropout,
                norm_eps: c.norm_eps,
            })
            .collect::<Vec<_>>();
        let shared_mlp = (c.feat_projector && c.share_projector && !generators.is_empty())
            .then(|| new_mlp(&config, d, device));
        let head = (config.num_classes > 0).then(|| {
            let classes = config.num_classes;
            // Kaiming normal, mode fan_out (= C for a (C, D) weight), gain √2; bias −ln 99.
            let std = (2.0 / classes as f64).sqrt();
            Head {
                weight: Param::from_tensor(Tensor::random(
                    [classes, d],
                    Distribution::Normal(0.0, std),
                    device,
                )),
                bias: Param::from_tensor(Tensor::full([classes], -(99f64.ln()), device)),
            }
        });
        Ok(Self {
            backbone,
            prompts,
            generators,
            shared_mlp,
            head,
            config,
        })
    }

    /// Images `[B, C, H, W]` → logits `[B, C]` (or CLS features without a head).
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        self.forward_traced(images, None)
    }

    /// [`Self::forward`], recording intermediates and/or attention into `trace`.
    pub fn forward_traced(&self, images: Tensor<B, 4>, mut trace: Option<&mut Trace<B>>) -> Tensor<B, 2> {
        let features = self.features_traced(images, trace.as_deref_mut());
        let logits = match &self.head {
            Some(head) => head.forward(features),
            None => features,
        };
        if let Some(t) = trace {
            t.record("out.logits", logits.clone());
        }
        logits
    }

    /// The `[B, D]` features the head classifies (final-norm CLS token, prompts in place).
    pub fn features(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        self.features_traced(images, None)
    }

    fn features_traced(&self, images: Tensor<B, 4>, mut trace: Option<&mut Trace<B>>) -> Tensor<B, 2> {
        let cfg = &self.config;
        let x = self.backbone.embed(images);
        let [b, _, d] = x.dims();
        let n = self.backbone.num_patches();
        let np = if cfg.method.has_prompts() {
            cfg.num_prompts
        } else {
            0
        };
        // Deep prompts replace tokens 1..1+Np (after CLS).
        let replace = |x: Tensor<B, 3>, p: Tensor<B, 3>| vapt_vit::kernels::replace_tokens(x, 1, p);
        let mut x = match &self.prompts {
            Some(prompts) => Tensor::cat(
                vec![x.clone().narrow(1, 0, 1), prompts.initial(b), x.narrow(1, 1, n)],
                1,
            ),
            None => x,
        };
        let keep_gen = trace.as_ref().is_some_and(|t| t.intermediates);
        let static_rows = cfg.num_deep_static(self.backbone.blocks.len());
        for (i, block) in self.backbone.blocks.iter().enumerate() {
            if i > 0 {
                if let Some(prompts) = &self.prompts {
                    if i - 1 < static_rows {
                        if let Some(p) = prompts.deep(i - 1, b) {
                            x = replace(x, p);
                        }
                    } else if cfg.method == Method::Vapt {
                        let k = i - cfg.vapt.vpt_depth;
                        let (p, gt) = self.generators[k].forward(
                            vapt_vit::kernels::narrow_tokens(x.clone(), 1 + np, n),
                            self.shared_mlp.as_ref(),
                            keep_gen,
                        );
                        if let (Some(t), Some(gt)) = (trace.as_deref_mut(), gt) {
                            let [_, _, g1, g2] = gt.norm_grid.dims();
                            let c01 = gt.norm_grid.narrow(1, 0, 2.min(d));
                            if g1 == 1 {
                                t.record(
                                    format!("out.vapt.{k}.norm_grid_c01"),
                                    c01.reshape([b, 2.min(d), g2]),
                                );
                            } else {
                                t.record(format!("out.vapt.{k}.norm_grid_c01"), c01);
                            }
                            if let Some(conv) = gt.conv {
                                t.record(format!("out.vapt.{k}.conv_c01"), conv.narrow(1, 0, 2.min(d)));
                            }
                            t.record(format!("out.vapt.{k}.token_proj"), gt.token_proj);
                        }
                        x = replace(x, p);
                    }
                }
            }
            if let Some(t) = trace.as_deref_mut() {
                if np > 0 {
                    t.record(format!("out.prompts.{i}"), x.clone().narrow(1, 1, np));
                }
                t.record(
                    format!("out.block_in_cls.{i}"),
                    x.clone().narrow(1, 0, 1).reshape([b, d]),
                );
                t.record(
                    format!("out.block_in_patch_mean.{i}"),
                    x.clone().narrow(1, 1 + np, n).mean_dim(1).reshape([b, d]),
                );
            }
            x = match trace.as_deref_mut() {
                Some(t) if t.attention => {
                    let (y, probs) = block.forward_with_attention(x);
                    t.attn.push(probs);
                    y
                }
                // Only CLS reaches the head: the last block computes that row alone.
                _ if i + 1 == self.backbone.blocks.len() => block.forward_cls(x),
                _ => block.forward(x),
            };
        }
        let features = self.backbone.forward_features(x);
        if let Some(t) = trace {
            t.record("out.cls_feature", features.clone());
        }
        features
    }

    /// Prompt tokens per block as seen by the attention (0 for `linear`/`full`).
    pub fn prompt_tokens(&self) -> usize {
        if self.config.method.has_prompts() {
            self.config.num_prompts
        } else {
            0
        }
    }
}

/// Mean softmax cross-entropy over the batch: `mean_b(logsumexp(z_b) − z_b[y_b])`.
pub fn cross_entropy<B: Backend>(logits: Tensor<B, 2>, labels: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    let [b, _] = logits.dims();
    let logp = log_softmax(logits, 1);
    let picked = logp.gather(1, labels.reshape([b, 1]));
    picked.mean().neg()
}
