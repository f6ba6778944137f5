//! timm safetensors layout (`vit_base_patch16_224.orig_in21k`, `…augreg_in21k`, …).
//!
//! | timm key | timm shape | native key | transform |
//! |---|---|---|---|
//! | `patch_embed.proj.weight` | (D, C, p, p) OIHW | `patch_embed.weight` (C·p·p, D) | flatten to (D, C·p·p), transpose |
//! | `patch_embed.proj.bias` | (D) | `patch_embed.bias` | — |
//! | `cls_token`, `pos_embed` | (1, 1, D), (1, 1+N, D) | same | — |
//! | `blocks.i.norm{1,2}.{weight,bias}` | (D) | same | — |
//! | `blocks.i.attn.qkv.weight` | (3D, D) `(out, in)`, rows [q; k; v] | `blocks.i.attn.{query,key,value}.weight` (D, D) `[in, out]` | split rows in thirds, transpose each |
//! | `blocks.i.attn.qkv.bias` | (3D) | `….{query,key,value}.bias` | split in thirds |
//! | `blocks.i.attn.proj.{weight,bias}` | (D, D) `(out, in)` | `blocks.i.attn.out.*` | transpose |
//! | `blocks.i.mlp.fc{1,2}.{weight,bias}` | `(out, in)` | same | transpose |
//! | `blocks.i.ls{1,2}.gamma` (DINOv2's LayerScale) | (D) | same | — |
//! | `norm.{weight,bias}` | (D) | same | — (not loaded for MAE) |
//! | `fc_norm.{weight,bias}` | (D) | same (mean pooling) | MAE's pre-training file has none: 1 and 0 |
//! | `head.*`, `mask_token` (DINOv2) | | not loaded | |
//!
//! A file with LayerScale (`vit_small_patch14_dinov2` … `vit_large_patch14_dinov2`) is a DINOv2
//! backbone: its position embedding keeps the stored grid (37 × 37 for 518 px) and is resized at
//! every forward pass. SwiGLU MLPs (`vit_giant_patch14_dinov2`) and register tokens (`…_reg4_…`)
//! are not supported: their keys are reported as unexpected.

use super::rename::{Source, Transform};
use super::{LoadError, TensorMap};
use crate::config::{BackboneKind, VitConfig};

/// Keys that may be present in timm checkpoints (or the PyTorch checkpoints with timm keys) but
/// are not loaded: heads, and for an MAE backbone the final `norm` its authors' model deletes
/// (and MAE's decoder, in the full pre-training file).
pub fn ignored(key: &str, kind: BackboneKind) -> bool {
    let head = key.starts_with("head.") || key.starts_with("head_drop");
    let mae = kind == BackboneKind::Mae && (key.starts_with("norm.") || key.starts_with("decoder"));
    head || mae || key == "mask_token" || (kind != BackboneKind::Mae && key.starts_with("fc_norm."))
}

/// Where native tensor `key` (shape `shape`) comes from in a timm file (the table above).
pub fn source(key: &str, shape: &[usize], cfg: &VitConfig) -> Option<Source> {
    let d = cfg.hidden;
    let same = |k: String| Some(Source::new(k, shape.to_vec(), Transform::Same));
    let transposed = |k: String| {
        let file = shape.iter().rev().copied().collect();
        Some(Source::new(k, file, Transform::Transpose))
    };
    if let Some((i, rest)) = super::native::split_block(key) {
        let b = format!("blocks.{i}");
        let (module, tensor) = rest.rsplit_once('.')?;
        let matrix = tensor == "weight";
        return match module {
            "norm1" | "norm2" => same(key.to_string()),
            "attn.query" | "attn.key" | "attn.value" => {
                let index = ["attn.query", "attn.key", "attn.value"]
                    .iter()
                    .position(|m| *m == module)?;
                let file = if matrix { vec![3 * d, d] } else { vec![3 * d] };
                let part = Transform::FusedPart { index, parts: 3 };
                Some(Source::new(format!("{b}.attn.qkv.{tensor}"), file, part))
            }
            "attn.out" if matrix => transposed(format!("{b}.attn.proj.weight")),
            "attn.out" => same(format!("{b}.attn.proj.bias")),
            "mlp.fc1" | "mlp.fc2" if matrix => transposed(key.to_string()),
            "mlp.fc1" | "mlp.fc2" => same(key.to_string()),
            "ls1" | "ls2" => same(key.to_string()),
            _ => None,
        };
    }
    match key {
        "patch_embed.weight" => Some(Source::new(
            "patch_embed.proj.weight",
            vec![d, cfg.in_channels, cfg.patch_size, cfg.patch_size],
            Transform::PatchOihw,
        )),
        "patch_embed.bias" => same("patch_embed.proj.bias".into()),
        "cls_token" | "pos_embed" | "norm.weight" | "norm.bias" => same(key.to_string()),
        // MAE's pre-training file has no fc_norm: the authors' model keeps its initial values.
        "fc_norm.weight" if cfg.kind == BackboneKind::Mae => Some(Source::fill(1.0)),
        "fc_norm.bias" if cfg.kind == BackboneKind::Mae => Some(Source::fill(0.0)),
        "fc_norm.weight" | "fc_norm.bias" => same(key.to_string()),
        _ => None,
    }
}

/// Where a file in PyTorch's layout (timm, Hugging Face) keeps what its architecture is read from.
pub(super) struct ShapeKeys {
    /// The patch-embedding kernel, OIHW `(D, C, p, p)`.
    pub patch: &'static str,
    /// The prefix of block `i`'s keys before `i` (`blocks.`, `encoder.layer.`).
    pub blocks: &'static str,
    /// Block 0's `fc1` weight, `(M, D)`.
    pub fc1: &'static str,
    /// Block 0's first LayerScale: present in DINOv2-style files.
    pub layer_scale: &'static str,
}

/// The architecture of a file in PyTorch's layout: width, channels and patch from the kernel,
/// depth from the blocks' `norm1`, MLP width from `fc1`, the stored grid from the position
/// embedding; the head count is not stored (fused or separate q/k/v alike), so it comes from the
/// standard ViT sizes. LayerScale makes it a DINOv2-style backbone that keeps its grid.
pub(super) fn infer_pytorch(
    map: &TensorMap,
    layout: super::Layout,
    keys: &ShapeKeys,
) -> Result<VitConfig, LoadError> {
    let infer_err = |message: String| LoadError::Infer {
        path: map.source.clone(),
        message,
    };
    let w = map
        .shape(keys.patch)
        .ok_or_else(|| infer_err(format!("key `{}` is missing", keys.patch)))?;
    let [d, c, p, p2] = w[..] else {
        return Err(infer_err(format!("`{}` has shape {w:?}", keys.patch)));
    };
    if p != p2 {
        return Err(infer_err(format!("`{}` has shape {w:?}", keys.patch)));
    }
    let depth = (0..)
        .take_while(|i| {
            map.tensors
                .contains_key(&format!("{}{i}.norm1.weight", keys.blocks))
        })
        .count();
    let m = map
        .shape(keys.fc1)
        .and_then(|s| s.first().copied())
        .ok_or_else(|| infer_err(format!("key `{}` is missing or has no rows", keys.fc1)))?;
    let heads = crate::config::standard_heads(d).ok_or_else(|| {
        infer_err(format!(
            "width {d} is not a standard ViT width, so the head count is unknown"
        ))
    })?;
    let grid = super::file_grid(map, layout)?;
    let mut cfg = VitConfig::new(d, depth, heads, m, p).with_image_size(grid * p);
    cfg.in_channels = c;
    Ok(match map.tensors.contains_key(keys.layer_scale) {
        true => cfg.with_dinov2(grid),
        false => cfg,
    })
}

/// Reads the architecture off the shapes ([`infer_pytorch`]).
pub fn infer(map: &TensorMap) -> Result<VitConfig, LoadError> {
    let keys = ShapeKeys {
        patch: "patch_embed.proj.weight",
        blocks: "blocks.",
        fc1: "blocks.0.mlp.fc1.weight",
        layer_scale: "blocks.0.ls1.gamma",
    };
    infer_pytorch(map, super::Layout::Timm, &keys)
}
