//! # vapt-vit
//!
//! A backend-generic Vision Transformer (Google `vit_jax` / timm style: pre-LN blocks, CLS token,
//! learned position embedding) built for prompt methods, and its weight loaders.
//!
//! * [`VitConfig`] — the architecture, with a variant parser (`B/16`, `Ti/16`, `D48-L4-H4-M96-P16`).
//! * [`Vit`] — the model. [`Vit::embed`] → run [`Vit::blocks`] one at a time on a sequence you
//!   control (optionally with [`Block::forward_with_attention`]) → [`Vit::forward_head`].
//! * [`weights`] — Google npz, timm safetensors and native safetensors loaders; every mismatch is
//!   reported at once, naming the file. [`load_pretrained`] is the one-call entry point.
//! * [`PretrainedCfg`] — where the weights came from (SHA-256) and the input recipe (mean/std).

pub mod config;
pub mod kernels;
pub mod model;
pub mod pretrained;
pub mod weights;

pub use config::{VariantError, VitConfig};
pub use model::{gelu_exact, Attention, Block, Mlp, PatchEmbed, Vit};
pub use pretrained::{PretrainedCfg, IMAGENET_MEAN, IMAGENET_STD};
pub use weights::{
    load_pretrained, KeyMismatch, Layout, LoadError, LoadOptions, PosEmbResample, RawTensor, TensorMap,
};
