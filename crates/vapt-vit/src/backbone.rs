//! The backbone a run names: a weights file (architecture read off it or checked against a
//! variant), or a randomly initialised variant. What a `[backbone]` section of a run configuration
//! holds, and the one place such a section becomes a model.

use std::path::PathBuf;

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::config::BackboneKind;
use crate::model::Vit;
use crate::pretrained::PretrainedCfg;
use crate::weights::{load_pretrained, LoadError, LoadOptions, PosEmbResample};

/// The frozen backbone of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackboneConfig {
    /// Pre-trained weights (Google npz, timm, Hugging Face Dinov2Model or vapt safetensors,
    /// PyTorch checkpoints, ONNX exports of a Dinov2Model). Without weights the backbone is
    /// randomly initialised (useful for tests and benchmarks only).
    pub weights: Option<PathBuf>,
    /// Architecture: `auto` (read off the weights), a variant (`B/16`) or explicit dims
    /// (`D768-L12-H12-M3072-P16`). Required (not `auto`) without weights.
    pub variant: String,
    /// Input side in pixels (default: the checkpoint's; 224 for a random backbone).
    pub image_size: Option<usize>,
    /// Position-embedding resampling when the grid changes: `scipy-zoom`, `bilinear` or `bicubic`
    /// (DINOv2-style files keep their grid and resize it bicubically at every forward pass).
    pub resample: String,
    /// The pre-training kind (`supervised`, `mae`, `moco-v3`): read off the weights file when
    /// absent; sets the kind of a random backbone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<BackboneKind>,
}

impl Default for BackboneConfig {
    fn default() -> Self {
        Self {
            weights: None,
            variant: "auto".into(),
            image_size: None,
            resample: "scipy-zoom".into(),
            kind: None,
        }
    }
}

impl BackboneConfig {
    /// Loads the weights, or builds a random backbone of `variant` (seed Burn's generator first for
    /// a reproducible one). Returns the model and its pretrained config.
    pub fn load<B: Backend>(&self, device: &B::Device) -> Result<(Vit<B>, PretrainedCfg), LoadError> {
        let resample: PosEmbResample = self.resample.parse().map_err(|message| LoadError::Setting {
            key: "backbone.resample".into(),
            message,
        })?;
        let mut opts = LoadOptions::from_variant(&self.variant, self.image_size, resample)?;
        opts.kind = self.kind;
        match &self.weights {
            Some(path) => load_pretrained::<B>(path, &opts, device),
            None => {
                let vit = opts.arch.ok_or_else(|| LoadError::Setting {
                    key: "backbone".into(),
                    message: "a random backbone needs an explicit variant".into(),
                })?;
                let vit = vit.with_kind(self.kind.unwrap_or_default());
                vit.validate()?;
                let pre = PretrainedCfg {
                    input_size: vit.image_size,
                    ..PretrainedCfg::default()
                };
                Ok((vit.init::<B>(device), pre))
            }
        }
    }
}
