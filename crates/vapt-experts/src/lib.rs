//! # vapt-experts
//!
//! Prompt experts on a frozen [`vapt_vit::Vit`] — the method of the VAPT paper — one file per
//! method:
//!
//! * [`Method`] (`method.rs`) and [`PromptConfig`] (`config.rs`) — what trains, every knob of the
//!   official code (SPEC §3.3), and the one table of trainable tensors
//!   ([`PromptConfig::expert_shapes`]).
//! * [`StaticPrompts`] (`static_prompts.rs`) — VPT shallow / deep prompts.
//! * [`AdaptivePrompts`] (`adaptive.rs`) — VAPT: per block LayerNorm → channel-wise conv →
//!   token-wise projector, and the feature projector; [`VaptConfig`].
//! * [`Head`] (`head.rs`) — the classifier.
//! * The paper's comparison rows, one file each: partial-k (`partial.rs`), bias tuning
//!   (`bias.rs`; with VPT-deep prompts, `vpt-deep+bias`), [`MlpHead`] (`mlp_head.rs`), [`Adapters`]
//!   (`adapter.rs`) and [`Lora`] (`lora.rs`); the last two act inside the blocks through
//!   [`vapt_vit::BlockDelta`]. [`torch_linear::TorchLinear`] is their PyTorch-layout linear layer.
//! * [`PromptedVit`] (`model.rs`) — backbone + experts + head, following a per-block plan
//!   ([`BlockInput`], `plan.rs`) fixed when the model is built; [`Trace`] (`trace.rs`) records
//!   intermediates and attention only when asked.
//! * `names.rs` — external tensor names (fixtures, artifacts, gradients) ↔ module paths.
//! * [`ParamReport`] (`params.rs`), [`MoeView`] (`moe.rs`), prompt-only artifacts (`artifact.rs`).
//!
//! A new method is one more file here: its module (built from the [`PromptConfig`]), its entry in
//! [`Method`], its `shapes` in [`PromptConfig::expert_shapes`], and its hook in [`PromptedVit`]
//! (a step in the plan for prompts, a [`vapt_vit::BlockDelta`] inside the blocks, a backbone rule
//! for what it unfreezes).

pub mod adapter;
pub mod adaptive;
pub mod artifact;
pub mod bias;
pub mod config;
pub mod error;
pub mod head;
pub mod lora;
pub mod method;
pub mod mlp_head;
pub mod model;
pub mod moe;
pub mod names;
pub mod params;
pub mod partial;
pub mod plan;
pub mod static_prompts;
pub mod torch_linear;
pub mod trace;

pub use adapter::{AdapterConfig, AdapterInit, Adapters};
pub use adaptive::{Activation, AdaptiveGenerator, AdaptivePrompts, ProjectorMlp, VaptConfig};
pub use artifact::{load_artifact, save_artifact, ArtifactError};
pub use config::{ConfigError, PromptConfig};
pub use head::Head;
pub use lora::{Lora, LoraConfig};
pub use method::{BackboneTraining, Method, MethodSpec};
pub use mlp_head::MlpHead;
pub use model::PromptedVit;
pub use moe::{GateMass, HeadGates, MoeView};
pub use names::expert_gradients;
pub use params::{ParamReport, ParamRow};
pub use plan::BlockInput;
pub use static_prompts::StaticPrompts;
pub use trace::Trace;
pub use vapt_vit;
