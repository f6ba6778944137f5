//! The paper's comparison rows (partial-k, MLP-k, bias, VPT-deep + bias, adapter, LoRA): each
//! trains exactly its tensors — they get gradients, everything else gets none and is bit-identical
//! after an optimiser step — saves a trainable-only artifact that loads back to the same logits,
//! and (LoRA) folds into a plain backbone that gives the same logits.

use std::collections::BTreeMap;

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::optim::{GradientsParams, Optimizer, SgdConfig};
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use vapt_experts::names::external_name;
use vapt_experts::{
    expert_gradients, load_artifact, save_artifact, AdapterInit, Method, PromptConfig, PromptedVit,
};
use vapt_train::cross_entropy;
use vapt_vit::{named, Projection, RawTensor, TensorMap, VitConfig};

type A = Autodiff<Flex>;

fn vit() -> VitConfig {
    VitConfig::new(32, 3, 2, 64, 4).with_image_size(16)
}

/// A deterministic backbone (every tensor from a fixed formula), so that tests do not depend on
/// Burn's process-global generator.
fn backbone<B: burn::tensor::backend::Backend>() -> vapt_vit::Vit<B> {
    let cfg = vit();
    let model = cfg.init::<B>(&Default::default());
    let mut map = TensorMap::new("formula");
    for (i, (name, shape)) in named::shapes(&model).into_iter().enumerate() {
        let n: usize = shape.iter().product();
        let data = (0..n)
            .map(|j| ((((j * 31 + i * 17) % 97) as f32) - 48.0) / 400.0)
            .collect();
        map.insert(name, RawTensor::new(shape, data));
    }
    named::write(model, &map, |p| Some(p.to_string())).unwrap().0
}

fn cfg(method: &str) -> PromptConfig {
    let mut c = PromptConfig::new(Method::Linear, 3, 5).without_dropout();
    c.set_method(method.parse().unwrap());
    c
}

fn batch() -> (Tensor<A, 4>, Tensor<A, 1, Int>) {
    let dev = Default::default();
    let pixels: Vec<f32> = (0..4 * 3 * 16 * 16)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
        .collect();
    (
        Tensor::from_data(TensorData::new(pixels, [4, 3, 16, 16]), &dev),
        Tensor::from_data(TensorData::new(vec![0i64, 3, 1, 4], [4]), &dev),
    )
}

/// Every parameter's values by external name.
fn values(model: &PromptedVit<A>) -> BTreeMap<String, Vec<f32>> {
    named::read(model, |p| Some(external_name(p)))
        .tensors
        .into_iter()
        .map(|(k, t)| (k, t.data))
        .collect()
}

fn nonzero(t: &RawTensor) -> bool {
    t.data.iter().any(|v| *v != 0.0)
}

/// Attention's key bias adds the same q·b to every score of a query, which the softmax ignores:
/// its gradient is zero in exact arithmetic and rounding noise in practice (zero or not,
/// depending on the ops and the head's random init). Such tensors train but are checked for a
/// negligible gradient instead of a nonzero one.
fn shift_invariant(name: &str) -> bool {
    name.ends_with("attn.key.bias")
}

/// One SGD step of `c`; asserts which tensors train and which got a gradient, returns the trained
/// model.
fn step_and_check(c: &PromptConfig, zero_grad: &[&str]) -> PromptedVit<A> {
    let model = PromptedVit::new(backbone::<A>(), c.clone(), &Default::default()).unwrap();
    let table: Vec<String> = c.expert_shapes(&vit()).into_iter().map(|(n, _)| n).collect();
    let mut trainable: Vec<String> = named::trainable_paths(&model)
        .iter()
        .map(|p| external_name(p))
        .collect();
    trainable.sort();
    let mut expected = table.clone();
    expected.sort();
    assert_eq!(trainable, expected, "{}: trainable tensors", c.label());

    let before = values(&model);
    let (x, y) = batch();
    let grads = cross_entropy(model.forward(x), y).backward();
    let g = expert_gradients(&model, &grads);
    for name in &table {
        if shift_invariant(name) {
            let most = g.tensors[name].data.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(
                most < 1e-4,
                "{}: {name} gradient {most} (zero up to rounding)",
                c.label()
            );
            continue;
        }
        let got = nonzero(&g.tensors[name]);
        let want = !zero_grad.iter().any(|z| name.contains(z));
        assert_eq!(got, want, "{}: gradient of {name}", c.label());
    }
    let gp = GradientsParams::from_grads(grads, &model);
    let model = SgdConfig::new().init::<A, PromptedVit<A>>().step(0.5, model, gp);
    let after = values(&model);
    for (name, v) in &before {
        if shift_invariant(name) {
            continue;
        }
        let moved = after[name] != *v;
        // BatchNorm's running statistics move in the forward pass, by design.
        let trains = (table.contains(name) && !zero_grad.iter().any(|z| name.contains(z)))
            || name.contains(".running_");
        assert_eq!(moved, trains, "{}: {name} moved = {moved}", c.label());
    }
    model
}

#[test]
fn partial_k_trains_the_last_blocks_and_the_final_norm() {
    let c = cfg("partial-2");
    assert_eq!(c.partial_blocks, 2);
    let names: Vec<String> = c.expert_shapes(&vit()).into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"backbone.blocks.1.attn.query.weight".to_string()));
    assert!(names.contains(&"backbone.norm.bias".to_string()));
    assert!(
        !names.iter().any(|n| n.starts_with("backbone.blocks.0.")),
        "{names:?}"
    );
    step_and_check(&c, &[]);
}

#[test]
fn bias_tuning_trains_every_backbone_bias_and_nothing_else() {
    let c = cfg("bias");
    let names: Vec<String> = c.expert_shapes(&vit()).into_iter().map(|(n, _)| n).collect();
    // Patch embedding, final norm, and per block: norm1, q, k, v, out, norm2, fc1, fc2.
    assert_eq!(
        names.iter().filter(|n| n.starts_with("backbone.")).count(),
        2 + 3 * 8
    );
    step_and_check(&c, &[]);
    // With VPT-deep prompts: the same biases plus the prompts.
    step_and_check(&cfg("vpt-deep+bias"), &[]);
}

#[test]
fn mlp_k_trains_its_hidden_layers_and_keeps_running_statistics() {
    let c = cfg("mlp-3");
    let trained = step_and_check(&c, &[]);
    // The training step updated BatchNorm's running statistics (momentum 0.1 from 0 / 1).
    let stats = named::read(&trained, |p| p.contains("running_").then(|| external_name(p)));
    assert_eq!(stats.tensors.len(), 4, "two hidden layers × mean, var");
    assert!(stats
        .tensors
        .values()
        .all(|t| t.data.iter().any(|&v| v != 0.0 && v != 1.0)));
}

/// The default init trains every adapter tensor (the first step moves `up` only: `down`'s gradient
/// passes through `up.weight` = 0); the authors' all-zero init leaves all but `up.bias` without a
/// gradient, as the fixture README says.
#[test]
fn adapters_train_from_the_default_init_and_freeze_under_the_official_one() {
    let c = cfg("adapter");
    assert_eq!(c.adapter.init, AdapterInit::RandomDown);
    let model = step_and_check(&c, &[".down."]);
    // After one step up.weight ≠ 0, so down now gets a gradient too.
    let (x, y) = batch();
    let g = expert_gradients(&model, &cross_entropy(model.forward(x), y).backward());
    assert!(nonzero(&g.tensors["adapter.0.down.weight"]));

    let mut zero = c.clone();
    zero.adapter.init = AdapterInit::Zero;
    step_and_check(&zero, &[".down.", ".up.weight"]);
}

/// peft's init: B = 0, so A gets no gradient at the first step and the model starts as the
/// backbone; B trains.
#[test]
fn lora_starts_at_the_backbone_and_trains_b_first() {
    let mut c = cfg("lora");
    c.lora.targets = Projection::all().collect();
    c.lora.rank = 2;
    let (x, _) = batch();
    let lora = PromptedVit::new(backbone::<A>(), c.clone(), &Default::default()).unwrap();
    let plain = PromptedVit::new(backbone::<A>(), cfg("linear"), &Default::default())
        .unwrap()
        .import_experts(&head_only(&lora))
        .unwrap();
    let diff = max_diff(lora.forward(x.clone()), plain.forward(x));
    assert_eq!(diff, 0.0, "B = 0: LoRA adds exactly nothing");
    step_and_check(&c, &["query.a", "key.a", "value.a", "out.a", "fc1.a", "fc2.a"]);
}

/// The head tensors of `model`'s artifact.
fn head_only<B: burn::tensor::backend::Backend>(model: &PromptedVit<B>) -> TensorMap {
    let mut map = model.export_experts();
    map.tensors.retain(|k, _| k.starts_with("head."));
    map
}

fn max_diff<const D: usize>(a: Tensor<A, D>, b: Tensor<A, D>) -> f32 {
    abs_diff(&RawTensor::from_tensor(a).data, &RawTensor::from_tensor(b).data)
}

/// max |a − b|.
fn abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// The merged backbone (the run's head built in) gives the LoRA model's logits (every target, rank 3,
/// B and A random): within 2e-5 absolute on logits of magnitude ~5 — float32 reassociation only.
#[test]
fn a_merged_lora_backbone_gives_the_same_logits() {
    let mut c = cfg("lora");
    c.lora.targets = Projection::all().collect();
    c.lora.rank = 3;
    c.lora.alpha = 6.0;
    let model = PromptedVit::new(backbone::<A>(), c, &Default::default()).unwrap();
    // Random factors everywhere (B is zero at init).
    let mut map = model.export_experts();
    for (k, t) in map.tensors.iter_mut() {
        if k.starts_with("lora.") {
            let n = t.numel();
            let r = Tensor::<Flex, 1>::random([n], Distribution::Normal(0.0, 0.3), &Default::default());
            *t = RawTensor::new(t.shape.clone(), r.into_data().to_vec().unwrap());
        }
    }
    let model = model.import_experts(&map).unwrap().valid();
    let merged = model.merged_backbone().unwrap();
    assert_eq!(
        merged.config.num_classes,
        Some(5),
        "the head travels with the merged backbone"
    );
    let (x, _) = batch();
    let x = x.inner();
    let (a, b) = (model.forward(x.clone()), merged.forward(x));
    let scale = RawTensor::from_tensor(a.clone())
        .data
        .iter()
        .fold(0.0f32, |m, v| m.max(v.abs()));
    let diff = abs_diff(&RawTensor::from_tensor(a).data, &RawTensor::from_tensor(b).data);
    eprintln!("merged LoRA: max |Δlogit| {diff:.2e} on logits up to {scale:.2}");
    assert!(scale > 0.5, "logits must not be trivially small: {scale}");
    assert!(diff <= 2e-5, "max |Δlogit| {diff}");
    // Prompt methods cannot be merged.
    let vpt = PromptedVit::<Flex>::new(backbone(), cfg("vpt-deep"), &Default::default()).unwrap();
    let err = vpt.merged_backbone().unwrap_err().to_string();
    assert!(err.contains("prompt tokens"), "{err}");
    // Partial-k merges to its trained backbone.
    let partial = PromptedVit::<Flex>::new(backbone(), cfg("partial-1"), &Default::default()).unwrap();
    let (x, _) = batch();
    let x = x.inner();
    let a = RawTensor::from_tensor(partial.merged_backbone().unwrap().forward(x.clone()));
    let b = RawTensor::from_tensor(partial.forward(x));
    assert!(
        abs_diff(&a.data, &b.data) <= 1e-6,
        "partial-1: the built-in head rounds alike"
    );
}

/// Each method's artifact holds exactly its tensors (buffers included) and loads back onto a fresh
/// backbone to the same logits.
#[test]
fn trainable_only_artifacts_round_trip_for_every_baseline() {
    let dir = tempfile::tempdir().unwrap();
    for (method, zero_grad) in [
        ("partial-1", &[][..]),
        ("mlp-2", &[]),
        ("bias", &[]),
        ("vpt-deep+bias", &[]),
        ("adapter", &[".down."]),
        ("lora", &["query.a", "value.a"]),
    ] {
        let c = cfg(method);
        let trained = step_and_check(&c, zero_grad).valid();
        let path = dir.path().join(format!("{method}.safetensors"));
        save_artifact(&trained, None, &path).unwrap();
        let loaded = load_artifact(&path, backbone::<Flex>(), None, &Default::default()).unwrap();
        let (x, _) = batch();
        let x = x.inner();
        let a = RawTensor::from_tensor(trained.forward(x.clone()));
        let b = RawTensor::from_tensor(loaded.forward(x));
        assert_eq!(a.data, b.data, "{method}: logits after reloading the artifact");
        let held = vapt_vit::weights::read_any(&path).unwrap().0;
        assert_eq!(held.tensors.len(), c.artifact_shapes(&vit()).len(), "{method}");
    }
}

/// The backbone's own parameter gradients (patch-embedding, LayerNorm and linear biases in every
/// block, the final norm) equal central finite differences of the loss — on whichever ops this
/// build runs (vapt's CPU kernels, or Burn's with `--no-default-features`). Methods that train
/// backbone tensors (bias, partial-k, full, LoRA's frozen base aside) rely on them.
#[test]
fn backbone_bias_gradients_match_finite_differences() {
    let c = cfg("bias");
    let model = PromptedVit::new(backbone::<A>(), c.clone(), &Default::default()).unwrap();
    // The head from a formula too (its init draws from Burn's process-wide generator).
    let mut head = TensorMap::new("formula");
    for (name, mut t) in named::read(&model, |p| Some(external_name(p))).tensors {
        if !name.starts_with("backbone.") {
            for (j, v) in t.data.iter_mut().enumerate() {
                *v = (((j * 13) % 29) as f32 - 14.0) / 20.0;
            }
            head.insert(name, t);
        }
    }
    let (model, _) = named::write(model, &head, |p| Some(external_name(p))).unwrap();
    let (x, y) = batch();
    let loss = |m: &PromptedVit<A>| -> f64 {
        let v: Vec<f32> = cross_entropy(m.forward(x.clone()), y.clone())
            .into_data()
            .to_vec()
            .unwrap();
        v[0] as f64
    };
    let grads = cross_entropy(model.forward(x.clone()), y.clone()).backward();
    let g = expert_gradients(&model, &grads);
    let params = named::read(&model, |p| Some(external_name(p)));
    let eps = 1e-2f32;
    let (mut checked, mut sizable) = (0, 0);
    for (name, grad) in g.tensors.iter().filter(|(n, _)| n.starts_with("backbone.")) {
        for &i in &[0, grad.data.len() / 2] {
            let shifted = |delta: f32| {
                let mut map = TensorMap::new("fd");
                let mut t = params.tensors[name].clone();
                t.data[i] += delta;
                map.insert(name.clone(), t);
                let (m, _) = named::write(model.clone(), &map, |p| Some(external_name(p))).unwrap();
                loss(&m)
            };
            let fd = (shifted(eps) - shifted(-eps)) / (2.0 * eps as f64);
            let ad = grad.data[i] as f64;
            assert!(
                (fd - ad).abs() <= 2e-3 + 2e-2 * ad.abs(),
                "{name}[{i}]: autodiff {ad:.6}, finite differences {fd:.6}"
            );
            checked += 1;
            sizable += usize::from(ad.abs() > 1e-2);
        }
    }
    assert_eq!(checked, 2 * (2 + 3 * 8), "every backbone bias, two entries each");
    assert!(
        sizable >= checked / 3,
        "only {sizable} of {checked} gradients above 1e-2"
    );
}
