//! # vapt-experts
//!
//! Prompt experts on a frozen [`vapt_vit::Vit`] — the method of the VAPT paper:
//!
//! * [`PromptConfig`] / [`VaptConfig`] — the method (`linear`, `full`, `vpt-shallow`, `vpt-deep`,
//!   `vapt`) and every knob of the official code (SPEC §3.3).
//! * [`PromptedVit`] — frozen backbone + static prompts ([`StaticPrompts`]) + adaptive generators
//!   ([`AdaptiveGenerator`]: LayerNorm → channel-wise conv → token-wise projector → feature projector)
//!   + head.
//! * [`params`] — named access to the expert tensors (the one mapping to fixture/artifact names) and
//!   the trainable/total [`ParamReport`].
//! * [`parity`] — runs the authors' fixtures and compares every output and gradient.
//! * [`moe`] — the softmax gate mass on prompt, patch and CLS experts per block and head.
//! * [`artifact`] — the prompt-only safetensors file and its backbone check.

pub mod artifact;
pub mod config;
pub mod model;
pub mod moe;
pub mod params;
pub mod parity;

pub use artifact::{load_artifact, save_artifact, ArtifactError};
pub use config::{Activation, ConfigError, Method, PromptConfig, VaptConfig};
pub use model::{cross_entropy, AdaptiveGenerator, Head, ProjectorMlp, PromptedVit, StaticPrompts, Trace};
pub use moe::{GateMass, HeadGates, MoeView};
pub use params::{ParamReport, ParamRow};
pub use parity::{run_parity, ParityReport};
pub use vapt_vit;
