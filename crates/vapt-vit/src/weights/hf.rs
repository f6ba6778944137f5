//! Hugging Face `Dinov2Model` safetensors layout (`facebook/dinov2-small` … `-large`), and the
//! backbone of ONNX graphs exported from it ([`super::onnx`]).
//!
//! | HF key | HF shape | native key | transform |
//! |---|---|---|---|
//! | `embeddings.patch_embeddings.projection.weight` | (D, C, p, p) OIHW | `patch_embed.weight` (C·p·p, D) | flatten, transpose |
//! | `embeddings.patch_embeddings.projection.bias` | (D) | `patch_embed.bias` | — |
//! | `embeddings.cls_token` | (1, 1, D) | `cls_token` | — |
//! | `embeddings.position_embeddings` | (1, 1+N, D) | `pos_embed` (the stored grid) | — |
//! | `encoder.layer.i.norm{1,2}.{weight,bias}` | (D) | `blocks.i.norm{1,2}.*` | — |
//! | `encoder.layer.i.attention.attention.{query,key,value}.weight` | (D, D) `(out, in)` | `blocks.i.attn.{query,key,value}.weight` | transpose |
//! | `encoder.layer.i.attention.attention.{query,key,value}.bias` | (D) | `….bias` | — |
//! | `encoder.layer.i.attention.output.dense.{weight,bias}` | `(out, in)` | `blocks.i.attn.out.*` | transpose |
//! | `encoder.layer.i.layer_scale{1,2}.lambda1` | (D) | `blocks.i.ls{1,2}.gamma` | — |
//! | `encoder.layer.i.mlp.fc{1,2}.{weight,bias}` | `(out, in)` | `blocks.i.mlp.fc{1,2}.*` | transpose |
//! | `layernorm.{weight,bias}` | (D) | `norm.*` | — |
//! | `embeddings.mask_token`, `pooler.*`, `classifier.*` | | not loaded | |
//!
//! Like timm, the file does not store the head count: the standard one for the width is assumed.
//! SwiGLU MLPs (`dinov2-giant`: `mlp.weights_in`) are not supported and are reported as unexpected.

use super::rename::{Source, Transform};
use super::{LoadError, TensorMap};
use crate::config::VitConfig;

/// Key of the position embedding.
pub const POS_EMBED: &str = "embeddings.position_embeddings";
/// Key of the patch-embedding kernel (the one key that tells the layout).
pub const PATCH_WEIGHT: &str = "embeddings.patch_embeddings.projection.weight";

/// Keys of a `Dinov2Model` file that vapt does not load.
pub fn ignored(key: &str) -> bool {
    key == "embeddings.mask_token" || key.starts_with("pooler.") || key.starts_with("classifier.")
}

/// Where native tensor `key` (shape `shape`) comes from in a `Dinov2Model` file (the table above).
pub fn source(key: &str, shape: &[usize], cfg: &VitConfig) -> Option<Source> {
    let same = |k: String| Some(Source::new(k, shape.to_vec(), Transform::Same));
    let transposed = |k: String| {
        let file = shape.iter().rev().copied().collect();
        Some(Source::new(k, file, Transform::Transpose))
    };
    if let Some((i, rest)) = super::native::split_block(key) {
        let layer = format!("encoder.layer.{i}");
        let (module, tensor) = rest.rsplit_once('.')?;
        let file_module = match module {
            "norm1" | "norm2" | "mlp.fc1" | "mlp.fc2" => module.to_string(),
            "attn.query" | "attn.key" | "attn.value" => {
                format!("attention.attention.{}", module.trim_start_matches("attn."))
            }
            "attn.out" => "attention.output.dense".to_string(),
            "ls1" => return same(format!("{layer}.layer_scale1.lambda1")),
            "ls2" => return same(format!("{layer}.layer_scale2.lambda1")),
            _ => return None,
        };
        let file = format!("{layer}.{file_module}.{tensor}");
        return match module.starts_with("attn.") || module.starts_with("mlp.") {
            true if tensor == "weight" => transposed(file),
            _ => same(file),
        };
    }
    match key {
        "patch_embed.weight" => Some(Source::new(
            PATCH_WEIGHT,
            vec![cfg.hidden, cfg.in_channels, cfg.patch_size, cfg.patch_size],
            Transform::PatchOihw,
        )),
        "patch_embed.bias" => same("embeddings.patch_embeddings.projection.bias".into()),
        "cls_token" => same("embeddings.cls_token".into()),
        "pos_embed" => same(POS_EMBED.into()),
        "norm.weight" => same("layernorm.weight".into()),
        "norm.bias" => same("layernorm.bias".into()),
        _ => None,
    }
}

/// Reads the architecture off the shapes (the head count from the standard sizes).
pub fn infer(map: &TensorMap) -> Result<VitConfig, LoadError> {
    let keys = super::timm::ShapeKeys {
        patch: PATCH_WEIGHT,
        blocks: "encoder.layer.",
        fc1: "encoder.layer.0.mlp.fc1.weight",
        layer_scale: "encoder.layer.0.layer_scale1.lambda1",
    };
    super::timm::infer_pytorch(map, super::Layout::Hf, &keys)
}
