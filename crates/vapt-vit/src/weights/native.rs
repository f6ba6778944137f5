//! vapt's native layout: keys are the module paths of [`Vit`], tensors in Burn's layout, stored as
//! float32 safetensors with the architecture (`vapt.vit_config`) and pretrained config
//! (`vapt.pretrained`) as JSON metadata.
//!
//! | key | shape |
//! |---|---|
//! | `patch_embed.weight` | (C·p·p, D), input index c·p² + ky·p + kx |
//! | `patch_embed.bias` | (D) |
//! | `cls_token`, `pos_embed` | (1, 1, D), (1, 1+N, D) |
//! | `blocks.i.norm{1,2}.{weight,bias}` | (D) |
//! | `blocks.i.attn.{query,key,value,out}.weight` | (D, D) `[in, out]` |
//! | `blocks.i.attn.{query,key,value,out}.bias` | (D) |
//! | `blocks.i.mlp.fc1.weight`, `.bias` | (D, M), (M) |
//! | `blocks.i.mlp.fc2.weight`, `.bias` | (M, D), (D) |
//! | `norm.{weight,bias}` | (D) |
//! | `head.weight`, `head.bias` (only with a head) | (D, C), (C) |

use std::path::Path;

use burn::module::Param;
use burn::nn::{LayerNorm, LayerNormConfig, Linear};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use safetensors::tensor::{Dtype, TensorView};

use super::{LoadError, RawTensor, TensorMap};
use crate::config::VitConfig;
use crate::model::Vit;
use crate::pretrained::PretrainedCfg;

/// Metadata key holding the architecture as JSON.
pub const META_CONFIG: &str = "vapt.vit_config";
/// Metadata key holding the pretrained config as JSON.
pub const META_PRETRAINED: &str = "vapt.pretrained";

/// Every key (and shape) of the native layout for `cfg` (with `head.*` when it has classes).
pub fn expected_params(cfg: &VitConfig) -> Vec<(String, Vec<usize>)> {
    let (d, m) = (cfg.hidden, cfg.mlp_dim);
    let mut v = vec![
        ("patch_embed.weight".to_string(), vec![cfg.patch_dim(), d]),
        ("patch_embed.bias".to_string(), vec![d]),
        ("cls_token".to_string(), vec![1, 1, d]),
        ("pos_embed".to_string(), vec![1, 1 + cfg.num_patches(), d]),
    ];
    for i in 0..cfg.depth {
        let b = format!("blocks.{i}");
        for n in ["norm1", "norm2"] {
            v.push((format!("{b}.{n}.weight"), vec![d]));
            v.push((format!("{b}.{n}.bias"), vec![d]));
        }
        for p in ["query", "key", "value", "out"] {
            v.push((format!("{b}.attn.{p}.weight"), vec![d, d]));
            v.push((format!("{b}.attn.{p}.bias"), vec![d]));
        }
        v.push((format!("{b}.mlp.fc1.weight"), vec![d, m]));
        v.push((format!("{b}.mlp.fc1.bias"), vec![m]));
        v.push((format!("{b}.mlp.fc2.weight"), vec![m, d]));
        v.push((format!("{b}.mlp.fc2.bias"), vec![d]));
    }
    v.push(("norm.weight".to_string(), vec![d]));
    v.push(("norm.bias".to_string(), vec![d]));
    if let Some(c) = cfg.num_classes {
        v.push(("head.weight".to_string(), vec![d, c]));
        v.push(("head.bias".to_string(), vec![c]));
    }
    v
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
    let heads = super::default_heads(d).ok_or_else(|| {
        infer_err(format!(
            "no `{META_CONFIG}` metadata and width {d} is not standard"
        ))
    })?;
    let grid = super::file_grid(map, super::Layout::Native)?;
    Ok(VitConfig::new(d, depth, heads, m, p).with_image_size(grid * p))
}

/// Parses a safetensors file held in memory (F32/F64/F16/BF16 and I64/I32 are converted to f32).
pub fn parse_safetensors(path: &Path, bytes: &[u8]) -> Result<TensorMap, LoadError> {
    let format = |message: String| LoadError::Format {
        path: path.to_path_buf(),
        message,
    };
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| format(format!("not a valid safetensors (or npz) file: {e}")))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| format(format!("bad safetensors header: {e}")))?;
    let mut map = TensorMap::new(path);
    if let Some(m) = meta.metadata() {
        map.metadata = m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    }
    for (name, view) in st.tensors() {
        let data = view_to_f32(&view).map_err(|message| LoadError::Entry {
            path: path.to_path_buf(),
            key: name.clone(),
            message,
        })?;
        map.insert(name, RawTensor::new(view.shape().to_vec(), data));
    }
    Ok(map)
}

fn view_to_f32(view: &TensorView<'_>) -> Result<Vec<f32>, String> {
    let b = view.data();
    let v = match view.dtype() {
        Dtype::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F64 => b
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        Dtype::BF16 => b
            .chunks_exact(2)
            .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
            .collect(),
        Dtype::F16 => b
            .chunks_exact(2)
            .map(|c| super::npz::f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
        // Integer tensors (labels, indices in test fixtures) are converted; exact below 2^24.
        Dtype::I64 => b
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        Dtype::I32 => b
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
            .collect(),
        other => {
            return Err(format!(
                "dtype {other:?} is not supported (expected a float type)"
            ))
        }
    };
    Ok(v)
}

/// Writes `map` (float32) with its metadata as safetensors. The bytes depend only on the
/// content (tensors in name order, metadata sorted), so equal models give identical files. The
/// write is atomic: a temporary file in the same directory is renamed over `path`.
pub fn write_safetensors(path: &Path, map: &TensorMap) -> Result<(), LoadError> {
    let mut header = serde_json::Map::new();
    if !map.metadata.is_empty() {
        let meta: serde_json::Map<String, serde_json::Value> = map
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        header.insert("__metadata__".into(), serde_json::Value::Object(meta));
    }
    let mut offset = 0usize;
    for (k, t) in &map.tensors {
        if t.data.len() != t.shape.iter().product::<usize>() {
            return Err(LoadError::Format {
                path: path.to_path_buf(),
                message: format!(
                    "cannot serialise `{k}`: {} values for shape {:?}",
                    t.data.len(),
                    t.shape
                ),
            });
        }
        let end = offset + 4 * t.data.len();
        header.insert(
            k.clone(),
            serde_json::json!({"dtype": "F32", "shape": t.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut json =
        serde_json::to_string(&serde_json::Value::Object(header)).map_err(|e| LoadError::Format {
            path: path.to_path_buf(),
            message: format!("cannot write safetensors header: {e}"),
        })?;
    while json.len() % 8 != 0 {
        json.push(' ');
    }
    let mut bytes = Vec::with_capacity(8 + json.len() + offset);
    bytes.extend_from_slice(&(json.len() as u64).to_le_bytes());
    bytes.extend_from_slice(json.as_bytes());
    for t in map.tensors.values() {
        for v in &t.data {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
    }
    let tmp = path.with_extension("safetensors.tmp");
    let io = |source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(&tmp, &bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn param<B: Backend, const D: usize>(t: RawTensor, device: &B::Device) -> Param<Tensor<B, D>> {
    Param::from_tensor(Tensor::from_data(TensorData::new(t.data, t.shape), device))
}

fn raw<B: Backend, const D: usize>(t: &Tensor<B, D>) -> RawTensor {
    RawTensor::from_tensor(t.clone())
}

impl<B: Backend> Vit<B> {
    /// Builds a model for `cfg` from a native-layout map, after checking every key and shape.
    pub fn from_native(cfg: &VitConfig, mut map: TensorMap, device: &B::Device) -> Result<Self, LoadError> {
        let has_head = cfg.num_classes.is_some();
        map.check(
            &expected_params(cfg),
            |k| !has_head && k.starts_with("head."),
            super::Layout::Native.name(),
            &cfg.display_name(),
        )?;
        let mut model = cfg.init::<B>(device);
        let take_linear = |map: &mut TensorMap, prefix: &str| -> Result<Linear<B>, LoadError> {
            Ok(Linear {
                weight: param(map.take(&format!("{prefix}.weight"))?, device),
                bias: Some(param(map.take(&format!("{prefix}.bias"))?, device)),
            })
        };
        let take_norm = |map: &mut TensorMap, prefix: &str| -> Result<LayerNorm<B>, LoadError> {
            let mut norm = LayerNormConfig::new(cfg.hidden)
                .with_epsilon(cfg.layer_norm_eps)
                .init::<B>(device);
            norm.gamma = param(map.take(&format!("{prefix}.weight"))?, device);
            norm.beta = Some(param(map.take(&format!("{prefix}.bias"))?, device));
            Ok(norm)
        };
        model.patch_embed.weight = param(map.take("patch_embed.weight")?, device);
        model.patch_embed.bias = param(map.take("patch_embed.bias")?, device);
        model.cls_token = param(map.take("cls_token")?, device);
        model.pos_embed = param(map.take("pos_embed")?, device);
        for (i, block) in model.blocks.iter_mut().enumerate() {
            let b = format!("blocks.{i}");
            block.norm1 = take_norm(&mut map, &format!("{b}.norm1"))?;
            block.norm2 = take_norm(&mut map, &format!("{b}.norm2"))?;
            block.attn.query = take_linear(&mut map, &format!("{b}.attn.query"))?;
            block.attn.key = take_linear(&mut map, &format!("{b}.attn.key"))?;
            block.attn.value = take_linear(&mut map, &format!("{b}.attn.value"))?;
            block.attn.out = take_linear(&mut map, &format!("{b}.attn.out"))?;
            block.mlp.fc1 = take_linear(&mut map, &format!("{b}.mlp.fc1"))?;
            block.mlp.fc2 = take_linear(&mut map, &format!("{b}.mlp.fc2"))?;
        }
        model.norm = take_norm(&mut map, "norm")?;
        if has_head {
            model.head = Some(take_linear(&mut map, "head")?);
        }
        Ok(model)
    }

    /// Exports every backbone tensor (and the head, if any) in the native layout, with the
    /// architecture in the metadata.
    pub fn to_native(&self) -> TensorMap {
        let mut map = TensorMap::new("<memory>");
        let lin = |map: &mut TensorMap, prefix: &str, l: &Linear<B>| {
            map.insert(format!("{prefix}.weight"), raw(&l.weight.val()));
            if let Some(b) = &l.bias {
                map.insert(format!("{prefix}.bias"), raw(&b.val()));
            }
        };
        let norm = |map: &mut TensorMap, prefix: &str, n: &LayerNorm<B>| {
            map.insert(format!("{prefix}.weight"), raw(&n.gamma.val()));
            if let Some(b) = &n.beta {
                map.insert(format!("{prefix}.bias"), raw(&b.val()));
            }
        };
        map.insert("patch_embed.weight", raw(&self.patch_embed.weight.val()));
        map.insert("patch_embed.bias", raw(&self.patch_embed.bias.val()));
        map.insert("cls_token", raw(&self.cls_token.val()));
        map.insert("pos_embed", raw(&self.pos_embed.val()));
        for (i, block) in self.blocks.iter().enumerate() {
            let b = format!("blocks.{i}");
            norm(&mut map, &format!("{b}.norm1"), &block.norm1);
            norm(&mut map, &format!("{b}.norm2"), &block.norm2);
            lin(&mut map, &format!("{b}.attn.query"), &block.attn.query);
            lin(&mut map, &format!("{b}.attn.key"), &block.attn.key);
            lin(&mut map, &format!("{b}.attn.value"), &block.attn.value);
            lin(&mut map, &format!("{b}.attn.out"), &block.attn.out);
            lin(&mut map, &format!("{b}.mlp.fc1"), &block.mlp.fc1);
            lin(&mut map, &format!("{b}.mlp.fc2"), &block.mlp.fc2);
        }
        norm(&mut map, "norm", &self.norm);
        if let Some(head) = &self.head {
            lin(&mut map, "head", head);
        }
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
