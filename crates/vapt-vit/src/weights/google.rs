//! Google `vit_jax` npz layout (`ViT-B_16.npz`, `imagenet21k_ViT-B_16.npz`).
//!
//! | npz key | npz shape | native key | transform |
//! |---|---|---|---|
//! | `embedding/kernel` | (p, p, C, D) HWIO | `patch_embed.weight` (C·p·p, D) | permute to (C, p, p, D) = axes (2, 0, 1, 3), flatten the first three |
//! | `embedding/bias` | (D) | `patch_embed.bias` | — |
//! | `cls` | (1, 1, D) | `cls_token` | — |
//! | `Transformer/posembed_input/pos_embedding` | (1, 1+N, D) | `pos_embed` | — |
//! | `…/LayerNorm_0/{scale,bias}` | (D) | `blocks.i.norm1.{weight,bias}` | — |
//! | `…/MultiHeadDotProductAttention_1/{query,key,value}/kernel` | (D, H, hd) | `blocks.i.attn.{query,key,value}.weight` (D, D) `[in, out]` | row-major reshape: out index h·hd + j |
//! | `…/MultiHeadDotProductAttention_1/{query,key,value}/bias` | (H, hd) | `….bias` (D) | reshape |
//! | `…/MultiHeadDotProductAttention_1/out/kernel` | (H, hd, D) | `blocks.i.attn.out.weight` (D, D) `[in, out]` | reshape: in index h·hd + j |
//! | `…/LayerNorm_2/{scale,bias}` | (D) | `blocks.i.norm2.*` | — |
//! | `…/MlpBlock_3/Dense_{0,1}/{kernel,bias}` | `[in, out]` | `blocks.i.mlp.fc{1,2}.*` | — (Dense kernels are already `[in, out]`, Burn's `Linear` layout) |
//! | `Transformer/encoder_norm/{scale,bias}` | (D) | `norm.*` | — |
//! | `head/*`, `pre_logits/*` | | not loaded | the pre-training head is never used |

use super::rename::{Source, Transform};
use super::{LoadError, TensorMap};
use crate::config::VitConfig;

/// Key of the position embedding.
pub const POS_EMBED: &str = "Transformer/posembed_input/pos_embedding";

fn block(i: usize) -> String {
    format!("Transformer/encoderblock_{i}")
}

/// Keys that are present in Google checkpoints but deliberately not loaded.
pub fn ignored(key: &str) -> bool {
    key.starts_with("head/") || key.starts_with("pre_logits/")
}

/// Where native tensor `key` (shape `shape`) comes from in a Google npz (the table above).
pub fn source(key: &str, shape: &[usize], cfg: &VitConfig) -> Option<Source> {
    let (h, hd) = (cfg.heads, cfg.head_dim());
    let same = |k: String| Some(Source::new(k, shape.to_vec(), Transform::Same));
    let heads = |k: String, file: Vec<usize>| Some(Source::new(k, file, Transform::Reshape));
    if let Some((i, rest)) = super::native::split_block(key) {
        let b = block(i);
        let att = format!("{b}/MultiHeadDotProductAttention_1");
        let (module, tensor) = rest.rsplit_once('.')?;
        return match (module, tensor) {
            ("norm1", "weight") => same(format!("{b}/LayerNorm_0/scale")),
            ("norm1", "bias") => same(format!("{b}/LayerNorm_0/bias")),
            ("norm2", "weight") => same(format!("{b}/LayerNorm_2/scale")),
            ("norm2", "bias") => same(format!("{b}/LayerNorm_2/bias")),
            ("attn.query" | "attn.key" | "attn.value", t) => {
                let qkv = module.trim_start_matches("attn.");
                let file = if t == "weight" {
                    vec![shape[0], h, hd]
                } else {
                    vec![h, hd]
                };
                heads(
                    format!("{att}/{qkv}/{}", if t == "weight" { "kernel" } else { "bias" }),
                    file,
                )
            }
            ("attn.out", "weight") => heads(format!("{att}/out/kernel"), vec![h, hd, shape[1]]),
            ("attn.out", "bias") => same(format!("{att}/out/bias")),
            ("mlp.fc1", t) => same(format!("{b}/MlpBlock_3/Dense_0/{}", kernel_or_bias(t))),
            ("mlp.fc2", t) => same(format!("{b}/MlpBlock_3/Dense_1/{}", kernel_or_bias(t))),
            _ => None,
        };
    }
    match key {
        "patch_embed.weight" => Some(Source::new(
            "embedding/kernel",
            vec![cfg.patch_size, cfg.patch_size, cfg.in_channels, cfg.hidden],
            Transform::PatchHwio,
        )),
        "patch_embed.bias" => same("embedding/bias".into()),
        "cls_token" => same("cls".into()),
        "pos_embed" => same(POS_EMBED.into()),
        "norm.weight" => same("Transformer/encoder_norm/scale".into()),
        "norm.bias" => same("Transformer/encoder_norm/bias".into()),
        _ => None,
    }
}

/// Flax names a Dense layer's weight `kernel`.
fn kernel_or_bias(tensor: &str) -> &'static str {
    if tensor == "weight" {
        "kernel"
    } else {
        "bias"
    }
}

/// Reads the architecture off the shapes (image size = grid × patch).
pub fn infer(map: &TensorMap) -> Result<VitConfig, LoadError> {
    let need = |key: &str| {
        map.shape(key)
            .map(<[usize]>::to_vec)
            .ok_or_else(|| LoadError::Infer {
                path: map.source.clone(),
                message: format!("key `{key}` is missing"),
            })
    };
    let bad = |key: &str, shape: &[usize]| LoadError::Infer {
        path: map.source.clone(),
        message: format!("key `{key}` has unexpected shape {shape:?}"),
    };
    let emb = need("embedding/kernel")?;
    let [p, p2, c, d] = emb[..] else {
        return Err(bad("embedding/kernel", &emb));
    };
    if p != p2 {
        return Err(bad("embedding/kernel", &emb));
    }
    let depth = (0..)
        .take_while(|i| {
            map.tensors
                .contains_key(&format!("{}/LayerNorm_0/scale", block(*i)))
        })
        .count();
    if depth == 0 {
        return Err(LoadError::Infer {
            path: map.source.clone(),
            message: "no `Transformer/encoderblock_0/...` keys".into(),
        });
    }
    let qkey = format!("{}/MultiHeadDotProductAttention_1/query/kernel", block(0));
    let q = need(&qkey)?;
    let [_, heads, _] = q[..] else {
        return Err(bad(&qkey, &q));
    };
    let mkey = format!("{}/MlpBlock_3/Dense_0/kernel", block(0));
    let mlp = need(&mkey)?;
    let [_, m] = mlp[..] else {
        return Err(bad(&mkey, &mlp));
    };
    let grid = super::file_grid(map, super::Layout::Google)?;
    let mut cfg = VitConfig::new(d, depth, heads, m, p).with_image_size(grid * p);
    cfg.in_channels = c;
    Ok(cfg)
}
