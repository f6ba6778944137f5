//! # vapt-vit
//!
//! A backend-generic Vision Transformer (Google `vit_jax` / timm style: pre-LN blocks, CLS token,
//! learned position embedding) built for prompt methods, and its weight loaders.
//!
//! * [`VitConfig`] — the architecture, with a variant parser (`B/16`, `Ti/16`,
//!   `D48-L4-H4-M96-P16`) over the one table of standard sizes, [`VARIANTS`].
//! * [`Vit`] — the model. [`Vit::embed`] → run [`Vit::blocks`] one at a time on a sequence you
//!   control (optionally with [`Block::forward_with_attention`]) → [`Vit::forward_head`]. Its
//!   operations are [`vapt_kernels`]' (fused on the CPU, Burn's ops elsewhere).
//! * [`BlockDelta`] (`delta.rs`) — what a method adds inside a block (LoRA on a [`Projection`],
//!   an adapter on the MLP output), run through [`Block::run`].
//! * DINOv2-style backbones ([`VitConfig::with_dinov2`]): [`LayerScale`] in every block and a
//!   position embedding stored for another grid, resized bicubically at every forward pass.
//! * [`weights`] — Google npz, timm, Hugging Face `Dinov2Model` and native safetensors, PyTorch
//!   checkpoints and ONNX exports, read as rename tables onto the native layout; every mismatch
//!   is reported at once, naming the file. [`load_pretrained`]
//!   is the one-call entry point, [`BackboneConfig`] the one a run configuration holds.
//! * [`named`] (in `weights`) — a module's parameters by path (the native key), read, written and shaped.
//! * [`PretrainedCfg`] — where the weights came from (SHA-256) and the input recipe (mean/std).
//! * [`reference`] — a backbone's final-norm tokens compared with another implementation's.

pub mod backbone;
pub mod config;
pub mod delta;
pub mod model;
pub mod pretrained;
pub mod reference;
pub mod weights;

pub use backbone::BackboneConfig;
pub use config::{standard_heads, BackboneKind, Pool, Variant, VariantError, VitConfig, VARIANTS};
pub use delta::{BlockDelta, NoDelta, Projection};
pub use model::{Attention, Block, LayerScale, Mlp, PatchEmbed, Rows, Vit};
pub use pretrained::{PretrainedCfg, IMAGENET_MEAN, IMAGENET_STD};
pub use vapt_kernels;
pub use weights::named;
pub use weights::{
    load_pretrained, FileFormat, KeyMismatch, Layout, LoadError, LoadOptions, PosEmbResample, RawTensor,
    TensorMap,
};
