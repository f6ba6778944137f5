//! The prompted model: frozen backbone + prompt experts + head.
//!
//! Token order is `[CLS, P_1..P_Np, patch_0..patch_{N−1}]`; prompts are inserted after the position
//! embedding (they get none) and the sequence length stays 1 + Np + N in every block. Deep and
//! adaptive prompts *replace* positions 1..Np before a block, as the model's [`BlockInput`] plan
//! says; the previous block's outputs there are discarded.

use std::cell::RefCell;

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use vapt_vit::{named, BlockDelta, Projection, Rows, Vit};

use crate::adapter::{Adapter, Adapters};
use crate::adaptive::AdaptivePrompts;
use crate::config::{ConfigError, PromptConfig};
use crate::head::Head;
use crate::lora::{Lora, LoraBlock};
use crate::method::{BackboneTraining, Method};
use crate::mlp_head::MlpHead;
use crate::plan::{plan, BlockInput};
use crate::static_prompts::StaticPrompts;
use crate::trace::{Recorder, Trace};

/// Frozen backbone + prompt experts + head.
#[derive(Module, Debug)]
pub struct PromptedVit<B: Backend> {
    /// The backbone (frozen, without dropout, for every method but `full`).
    pub backbone: Vit<B>,
    /// Static prompts (VPT methods and VAPT).
    pub prompt: Option<StaticPrompts<B>>,
    /// Adaptive experts (VAPT).
    pub vapt: Option<AdaptivePrompts<B>>,
    /// Adapters after every block's MLP (adapter).
    pub adapter: Option<Adapters<B>>,
    /// Low-rank updates on the block projections (LoRA).
    pub lora: Option<Lora<B>>,
    /// Hidden layers of an MLP head (mlp-k, k > 1).
    pub mlp: Option<MlpHead<B>>,
    /// The classifier (absent when `num_classes == 0`).
    pub head: Option<Head<B>>,
    /// What happens to the prompt slots before each block.
    #[module(skip)]
    pub plan: Vec<BlockInput>,
    /// The prompt configuration.
    #[module(skip)]
    pub config: PromptConfig,
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
        // Partial-k and bias tuning unfreeze part of the frozen backbone.
        let backbone = match config.method.backbone_training() {
            BackboneTraining::LastBlocks | BackboneTraining::Biases => {
                named::set_trainable(backbone, |path| config.trains_backbone(path, &vit))
            }
            _ => backbone,
        };
        // Drawn in this order (static prompts, generators, shared projector, head) from the seed.
        let (np, depth) = (config.num_prompts, vit.depth);
        let prompt = config.method.has_prompts().then(|| {
            StaticPrompts::new(
                np,
                config.deep_static_rows(&vit),
                config.prompt_dropout,
                &vit,
                device,
            )
        });
        let vapt = (config.method == Method::Vapt).then(|| {
            AdaptivePrompts::new(
                &config.vapt_knobs(&vit),
                np,
                config.num_adaptive(depth),
                &vit,
                device,
            )
        });
        let adapter =
            (config.method == Method::Adapter).then(|| Adapters::new(&config.adapter, &vit, device));
        let lora = (config.method == Method::Lora).then(|| Lora::new(&config.lora, &vit, device));
        let mlp = (config.method == Method::Mlp)
            .then(|| MlpHead::new(config.mlp_layers, vit.hidden, device))
            .flatten();
        let head = Head::new(config.num_classes, vit.hidden, device);
        Ok(Self {
            backbone,
            prompt,
            vapt,
            adapter,
            lora,
            mlp,
            head,
            plan: plan(&config, vit.depth),
            config,
        })
    }

    /// Images `[B, C, H, W]` → logits `[B, C]` (or CLS features without a head).
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        self.forward_traced(images, None)
    }

    /// The head applied to features `[B, D]` (they pass through without a head): what
    /// [`Self::forward`] does after the backbone.
    pub fn classify(&self, features: Tensor<B, 2>) -> Tensor<B, 2> {
        let features = match &self.mlp {
            Some(mlp) => mlp.forward(features),
            None => features,
        };
        match &self.head {
            Some(head) => head.forward(features),
            None => features,
        }
    }

    /// [`Self::forward`], recording intermediates and/or attention into `trace`.
    pub fn forward_traced(&self, images: Tensor<B, 4>, mut trace: Option<&mut Trace<B>>) -> Tensor<B, 2> {
        let logits = self.classify(self.features_traced(images, trace.as_deref_mut()));
        Recorder::new(trace, 0).tensor("out.logits", || logits.clone());
        logits
    }

    /// The `[B, D]` features the head classifies (final-norm CLS token, prompts in place).
    pub fn features(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        self.features_traced(images, None)
    }

    fn features_traced(&self, images: Tensor<B, 4>, trace: Option<&mut Trace<B>>) -> Tensor<B, 2> {
        let mut rec = Recorder::new(trace, self.prompt_tokens());
        let x = self.backbone.embed(images);
        let mut x = match &self.prompt {
            Some(p) => p.insert(x),
            None => x,
        };
        let last = self.backbone.blocks.len().saturating_sub(1);
        for (i, (block, step)) in self.backbone.blocks.iter().zip(&self.plan).enumerate() {
            x = self.prompts_before(*step, x, &mut rec);
            rec.block_input(i, &x);
            let rows = if rec.attention() {
                Rows::AllWithAttention
            } else if i == last && self.backbone.reads_cls_only() && !rec.intermediates() {
                // Only CLS reaches the head: the last block computes that row alone.
                Rows::ClsOnly
            } else {
                Rows::All
            };
            let delta = InBlock {
                adapter: self.adapter.as_ref().map(|a| &a.blocks[i]),
                lora: self.lora.as_ref().map(|l| &l.blocks[i]),
                branch: rec.intermediates().then(|| RefCell::new(None)),
            };
            let (y, probs) = block.run(x, rows, &delta);
            if let Some(probs) = probs {
                rec.attention_probs(probs);
            }
            if let Some(branch) = delta.branch.and_then(RefCell::into_inner) {
                rec.adapter(i, &branch);
            }
            x = y;
        }
        let (pooled, features) = self.backbone.pool(x);
        if self.backbone.reads_cls_only() {
            rec.tensor("out.cls_feature", || features.clone());
        } else {
            rec.tensor("out.pool_mean", || pooled);
            rec.tensor("out.pooled_feature", || features.clone());
        }
        features
    }

    /// `x` with its prompt slots set as `step` says.
    fn prompts_before(&self, step: BlockInput, x: Tensor<B, 3>, rec: &mut Recorder<'_, B>) -> Tensor<B, 3> {
        let [b, t, _] = x.dims();
        let np = self.prompt_tokens();
        let prompts = match (step, &self.prompt, &self.vapt) {
            (BlockInput::Static(row), Some(p), _) => p.deep(row, b),
            (BlockInput::Adaptive(k), _, Some(v)) => {
                let patches = vapt_kernels::narrow_tokens(x.clone(), 1 + np, t - 1 - np);
                let (p, g) = v.generate(k, patches, rec.intermediates());
                rec.generator(k, g);
                Some(p)
            }
            _ => None,
        };
        match prompts {
            // The prompts replace tokens 1..1+Np (after CLS).
            Some(p) => vapt_kernels::replace_tokens(x, 1, p),
            None => x,
        }
    }

    /// Prompt tokens per block as seen by the attention (0 for `linear`/`full`).
    pub fn prompt_tokens(&self) -> usize {
        self.config.prompt_tokens()
    }

    /// The model as one plain [`Vit`]: the backbone as trained — LoRA updates folded into its
    /// weights (`W + (α/r)·BA`), partial-k and bias tensors in place — with this model's head as its
    /// built-in head, so that [`Vit::forward`] gives this model's logits. Prompts, adapters and an
    /// MLP head add tokens or non-linear branches that no ViT weight can hold: an error for those.
    pub fn merged_backbone(&self) -> Result<Vit<B>, ConfigError> {
        let extra = if self.prompt.is_some() || self.vapt.is_some() {
            Some("prompt tokens")
        } else if self.adapter.is_some() {
            Some("adapter branches")
        } else if self.mlp.is_some() {
            Some("a non-linear MLP head")
        } else {
            None
        };
        if let Some(extra) = extra {
            return Err(ConfigError::Invalid(format!(
                "{} adds {extra}, which cannot be folded into a ViT's weights",
                self.config.label()
            )));
        }
        let mut vit = match &self.lora {
            Some(lora) => lora.merge_into(self.backbone.clone()),
            None => self.backbone.clone(),
        };
        if let Some(head) = &self.head {
            let [classes, _] = head.weight.dims();
            vit.head = Some(vapt_kernels::nn::Linear {
                weight: Param::from_tensor(head.weight.val().transpose()),
                bias: Some(Param::from_tensor(head.bias.val())),
            });
            vit.config.num_classes = Some(classes);
        }
        Ok(vit)
    }
}

/// What the model adds inside block `i`: its adapter and LoRA updates. When intermediates are
/// recorded, the adapter branch is kept for the trace.
struct InBlock<'a, B: Backend> {
    adapter: Option<&'a Adapter<B>>,
    lora: Option<&'a LoraBlock<B>>,
    branch: Option<RefCell<Option<Tensor<B, 3>>>>,
}

impl<B: Backend> BlockDelta<B> for InBlock<'_, B> {
    fn projection(&self, p: Projection, x: &Tensor<B, 3>) -> Option<Tensor<B, 3>> {
        self.lora.and_then(|l| l.projection(p, x))
    }

    fn mlp_output(&self, m: Tensor<B, 3>) -> Tensor<B, 3> {
        let Some(adapter) = self.adapter else { return m };
        let branch = adapter.branch(m.clone());
        if let Some(keep) = &self.branch {
            *keep.borrow_mut() = Some(branch.clone());
        }
        m + branch
    }
}
