//! Backbone tests against the parity fixtures (`tests/fixtures/parity/*/backbone.npz`).
//!
//! The reference values checked here are computed independently in the test (index arithmetic on
//! the npz arrays) or come from the authors' code (the fixtures' `io.safetensors`).

use std::collections::BTreeMap;

use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use vapt_tests::{fixture, read_safetensors, tolerance_fraction, FixtureTensor};
use vapt_vit::weights::{self, npz, Layout};
use vapt_vit::{load_pretrained, LoadError, LoadOptions, RawTensor, TensorMap, Vit, VitConfig};

type B = Flex;

fn device() -> burn::tensor::Device<B> {
    Default::default()
}

fn load(name: &str) -> Vit<B> {
    let path = fixture(name).join("backbone.npz");
    load_pretrained::<B>(&path, &LoadOptions::default(), &device())
        .unwrap_or_else(|e| panic!("{e}"))
        .0
}

fn raw_npz(name: &str) -> TensorMap {
    weights::read_any(&fixture(name).join("backbone.npz")).unwrap().0
}

fn values<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec::<f32>().unwrap()
}

fn tensor<const D: usize>(t: &FixtureTensor) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(t.f32(), t.shape.clone()), &device())
}

#[test]
fn infers_the_fixture_architecture_from_the_npz() {
    let map = raw_npz("c_vapt_default");
    assert_eq!(Layout::detect(&map).unwrap(), Layout::Google);
    let arch = weights::infer_arch(&map, Layout::Google).unwrap();
    assert_eq!(
        (arch.hidden, arch.depth, arch.heads, arch.mlp_dim, arch.patch_size),
        (48, 4, 4, 96, 16)
    );
    assert_eq!((arch.image_size, arch.grid()), (224, 14));
    let model = load("c_vapt_default");
    assert_eq!(model.blocks.len(), 4);
    assert_eq!(model.config.heads, 4);
}

#[test]
fn loaded_tensors_equal_the_file() {
    let map = raw_npz("c_vapt_default");
    let model = load("c_vapt_default");
    let get = |k: &str| map.tensors[k].clone();
    let (d, h, hd, p) = (48, 4, 12, 16);

    assert_eq!(values(model.cls_token.val()), get("cls").data);
    assert_eq!(
        values(model.pos_embed.val()),
        get(weights::google::POS_EMBED).data
    );
    assert_eq!(
        values(model.norm.as_ref().expect("CLS pooling").weight.val()),
        get("Transformer/encoder_norm/scale").data
    );
    // Patch kernel: native row c·p² + ky·p + kx, column d  <-  HWIO kernel[ky, kx, c, d].
    let kernel = get("embedding/kernel");
    let w = values(model.patch_embed.weight.val());
    for (c, ky, kx, dd) in [(0, 0, 0, 0), (2, 15, 3, 47), (1, 7, 9, 20)] {
        let native = w[(c * p * p + ky * p + kx) * d + dd];
        let file = kernel.data[((ky * p + kx) * 3 + c) * d + dd];
        assert_eq!(native, file, "patch kernel at c={c} ky={ky} kx={kx} d={dd}");
    }
    for (i, block) in model.blocks.iter().enumerate() {
        let att = format!("Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1");
        // q/k/v: native [in, h·hd + j]  <-  kernel[in, h, j].
        for (name, lin) in [
            ("query", &block.attn.query),
            ("key", &block.attn.key),
            ("value", &block.attn.value),
        ] {
            let k = get(&format!("{att}/{name}/kernel"));
            let w = values(lin.weight.val());
            for (inp, hh, j) in [(0, 0, 0), (5, 3, 11), (47, 2, 7)] {
                assert_eq!(w[inp * d + hh * hd + j], k.data[(inp * h + hh) * hd + j]);
            }
            let b = values(lin.bias.as_ref().unwrap().val());
            assert_eq!(b, get(&format!("{att}/{name}/bias")).data);
        }
        // out: native [h·hd + j, out]  <-  kernel[h, j, out].
        let k = get(&format!("{att}/out/kernel"));
        let w = values(block.attn.out.weight.val());
        assert_eq!(w[(2 * hd + 5) * d + 30], k.data[((2 * hd) + 5) * d + 30]);
        assert_eq!(w, k.data);
        let fc1 = get(&format!("Transformer/encoderblock_{i}/MlpBlock_3/Dense_0/kernel"));
        assert_eq!(values(block.mlp.fc1.weight.val()), fc1.data);
        let ln = get(&format!("Transformer/encoderblock_{i}/LayerNorm_2/bias"));
        assert_eq!(values(block.norm2.bias.val()), ln.data);
    }
}

#[test]
fn patch_embedding_transpose_with_a_one_hot_patch() {
    let model = load("c_vapt_default");
    let map = raw_npz("c_vapt_default");
    let kernel = &map.tensors["embedding/kernel"];
    let bias = &map.tensors["embedding/bias"];
    let (d, p, g) = (48, 16, 14);
    let (c, r, q, ky, kx) = (1, 3, 5, 2, 7);
    let mut img = vec![0.0f32; 3 * 224 * 224];
    img[(c * 224 + r * p + ky) * 224 + q * p + kx] = 1.0;
    let img = Tensor::<B, 4>::from_data(TensorData::new(img, [1, 3, 224, 224]), &device());
    let out = values(model.patch_embed.forward(img));
    let hit = r * g + q;
    for n in [0, hit, hit + 1, g * g - 1] {
        for dd in 0..d {
            let expect = bias.data[dd]
                + if n == hit {
                    kernel.data[((ky * p + kx) * 3 + c) * d + dd]
                } else {
                    0.0
                };
            let got = out[n * d + dd];
            assert!(
                (got - expect).abs() < 1e-7,
                "patch {n} channel {dd}: {got} vs {expect}"
            );
        }
    }
}

/// LayerNorm with biased variance, as the reference defines it.
fn layer_norm(x: &[f64], scale: &[f32], bias: &[f32], eps: f64) -> Vec<f64> {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    x.iter()
        .zip(scale.iter().zip(bias))
        .map(|(v, (s, b))| (v - mean) / (var + eps).sqrt() * *s as f64 + *b as f64)
        .collect()
}

/// Attention probabilities of block 0 computed by hand from the npz arrays (f64), for every head:
/// proves the (D, heads, head_dim) reshape and the head-major split.
#[test]
fn qkv_head_ordering_matches_a_hand_computed_attention() {
    let model = load("c_vapt_default");
    let map = raw_npz("c_vapt_default");
    let io = read_safetensors(&fixture("c_vapt_default").join("io.safetensors"));
    let tokens = model.embed(tensor::<4>(&io["input"]));
    let x = values(tokens.clone());
    let (_, probs) = model.blocks[0].forward_with_attention(tokens);
    let probs = values(probs);
    let (t, d, h, hd) = (197, 48, 4, 12);
    let b0 = "Transformer/encoderblock_0";
    let att = format!("{b0}/MultiHeadDotProductAttention_1");
    let ln_s = &map.tensors[&format!("{b0}/LayerNorm_0/scale")].data;
    let ln_b = &map.tensors[&format!("{b0}/LayerNorm_0/bias")].data;
    let u: Vec<Vec<f64>> = (0..t)
        .map(|i| {
            let row: Vec<f64> = x[i * d..(i + 1) * d].iter().map(|&v| v as f64).collect();
            layer_norm(&row, ln_s, ln_b, 1e-6)
        })
        .collect();
    let proj = |name: &str, head: usize, tok: usize| -> Vec<f64> {
        let k = &map.tensors[&format!("{att}/{name}/kernel")].data;
        let b = &map.tensors[&format!("{att}/{name}/bias")].data;
        (0..hd)
            .map(|j| {
                b[head * hd + j] as f64
                    + (0..d)
                        .map(|i| u[tok][i] * k[(i * h + head) * hd + j] as f64)
                        .sum::<f64>()
            })
            .collect()
    };
    for head in 0..h {
        let keys: Vec<Vec<f64>> = (0..t).map(|tok| proj("key", head, tok)).collect();
        for row in [0usize, 1, 100, 196] {
            let qv = proj("query", head, row);
            let scores: Vec<f64> = keys
                .iter()
                .map(|kv| qv.iter().zip(kv).map(|(a, b)| a * b).sum::<f64>() / (hd as f64).sqrt())
                .collect();
            let max = scores.iter().cloned().fold(f64::MIN, f64::max);
            let z: f64 = scores.iter().map(|s| (s - max).exp()).sum();
            for col in 0..t {
                let expect = (scores[col] - max).exp() / z;
                let got = probs[((head * t) + row) * t + col] as f64;
                assert!(
                    (got - expect).abs() < 2e-6,
                    "head {head} row {row} col {col}: {got} vs {expect}"
                );
            }
        }
    }
}

/// Tolerances from the fixture's `config.json` (`suggested_tolerance.by_prefix`).
fn tolerance(cfg: &serde_json::Value, name: &str) -> (f64, f64) {
    let rules = cfg["suggested_tolerance"]["by_prefix"].as_array().unwrap();
    let rule = rules
        .iter()
        .find(|r| name.starts_with(r["prefix"].as_str().unwrap()))
        .unwrap_or_else(|| panic!("no tolerance for {name}"));
    (rule["atol"].as_f64().unwrap(), rule["rtol"].as_f64().unwrap())
}

/// Runs VPT (shallow or deep) with only the backbone API — insert prompts after CLS, optionally
/// overwrite them before every block — and compares every stored output with the authors' code.
fn vpt_forward_matches(name: &str, deep: bool) -> f64 {
    let dir = fixture(name);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let model = load(name);
    let params = read_safetensors(&dir.join("params.safetensors"));
    let io = read_safetensors(&dir.join("io.safetensors"));
    let np = cfg["num_prompts"].as_u64().unwrap() as usize;
    let (b, d, n) = (2, 48, 196);
    let mut got: BTreeMap<String, Vec<f32>> = BTreeMap::new();

    let x = model.embed(tensor::<4>(&io["input"]));
    let prompt = tensor::<2>(&params["prompt.static"])
        .unsqueeze::<3>()
        .expand([b, np, d]);
    let mut x = Tensor::cat(vec![x.clone().narrow(1, 0, 1), prompt, x.narrow(1, 1, n)], 1);
    let rows: Vec<usize> = io["out.attn_rows"].values.iter().map(|&v| v as usize).collect();
    for (i, block) in model.blocks.iter().enumerate() {
        if deep && i > 0 {
            let deep_p = tensor::<3>(&params["prompt.deep_static"])
                .narrow(0, i - 1, 1)
                .expand([b, np, d]);
            x = Tensor::cat(vec![x.clone().narrow(1, 0, 1), deep_p, x.narrow(1, 1 + np, n)], 1);
        }
        got.insert(format!("out.prompts.{i}"), values(x.clone().narrow(1, 1, np)));
        got.insert(format!("out.block_in_cls.{i}"), values(x.clone().narrow(1, 0, 1)));
        got.insert(
            format!("out.block_in_patch_mean.{i}"),
            values(x.clone().narrow(1, 1 + np, n).mean_dim(1)),
        );
        let (y, probs) = block.forward_with_attention(x);
        if io.contains_key(&format!("out.attn.{i}")) {
            let t = 1 + np + n;
            let sel: Vec<Tensor<B, 4>> = rows.iter().map(|&r| probs.clone().narrow(2, r, 1)).collect();
            got.insert(format!("out.attn.{i}"), values(Tensor::cat(sel, 2)));
            let colsum = probs.sum_dim(2).reshape([b, 4, t]);
            got.insert(format!("out.attn_colsum.{i}"), values(colsum));
        }
        x = y;
    }
    let feat = model.forward_features(x);
    got.insert("out.cls_feature".into(), values(feat.clone()));
    let w = tensor::<2>(&params["head.weight"]); // (C, D)
    let logits = feat.matmul(w.transpose()) + tensor::<1>(&params["head.bias"]).unsqueeze::<2>();
    let lv = values(logits.clone());
    got.insert("out.logits".into(), lv.clone());
    let labels = &io["labels"].values;
    let c = lv.len() / b;
    let loss: f64 = (0..b)
        .map(|i| {
            let row = &lv[i * c..(i + 1) * c];
            let m = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
            let lse = m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
            lse - row[labels[i] as usize] as f64
        })
        .sum::<f64>()
        / b as f64;
    got.insert("out.loss".into(), vec![loss as f32]);

    let mut worst: f64 = 0.0;
    let mut checked = 0;
    for (key, expected) in io
        .iter()
        .filter(|(k, _)| k.starts_with("out.") && *k != "out.attn_rows")
    {
        let ours = got
            .get(key)
            .unwrap_or_else(|| panic!("{name}: test computed no {key}"));
        let (atol, rtol) = tolerance(&cfg, key);
        let frac = tolerance_fraction(ours, &expected.values, atol, rtol);
        assert!(frac <= 1.0, "{name}: {key} uses {frac:.3} of its tolerance");
        worst = worst.max(frac);
        checked += 1;
    }
    assert_eq!(
        checked, 19,
        "{name}: every stored output (4 blocks × 3, 2 × 2 attention, 3 final) is compared"
    );
    worst
}

#[test]
fn vpt_shallow_forward_through_the_block_api_matches_the_authors_code() {
    let worst = vpt_forward_matches("a_vpt_shallow", false);
    eprintln!("a_vpt_shallow worst tolerance fraction {worst:.3}");
}

#[test]
fn vpt_deep_forward_through_the_block_api_matches_the_authors_code() {
    let worst = vpt_forward_matches("b_vpt_deep", true);
    eprintln!("b_vpt_deep worst tolerance fraction {worst:.3}");
}

fn fixture_logits(model: &Vit<B>) -> Vec<f32> {
    let io = read_safetensors(&fixture("c_vapt_default").join("io.safetensors"));
    values(model.forward(tensor::<4>(&io["input"])))
}

#[test]
fn native_safetensors_round_trip_gives_identical_outputs() {
    let model = load("c_vapt_default");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("backbone.safetensors");
    model.save_safetensors(&path, None).unwrap();
    let (again, pre) = load_pretrained::<B>(&path, &LoadOptions::default(), &device()).unwrap();
    assert_eq!(pre.source, Layout::Native.name());
    assert_eq!(again.config, model.config);
    assert_eq!(fixture_logits(&again), fixture_logits(&model));
}

/// Builds a timm-layout map (fused qkv, PyTorch `(out, in)` matrices, OIHW patch conv) from the
/// npz arrays directly, writes it with the safetensors crate and loads it.
#[test]
fn timm_fused_qkv_safetensors_gives_the_npz_outputs() {
    let npz_map = raw_npz("c_vapt_default");
    let g = |k: &str| npz_map.tensors[k].clone();
    let (d, h, hd, p, m) = (48, 4, 12, 16, 96);
    let mut timm = TensorMap::new("timm.safetensors");
    // OIHW[o, c, ky, kx] = HWIO[ky, kx, c, o]
    timm.insert(
        "patch_embed.proj.weight",
        g("embedding/kernel").permuted(&[3, 2, 0, 1]),
    );
    timm.insert("patch_embed.proj.bias", g("embedding/bias"));
    timm.insert("cls_token", g("cls"));
    timm.insert("pos_embed", g(weights::google::POS_EMBED));
    timm.insert("norm.weight", g("Transformer/encoder_norm/scale"));
    timm.insert("norm.bias", g("Transformer/encoder_norm/bias"));
    timm.insert("head.weight", RawTensor::new(vec![3, d], vec![0.5; 3 * d])); // ignored
    for i in 0..4 {
        let b = format!("Transformer/encoderblock_{i}");
        let att = format!("{b}/MultiHeadDotProductAttention_1");
        let t = format!("blocks.{i}");
        timm.insert(format!("{t}.norm1.weight"), g(&format!("{b}/LayerNorm_0/scale")));
        timm.insert(format!("{t}.norm1.bias"), g(&format!("{b}/LayerNorm_0/bias")));
        timm.insert(format!("{t}.norm2.weight"), g(&format!("{b}/LayerNorm_2/scale")));
        timm.insert(format!("{t}.norm2.bias"), g(&format!("{b}/LayerNorm_2/bias")));
        let mut qkv_w = Vec::new();
        let mut qkv_b = Vec::new();
        for name in ["query", "key", "value"] {
            let k = g(&format!("{att}/{name}/kernel")); // (in, h, hd)
            for out in 0..d {
                for inp in 0..d {
                    qkv_w.push(k.data[inp * h * hd + out]);
                }
            }
            qkv_b.extend(g(&format!("{att}/{name}/bias")).data);
        }
        timm.insert(
            format!("{t}.attn.qkv.weight"),
            RawTensor::new(vec![3 * d, d], qkv_w),
        );
        timm.insert(format!("{t}.attn.qkv.bias"), RawTensor::new(vec![3 * d], qkv_b));
        let o = g(&format!("{att}/out/kernel")).reshaped(vec![d, d]);
        timm.insert(format!("{t}.attn.proj.weight"), o.transposed_2d());
        timm.insert(format!("{t}.attn.proj.bias"), g(&format!("{att}/out/bias")));
        let f1 = g(&format!("{b}/MlpBlock_3/Dense_0/kernel"));
        let f2 = g(&format!("{b}/MlpBlock_3/Dense_1/kernel"));
        assert_eq!((f1.shape.clone(), f2.shape.clone()), (vec![d, m], vec![m, d]));
        timm.insert(format!("{t}.mlp.fc1.weight"), f1.transposed_2d());
        timm.insert(
            format!("{t}.mlp.fc1.bias"),
            g(&format!("{b}/MlpBlock_3/Dense_0/bias")),
        );
        timm.insert(format!("{t}.mlp.fc2.weight"), f2.transposed_2d());
        timm.insert(
            format!("{t}.mlp.fc2.bias"),
            g(&format!("{b}/MlpBlock_3/Dense_1/bias")),
        );
    }
    let _ = p;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    weights::write_safetensors(&path, &timm).unwrap();
    let (map, _) = weights::read_any(&path).unwrap();
    assert_eq!(Layout::detect(&map).unwrap(), Layout::Timm);
    // timm does not store the head count; give the architecture explicitly.
    let arch = VitConfig::from_variant("D48-L4-H4-M96-P16").unwrap();
    let opts = LoadOptions {
        arch: Some(arch),
        ..Default::default()
    };
    let (from_timm, pre) = load_pretrained::<B>(&path, &opts, &device()).unwrap();
    assert_eq!(pre.source, Layout::Timm.name());
    let a = fixture_logits(&from_timm);
    let b = fixture_logits(&load("c_vapt_default"));
    assert_eq!(a, b, "timm and npz loads must give the same logits");
}

#[test]
fn one_error_lists_missing_unexpected_and_wrong_shape_keys_and_names_the_file() {
    let mut map = raw_npz("c_vapt_default");
    map.tensors.remove("Transformer/encoderblock_2/LayerNorm_2/scale");
    map.insert(
        "Transformer/encoderblock_2/extra_thing",
        RawTensor::new(vec![3], vec![1.0; 3]),
    );
    map.insert(
        "Transformer/encoder_norm/bias",
        RawTensor::new(vec![47], vec![0.0; 47]),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken_vit.npz");
    npz::write_npz(&path, &map).unwrap();
    let err = load_pretrained::<B>(&path, &LoadOptions::default(), &device()).unwrap_err();
    match &err {
        LoadError::Mismatch(m) => {
            assert_eq!(m.missing.len(), 1);
            assert_eq!(m.unexpected.len(), 1);
            assert_eq!(m.wrong_shape.len(), 1);
        }
        other => panic!("expected a mismatch error, got {other}"),
    }
    let msg = err.to_string();
    for needle in [
        "broken_vit.npz",
        "missing:     Transformer/encoderblock_2/LayerNorm_2/scale",
        "unexpected:  Transformer/encoderblock_2/extra_thing",
        "wrong shape: Transformer/encoder_norm/bias is [47], expected [48]",
        "1 missing, 1 unexpected, 1 with a wrong shape",
    ] {
        assert!(msg.contains(needle), "message lacks `{needle}`:\n{msg}");
    }
}

#[test]
fn requested_architecture_that_contradicts_the_file_is_an_error() {
    let path = fixture("c_vapt_default").join("backbone.npz");
    let opts = LoadOptions {
        arch: Some(VitConfig::vit_b16()),
        ..Default::default()
    };
    let err = load_pretrained::<B>(&path, &opts, &device()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("backbone.npz") && msg.contains("ViT-B/16"), "{msg}");
}

#[test]
fn position_embedding_is_resampled_for_another_image_size() {
    let path = fixture("c_vapt_default").join("backbone.npz");
    let opts = LoadOptions {
        image_size: Some(160),
        ..Default::default()
    };
    let (model, pre) = load_pretrained::<B>(&path, &opts, &device()).unwrap();
    assert_eq!(pre.input_size, 160);
    assert_eq!(model.pos_embed.dims(), [1, 101, 48]);
    // CLS row kept; grid corners kept (corner-aligned zoom).
    let map = raw_npz("c_vapt_default");
    let old = &map.tensors[weights::google::POS_EMBED].data;
    let new = values(model.pos_embed.val());
    assert_eq!(&new[..48], &old[..48]);
    let last_old = &old[(1 + 195) * 48..];
    let last_new = &new[(1 + 99) * 48..];
    for (a, b) in last_new.iter().zip(last_old) {
        assert!((a - b).abs() < 1e-6);
    }
    let img = Tensor::<B, 4>::zeros([1, 3, 160, 160], &device());
    assert_eq!(model.forward(img).dims(), [1, 48]);
}

#[test]
fn unreadable_files_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.npz");
    std::fs::write(&path, b"PK\x03\x04 definitely not a zip").unwrap();
    let msg = load_pretrained::<B>(&path, &LoadOptions::default(), &device())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("garbage.npz"), "{msg}");
    // Malformed shapes are errors too, never panics.
    let odd = dir.path().join("odd.safetensors");
    let mut map = TensorMap::new(&odd);
    map.insert("patch_embed.weight", RawTensor::new(vec![3], vec![0.0; 3]));
    map.insert("cls_token", RawTensor::new(vec![5], vec![0.0; 5]));
    weights::write_safetensors(&odd, &map).unwrap();
    let msg = load_pretrained::<B>(&odd, &LoadOptions::default(), &device())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("odd.safetensors") && msg.contains("`cls_token` has shape [5]"),
        "{msg}"
    );
    let missing = dir.path().join("absent.npz");
    let msg = load_pretrained::<B>(&missing, &LoadOptions::default(), &device())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("absent.npz"), "{msg}");
}

/// ViT-L/16 and ViT-H/14 are read off Google npz and timm files (shapes only, no model built),
/// and their sizes are the published ones (timm: 304,326,632 and 632,045,800 parameters with a
/// 1000-class head of 1,025,000 and 1,281,000).
#[test]
fn large_and_huge_are_inferred_from_npz_and_timm_files() {
    let zeros = |shape: Vec<usize>| RawTensor::new(shape.clone(), vec![0.0; shape.iter().product()]);
    for (variant, params) in [("L/16", 303_301_632usize), ("H/14", 630_764_800)] {
        let want = VitConfig::from_variant(variant).unwrap();
        assert_eq!(want.num_backbone_params(), params, "{variant}");
        let (d, p, n) = (want.hidden, want.patch_size, 1 + want.num_patches());
        let mut timm = TensorMap::new(format!("{variant}.safetensors"));
        timm.insert("patch_embed.proj.weight", zeros(vec![d, 3, p, p]));
        timm.insert("pos_embed", zeros(vec![1, n, d]));
        timm.insert("blocks.0.mlp.fc1.weight", zeros(vec![want.mlp_dim, d]));
        for i in 0..want.depth {
            timm.insert(format!("blocks.{i}.norm1.weight"), zeros(vec![d]));
        }
        let mut google = TensorMap::new(format!("{variant}.npz"));
        google.insert("embedding/kernel", zeros(vec![p, p, 3, d]));
        google.insert(weights::google::POS_EMBED, zeros(vec![1, n, d]));
        let b0 = "Transformer/encoderblock_0";
        google.insert(
            format!("{b0}/MultiHeadDotProductAttention_1/query/kernel"),
            zeros(vec![d, want.heads, d / want.heads]),
        );
        google.insert(
            format!("{b0}/MlpBlock_3/Dense_0/kernel"),
            zeros(vec![d, want.mlp_dim]),
        );
        for i in 0..want.depth {
            google.insert(
                format!("Transformer/encoderblock_{i}/LayerNorm_0/scale"),
                zeros(vec![d]),
            );
        }
        for (map, layout) in [(&timm, Layout::Timm), (&google, Layout::Google)] {
            let got = weights::infer_arch(map, layout).unwrap();
            assert_eq!(got, want, "{variant} from {}", map.source.display());
            assert_eq!(got.display_name(), format!("ViT-{variant} @224"));
        }
    }
}
