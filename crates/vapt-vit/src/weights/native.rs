//! vapt's native layout: keys are the module paths of [`Vit`] (see [`super::named`]), tensors in
//! Burn's layout, stored as float32 safetensors with the architecture (`vapt.vit_config`) and
//! pretrained config (`vapt.pretrained`) as JSON metadata.
//!
//! [`native_params`] is the one table of a backbone's tensors: the expected-key check of every
//! layout, the rename tables of the Google and timm layouts, loading ([`Vit::from_native`]), saving
//! ([`Vit::to_native`]) and the parameter count all read it.
//!
//! | key | shape |
//! |---|---|
//! | `patch_embed.weight` | (C·p·p, D), input index c·p² + ky·p + kx |
//! | `patch_embed.bias` | (D) |
//! | `cls_token`, `pos_embed` | (1, 1, D), (1, 1+N, D), N the stored grid's patches |
//! | `blocks.i.norm{1,2}.{weight,bias}` | (D) |
//! | `blocks.i.attn.{query,key,value,out}.weight` | (D, D) `[in, out]` |
//! | `blocks.i.attn.{query,key,value,out}.bias` | (D) |
//! | `blocks.i.mlp.fc1.weight`, `.bias` | (D, M), (M) |
//! | `blocks.i.mlp.fc2.weight`, `.bias` | (M, D), (D) |
//! | `blocks.i.ls{1,2}.gamma` (LayerScale only) | (D) |
//! | `norm.{weight,bias}` (CLS pooling) or `fc_norm.{weight,bias}` (MAE's mean pooling) | (D) |
//! | `head.weight`, `head.bias` (only with a head) | (D, C), (C) |

use std::path::Path;

use burn::tensor::backend::Backend;

use super::named;
use super::safetensors_io::write_safetensors;
use super::{LoadError, TensorMap};
use crate::config::{BackboneKind, Pool, VitConfig};
use crate::model::Vit;
use crate::pretrained::PretrainedCfg;

/// Metadata key holding the architecture as JSON.
pub const META_CONFIG: &str = "vapt.vit_config";
pub use crate::pretrained::META_PRETRAINED;

/// Every tensor of the native layout for `cfg`, with its shape, in module order (with `head.*`
/// when the config has classes).
pub fn native_params(cfg: &VitConfig) -> Vec<(String, Vec<usize>)> {
    let (d, m) = (cfg.hidden, cfg.mlp_dim);
    let mut v = vec![
        ("patch_embed.weight".to_string(), vec![cfg.patch_dim(), d]),
        ("patch_embed.bias".to_string(), vec![d]),
        ("cls_token".to_string(), vec![1, 1, d]),
        (
            "pos_embed".to_string(),
            vec![1, 1 + cfg.pos_grid() * cfg.pos_grid(), d],
        ),
    ];
    for i in 0..cfg.depth {
        let b = format!("blocks.{i}");
        let mut push = |name: &str, shape: Vec<usize>| v.push((format!("{b}.{name}"), shape));
        push("norm1.weight", vec![d]);
        push("norm1.bias", vec![d]);
        for p in ["query", "key", "value", "out"] {
            push(&format!("attn.{p}.weight"), vec![d, d]);
            push(&format!("attn.{p}.bias"), vec![d]);
        }
        push("norm2.weight", vec![d]);
        push("norm2.bias", vec![d]);
        push("mlp.fc1.weight", vec![d, m]);
        push("mlp.fc1.bias", vec![m]);
        push("mlp.fc2.weight", vec![m, d]);
        push("mlp.fc2.bias", vec![d]);
        if cfg.layer_scale {
            push("ls1.gamma", vec![d]);
            push("ls2.gamma", vec![d]);
        }
    }
    let norm = match cfg.pool() {
        Pool::Cls => "norm",
        Pool::Mean => "fc_norm",
    };
    v.push((format!("{norm}.weight"), vec![d]));
    v.push((format!("{norm}.bias"), vec![d]));
    if let Some(c) = cfg.num_classes {
        v.push(("head.weight".to_string(), vec![d, c]));
        v.push(("head.bias".to_string(), vec![c]));
    }
    v
}

impl VitConfig {
    /// Number of backbone parameters (embedding, blocks, final norm), without the head: the sum
    /// over [`native_params`].
    pub fn num_backbone_params(&self) -> usize {
        let cfg = self.clone().with_num_classes(None);
        native_params(&cfg)
            .iter()
            .map(|(_, shape)| shape.iter().product::<usize>())
            .sum()
    }
}

/// `blocks.{i}.{rest}` → `(i, rest)`.
pub fn split_block(key: &str) -> Option<(usize, &str)> {
    let (i, rest) = key.strip_prefix("blocks.")?.split_once('.')?;
    Some((i.parse().ok()?, rest))
}

/// Reads the architecture from the metadata, or from the shapes when there is none.
pub fn infer(map: &TensorMap) -> Result<VitConfig, LoadError> {
    if let Some(json) = map.metadata.get(META_CONFIG) {
        let mut cfg: VitConfig = serde_json::from_str(json).map_err(|e| LoadError::Format {
            path: map.source.clone(),
            message: format!("metadata `{META_CONFIG}` is not a valid ViT config: {e}"),
        })?;
        cfg.num_classes = None;
        return Ok(cfg);
    }
    let infer_err = |message: String| LoadError::Infer {
        path: map.source.clone(),
        message,
    };
    // The dimension `axis` of `key`, or an error naming what is missing or malformed.
    let dim = |key: &str, axis: usize| -> Result<usize, LoadError> {
        let shape = map
            .shape(key)
            .ok_or_else(|| infer_err(format!("key `{key}` is missing")))?;
        shape
            .get(axis)
            .copied()
            .ok_or_else(|| infer_err(format!("`{key}` has shape {shape:?}")))
    };
    let d = dim("cls_token", 2)?;
    let pd = dim("patch_embed.weight", 0)?;
    let p = ((pd / 3) as f64).sqrt().round() as usize;
    if 3 * p * p != pd {
        return Err(infer_err(format!(
            "`patch_embed.weight` has {pd} input rows, not 3·p² for any patch size p"
        )));
    }
    let depth = (0..)
        .take_while(|i| map.tensors.contains_key(&format!("blocks.{i}.norm1.weight")))
        .count();
    let m = dim("blocks.0.mlp.fc1.weight", 1)?;
    let heads = crate::config::standard_heads(d).ok_or_else(|| {
        infer_err(format!(
            "no `{META_CONFIG}` metadata and width {d} is not standard"
        ))
    })?;
    let grid = super::file_grid(map, super::Layout::Native)?;
    let kind = if map.tensors.contains_key("fc_norm.weight") {
        BackboneKind::Mae
    } else {
        BackboneKind::Supervised
    };
    let cfg = VitConfig::new(d, depth, heads, m, p)
        .with_image_size(grid * p)
        .with_kind(kind);
    Ok(match map.tensors.contains_key("blocks.0.ls1.gamma") {
        true => cfg.with_dinov2(grid),
        false => cfg,
    })
}

impl<B: Backend> Vit<B> {
    /// Builds a model for `cfg` from a native-layout map, after checking every key and shape.
    pub fn from_native(cfg: &VitConfig, map: TensorMap, device: &B::Device) -> Result<Self, LoadError> {
        let has_head = cfg.num_classes.is_some();
        map.check(
            &native_params(cfg),
            |k| !has_head && k.starts_with("head."),
            super::Layout::Native.name(),
            &cfg.display_name(),
        )?;
        // Every parameter is replaced; the lazy ones are never initialised.
        let model = cfg.init::<B>(device);
        let (model, used) =
            named::write(model, &map, |p| Some(p.to_string())).map_err(|problems| LoadError::Format {
                path: map.source.clone(),
                message: problems.join("; "),
            })?;
        let expected = native_params(cfg).len();
        if used.len() != expected {
            return Err(LoadError::Format {
                path: map.source.clone(),
                message: format!(
                    "the model has {} of the {expected} native tensors (module paths out of step \
                     with `native_params`)",
                    used.len()
                ),
            });
        }
        Ok(model)
    }

    /// Exports every backbone tensor (and the head, if any) in the native layout, with the
    /// architecture in the metadata.
    pub fn to_native(&self) -> TensorMap {
        let mut map = named::read(self, |p| Some(p.to_string()));
        let mut cfg = self.config.clone();
        cfg.num_classes = None;
        if let Ok(json) = serde_json::to_string(&cfg) {
            map.metadata.insert(META_CONFIG.into(), json);
        }
        map
    }

    /// Writes the model as native safetensors, with `pretrained` (if given) in the metadata.
    pub fn save_safetensors(&self, path: &Path, pretrained: Option<&PretrainedCfg>) -> Result<(), LoadError> {
        let mut map = self.to_native();
        if let Some(p) = pretrained {
            if let Ok(json) = serde_json::to_string(p) {
                map.metadata.insert(META_PRETRAINED.into(), json);
            }
        }
        write_safetensors(path, &map)
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;

    use super::*;

    #[test]
    fn the_native_table_is_the_models_module_paths_and_the_parameter_count() {
        for cfg in [
            VitConfig::new(8, 2, 2, 16, 4).with_image_size(8),
            VitConfig::new(8, 1, 2, 16, 4)
                .with_image_size(12)
                .with_num_classes(Some(3)),
            VitConfig::new(8, 2, 2, 16, 4).with_image_size(8).with_dinov2(3),
        ] {
            let vit = cfg.init::<Flex>(&Default::default());
            assert_eq!(named::shapes(&vit), native_params(&cfg));
        }
        assert_eq!(VitConfig::vit_b16().num_backbone_params(), 85_798_656);
    }
}
