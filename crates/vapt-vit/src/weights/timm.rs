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
//! | `norm.{weight,bias}` | (D) | same | — |
//! | `head.*`, `fc_norm.*` | | not loaded | |

use super::{LoadError, RawTensor, TensorMap};
use crate::config::VitConfig;

/// Keys that may be present in timm checkpoints but are not loaded.
pub fn ignored(key: &str) -> bool {
    key.starts_with("head.") || key.starts_with("fc_norm.") || key.starts_with("head_drop")
}

/// Every key (and shape) `cfg` needs from a timm safetensors file.
pub fn expected_params(cfg: &VitConfig) -> Vec<(String, Vec<usize>)> {
    let (d, m, p, c) = (cfg.hidden, cfg.mlp_dim, cfg.patch_size, cfg.in_channels);
    let mut v = vec![
        ("patch_embed.proj.weight".to_string(), vec![d, c, p, p]),
        ("patch_embed.proj.bias".to_string(), vec![d]),
        ("cls_token".to_string(), vec![1, 1, d]),
        ("pos_embed".to_string(), vec![1, 1 + cfg.num_patches(), d]),
        ("norm.weight".to_string(), vec![d]),
        ("norm.bias".to_string(), vec![d]),
    ];
    for i in 0..cfg.depth {
        let b = format!("blocks.{i}");
        for n in ["norm1", "norm2"] {
            v.push((format!("{b}.{n}.weight"), vec![d]));
            v.push((format!("{b}.{n}.bias"), vec![d]));
        }
        v.push((format!("{b}.attn.qkv.weight"), vec![3 * d, d]));
        v.push((format!("{b}.attn.qkv.bias"), vec![3 * d]));
        v.push((format!("{b}.attn.proj.weight"), vec![d, d]));
        v.push((format!("{b}.attn.proj.bias"), vec![d]));
        v.push((format!("{b}.mlp.fc1.weight"), vec![m, d]));
        v.push((format!("{b}.mlp.fc1.bias"), vec![m]));
        v.push((format!("{b}.mlp.fc2.weight"), vec![d, m]));
        v.push((format!("{b}.mlp.fc2.bias"), vec![d]));
    }
    v
}

/// Reads the architecture off the shapes. timm fuses q/k/v, so the number of heads is not stored:
/// it comes from the standard ViT sizes (head width 64, 16 heads for ViT-H).
pub fn infer(map: &TensorMap) -> Result<VitConfig, LoadError> {
    let infer_err = |message: String| LoadError::Infer {
        path: map.source.clone(),
        message,
    };
    let w = map
        .shape("patch_embed.proj.weight")
        .ok_or_else(|| infer_err("key `patch_embed.proj.weight` is missing".into()))?;
    let [d, c, p, p2] = w[..] else {
        return Err(infer_err(format!("`patch_embed.proj.weight` has shape {w:?}")));
    };
    if p != p2 {
        return Err(infer_err(format!("`patch_embed.proj.weight` has shape {w:?}")));
    }
    let depth = (0..)
        .take_while(|i| map.tensors.contains_key(&format!("blocks.{i}.norm1.weight")))
        .count();
    let fc1 = map
        .shape("blocks.0.mlp.fc1.weight")
        .ok_or_else(|| infer_err("key `blocks.0.mlp.fc1.weight` is missing".into()))?;
    let m = *fc1
        .first()
        .ok_or_else(|| infer_err(format!("`blocks.0.mlp.fc1.weight` has shape {fc1:?}")))?;
    let heads = super::default_heads(d).ok_or_else(|| {
        infer_err(format!(
            "width {d} is not a standard ViT width, so the head count is unknown"
        ))
    })?;
    let grid = super::file_grid(map, super::Layout::Timm)?;
    let mut cfg = VitConfig::new(d, depth, heads, m, p).with_image_size(grid * p);
    cfg.in_channels = c;
    Ok(cfg)
}

/// Validates every key against `cfg` and converts to the native layout.
pub fn to_native(mut map: TensorMap, cfg: &VitConfig) -> Result<TensorMap, LoadError> {
    map.check(
        &expected_params(cfg),
        ignored,
        super::Layout::Timm.name(),
        &cfg.display_name(),
    )?;
    let d = cfg.hidden;
    let mut out = TensorMap::new(map.source.clone());
    out.metadata = std::mem::take(&mut map.metadata);
    let w = map
        .take("patch_embed.proj.weight")?
        .reshaped(vec![d, cfg.patch_dim()]);
    out.insert("patch_embed.weight", w.transposed_2d());
    out.insert("patch_embed.bias", map.take("patch_embed.proj.bias")?);
    for k in ["cls_token", "pos_embed", "norm.weight", "norm.bias"] {
        out.insert(k, map.take(k)?);
    }
    for i in 0..cfg.depth {
        let b = format!("blocks.{i}");
        for n in ["norm1", "norm2"] {
            for wb in ["weight", "bias"] {
                let k = format!("{b}.{n}.{wb}");
                out.insert(k.clone(), map.take(&k)?);
            }
        }
        let qkv_w = map.take(&format!("{b}.attn.qkv.weight"))?;
        let qkv_b = map.take(&format!("{b}.attn.qkv.bias"))?;
        for (j, name) in ["query", "key", "value"].iter().enumerate() {
            let rows = qkv_w.data[j * d * d..(j + 1) * d * d].to_vec();
            let w = RawTensor::new(vec![d, d], rows).transposed_2d();
            let bias = RawTensor::new(vec![d], qkv_b.data[j * d..(j + 1) * d].to_vec());
            out.insert(format!("{b}.attn.{name}.weight"), w);
            out.insert(format!("{b}.attn.{name}.bias"), bias);
        }
        let proj = map.take(&format!("{b}.attn.proj.weight"))?;
        out.insert(format!("{b}.attn.out.weight"), proj.transposed_2d());
        out.insert(
            format!("{b}.attn.out.bias"),
            map.take(&format!("{b}.attn.proj.bias"))?,
        );
        for fc in ["fc1", "fc2"] {
            let w = map.take(&format!("{b}.mlp.{fc}.weight"))?;
            out.insert(format!("{b}.mlp.{fc}.weight"), w.transposed_2d());
            out.insert(
                format!("{b}.mlp.{fc}.bias"),
                map.take(&format!("{b}.mlp.{fc}.bias"))?,
            );
        }
    }
    Ok(out)
}
