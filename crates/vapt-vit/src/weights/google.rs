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

/// Every key (and shape) `cfg` needs from a Google npz.
pub fn expected_params(cfg: &VitConfig) -> Vec<(String, Vec<usize>)> {
    let (d, h, hd, m, p, c) = (
        cfg.hidden,
        cfg.heads,
        cfg.head_dim(),
        cfg.mlp_dim,
        cfg.patch_size,
        cfg.in_channels,
    );
    let mut v = vec![
        ("embedding/kernel".to_string(), vec![p, p, c, d]),
        ("embedding/bias".to_string(), vec![d]),
        ("cls".to_string(), vec![1, 1, d]),
        (POS_EMBED.to_string(), vec![1, 1 + cfg.num_patches(), d]),
        ("Transformer/encoder_norm/scale".to_string(), vec![d]),
        ("Transformer/encoder_norm/bias".to_string(), vec![d]),
    ];
    for i in 0..cfg.depth {
        let b = block(i);
        let att = format!("{b}/MultiHeadDotProductAttention_1");
        for ln in ["LayerNorm_0", "LayerNorm_2"] {
            v.push((format!("{b}/{ln}/scale"), vec![d]));
            v.push((format!("{b}/{ln}/bias"), vec![d]));
        }
        for qkv in ["query", "key", "value"] {
            v.push((format!("{att}/{qkv}/kernel"), vec![d, h, hd]));
            v.push((format!("{att}/{qkv}/bias"), vec![h, hd]));
        }
        v.push((format!("{att}/out/kernel"), vec![h, hd, d]));
        v.push((format!("{att}/out/bias"), vec![d]));
        v.push((format!("{b}/MlpBlock_3/Dense_0/kernel"), vec![d, m]));
        v.push((format!("{b}/MlpBlock_3/Dense_0/bias"), vec![m]));
        v.push((format!("{b}/MlpBlock_3/Dense_1/kernel"), vec![m, d]));
        v.push((format!("{b}/MlpBlock_3/Dense_1/bias"), vec![d]));
    }
    v
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

/// Validates every key against `cfg` and converts to the native layout.
pub fn to_native(mut map: TensorMap, cfg: &VitConfig) -> Result<TensorMap, LoadError> {
    map.check(
        &expected_params(cfg),
        ignored,
        super::Layout::Google.name(),
        &cfg.display_name(),
    )?;
    let d = cfg.hidden;
    let mut out = TensorMap::new(map.source.clone());
    out.metadata = std::mem::take(&mut map.metadata);
    let kernel = map.take("embedding/kernel")?;
    // HWIO (ky, kx, c, d) -> (c, ky, kx, d) -> [c·p·p, d]
    let kernel = kernel.permuted(&[2, 0, 1, 3]).reshaped(vec![cfg.patch_dim(), d]);
    out.insert("patch_embed.weight", kernel);
    out.insert("patch_embed.bias", map.take("embedding/bias")?);
    out.insert("cls_token", map.take("cls")?);
    out.insert("pos_embed", map.take(POS_EMBED)?);
    out.insert("norm.weight", map.take("Transformer/encoder_norm/scale")?);
    out.insert("norm.bias", map.take("Transformer/encoder_norm/bias")?);
    for i in 0..cfg.depth {
        let b = block(i);
        let att = format!("{b}/MultiHeadDotProductAttention_1");
        let n = format!("blocks.{i}");
        out.insert(
            format!("{n}.norm1.weight"),
            map.take(&format!("{b}/LayerNorm_0/scale"))?,
        );
        out.insert(
            format!("{n}.norm1.bias"),
            map.take(&format!("{b}/LayerNorm_0/bias"))?,
        );
        out.insert(
            format!("{n}.norm2.weight"),
            map.take(&format!("{b}/LayerNorm_2/scale"))?,
        );
        out.insert(
            format!("{n}.norm2.bias"),
            map.take(&format!("{b}/LayerNorm_2/bias"))?,
        );
        for qkv in ["query", "key", "value"] {
            let w = map.take(&format!("{att}/{qkv}/kernel"))?.reshaped(vec![d, d]);
            let bias = map.take(&format!("{att}/{qkv}/bias"))?.reshaped(vec![d]);
            out.insert(format!("{n}.attn.{qkv}.weight"), w);
            out.insert(format!("{n}.attn.{qkv}.bias"), bias);
        }
        let w = map.take(&format!("{att}/out/kernel"))?.reshaped(vec![d, d]);
        out.insert(format!("{n}.attn.out.weight"), w);
        out.insert(
            format!("{n}.attn.out.bias"),
            map.take(&format!("{att}/out/bias"))?,
        );
        for (src, dst) in [("Dense_0", "fc1"), ("Dense_1", "fc2")] {
            let mb = format!("{b}/MlpBlock_3/{src}");
            out.insert(
                format!("{n}.mlp.{dst}.weight"),
                map.take(&format!("{mb}/kernel"))?,
            );
            out.insert(format!("{n}.mlp.{dst}.bias"), map.take(&format!("{mb}/bias"))?);
        }
    }
    Ok(out)
}
