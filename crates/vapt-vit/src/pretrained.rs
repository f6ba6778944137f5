//! Pretrained-weights configuration, kept apart from the architecture (timm's `PretrainedCfg`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Metadata key of a native safetensors file holding its pretrained config as JSON.
pub const META_PRETRAINED: &str = "vapt.pretrained";

/// ImageNet mean, the normalisation the VPT/VAPT recipe feeds the IN-21k ViT-B/16.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet standard deviation.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Where a backbone's weights came from and how its inputs must be prepared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainedCfg {
    /// A short tag (e.g. `imagenet21k`, `vapt-mnist-tiny`), if known.
    pub tag: Option<String>,
    /// The file layout it was read from (`google npz`, `timm safetensors`, ...).
    pub source: String,
    /// The file it was read from.
    pub file: Option<PathBuf>,
    /// SHA-256 of that file (hex).
    pub sha256: Option<String>,
    /// Square input side the model is configured for.
    pub input_size: usize,
    /// Per-channel mean subtracted after scaling pixels to [0, 1].
    pub mean: [f32; 3],
    /// Per-channel standard deviation divided by after subtracting the mean.
    pub std: [f32; 3],
    /// Resize interpolation the recipe uses.
    pub interpolation: String,
    /// Entries of the weights file that were not loaded (pre-training heads, MAE's final norm, a
    /// checkpoint's optimizer state, a momentum encoder).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignored: Vec<String>,
}

impl Default for PretrainedCfg {
    /// The paper's recipe: 224 px, ImageNet mean/std, bilinear.
    fn default() -> Self {
        Self {
            tag: None,
            source: "random".into(),
            file: None,
            sha256: None,
            input_size: 224,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            interpolation: "bilinear".into(),
            ignored: Vec::new(),
        }
    }
}

impl PretrainedCfg {
    /// Reads the config stored in a native safetensors header, if any.
    pub fn from_metadata(meta: &BTreeMap<String, String>) -> Option<Self> {
        meta.get(META_PRETRAINED)
            .and_then(|json| serde_json::from_str(json).ok())
    }
}
