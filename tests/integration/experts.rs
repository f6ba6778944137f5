//! Prompt experts against the authors' code (the parity fixtures), plus the properties the
//! paper's code implies: zero-initialised adaptive prompts with non-zero gradients, a frozen
//! backbone, and the MoE view.

use burn::backend::{Autodiff, Flex};
use burn::module::{AutodiffModule, Module};
use burn::optim::{GradientsParams, Optimizer, SgdConfig};
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use vapt_experts::{expert_gradients, Method, PromptConfig, PromptedVit, Trace};
use vapt_tests::fixture;
use vapt_train::{cross_entropy, run_parity};
use vapt_vit::{load_pretrained, LoadOptions, Vit, VitConfig};

type A = Autodiff<Flex>;

fn parity(name: &str) {
    let report = run_parity::<A>(&fixture(name), &Default::default()).unwrap_or_else(|e| panic!("{e}"));
    for line in &report.lines {
        assert!(line.pass(), "{name}: {line:?}");
    }
    eprintln!("{name}: {}", report.verdict());
    assert!(report.pass(), "{}", report.verdict());
}

#[test]
fn parity_vpt_shallow() {
    parity("a_vpt_shallow");
}

#[test]
fn parity_vpt_deep() {
    parity("b_vpt_deep");
}

/// VAPT on MAE, from the released checkpoint's layout (`backbone.pth`, a `model` dict without a
/// head): mean pooling through `fc_norm` at its initial values, the file's `norm` ignored.
#[test]
fn parity_mae_vapt() {
    parity("g_mae_vapt");
}

/// VAPT on MoCo v3, from the linear-probe checkpoint's layout (`backbone.pth.tar`: `state_dict`
/// of `module.` keys beside the optimizer state).
#[test]
fn parity_moco_vapt() {
    parity("h_moco_vapt");
}

/// Pfeiffer adapters after every block's MLP (random adapter tensors, so every gradient counts).
#[test]
fn parity_adapter() {
    parity("k_adapter");
}

#[test]
fn parity_vapt_default() {
    parity("c_vapt_default");
}

/// The fixture backbone (D 48, 4 blocks, 4 heads).
fn backbone() -> Vit<A> {
    let path = fixture("c_vapt_default").join("backbone.npz");
    load_pretrained::<A>(&path, &LoadOptions::default(), &Default::default())
        .unwrap()
        .0
}

/// The fixture backbone wrapped with freshly initialised experts.
fn fresh(method: Method) -> PromptedVit<A> {
    let device = Default::default();
    let vit = backbone();
    let mut cfg = PromptConfig::new(method, 5, 7).without_dropout();
    cfg.vapt.hidden_dim = 8;
    PromptedVit::new(vit, cfg, &device).unwrap()
}

fn batch() -> (Tensor<A, 4>, Tensor<A, 1, Int>) {
    let device = Default::default();
    <A as burn::tensor::backend::Backend>::seed(&device, 7);
    let x = Tensor::<A, 4>::random([2, 3, 224, 224], Distribution::Normal(0.0, 1.0), &device);
    let y = Tensor::<A, 1, Int>::from_data(TensorData::new(vec![3i64, 5], [2]), &device);
    (x, y)
}

fn values<const D: usize>(t: Tensor<A, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec::<f32>().unwrap()
}

#[test]
fn adaptive_prompts_start_at_exactly_zero_yet_get_gradients() {
    let model = fresh(Method::Vapt);
    let (x, y) = batch();
    let mut trace = Trace::new(true, false);
    let logits = model.forward_traced(x, Some(&mut trace));
    for i in 1..4 {
        let (_, p) = &trace.tensors[&format!("out.prompts.{i}")];
        let v = values(p.clone());
        assert!(
            v.iter().all(|&e| e == 0.0),
            "block {i} prompts are not exactly zero"
        );
    }
    let (_, p0) = &trace.tensors["out.prompts.0"];
    assert!(
        values(p0.clone()).iter().any(|&e| e != 0.0),
        "static prompt must be non-zero"
    );
    let grads = cross_entropy(logits, y).backward();
    let g = expert_gradients(&model, &grads);
    for k in 0..3 {
        let tp = &g.tensors[&format!("vapt.{k}.token_proj.weight")];
        let max_w = tp.data.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(max_w > 0.0, "vapt.{k}.token_proj.weight has a zero gradient");
        // The bias adds the same value to every channel of a prompt. At initialisation the
        // projector MLP sees U = 0 (relu'(0) = 0), so the bias reaches the loss only through the
        // block's LayerNorm, which is blind to a per-token constant: its gradient is zero up to
        // rounding. (This test used to assert it non-zero and passed on rounding noise.)
        let tb = &g.tensors[&format!("vapt.{k}.token_proj.bias")];
        let max_b = tb.data.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(
            max_b <= 1e-4 * max_w,
            "vapt.{k}.token_proj.bias gradient {max_b:e} vs weight {max_w:e}"
        );
    }
}

#[test]
fn frozen_backbone_gets_no_gradient_and_is_bit_identical_after_a_step() {
    for method in [Method::Vapt, Method::VptDeep, Method::Linear] {
        let model = fresh(method);
        let before = model.backbone.to_native();
        let experts_before = model.export_experts();
        let (x, y) = batch();
        let loss = cross_entropy(model.forward(x), y);
        let grads = loss.backward();
        // No backbone parameter has a gradient.
        let b = &model.backbone;
        assert!(b.cls_token.val().grad(&grads).is_none());
        assert!(b.pos_embed.val().grad(&grads).is_none());
        assert!(b.patch_embed.weight.val().grad(&grads).is_none());
        for block in &b.blocks {
            assert!(block.attn.query.weight.val().grad(&grads).is_none());
            assert!(block.mlp.fc2.weight.val().grad(&grads).is_none());
            assert!(block.norm1.weight.val().grad(&grads).is_none());
        }
        let gp = GradientsParams::from_grads(grads, &model);
        let mut optim = SgdConfig::new().init::<A, PromptedVit<A>>();
        let model = optim.step(1.0, model, gp);
        let after = model.backbone.to_native();
        assert_eq!(before.tensors, after.tensors, "{method}: backbone changed");
        let experts_after = model.export_experts();
        assert_ne!(
            experts_before.tensors["head.weight"],
            experts_after.tensors["head.weight"]
        );
        if method != Method::Linear {
            assert_ne!(
                experts_before.tensors["prompt.static"],
                experts_after.tensors["prompt.static"]
            );
        }
    }
}

#[test]
fn full_finetuning_trains_the_backbone() {
    let model = fresh(Method::Full);
    let (x, y) = batch();
    let grads = cross_entropy(model.forward(x), y).backward();
    assert!(model.backbone.blocks[0]
        .attn
        .query
        .weight
        .val()
        .grad(&grads)
        .is_some());
    assert!(model.num_params() > 40_000);
}

#[test]
fn moe_gate_masses_sum_to_one() {
    let model = fresh(Method::VptDeep);
    let (x, _) = batch();
    let view = model.valid().moe_view(x.inner());
    assert_eq!(view.blocks.len(), 4);
    for heads in &view.blocks {
        assert_eq!(heads.len(), 4);
        for h in heads {
            for m in [h.cls_query, h.patch_query] {
                assert!((m.prompt + m.patch + m.cls - 1.0).abs() < 1e-5, "{m:?}");
                assert!(m.prompt > 0.0 && m.patch > 0.0 && m.cls > 0.0);
            }
        }
    }
}

/// Moving the block-0 prompts towards the direction the CLS query favours raises the gate mass
/// block 0 puts on the prompt experts.
#[test]
fn moving_a_prompt_key_towards_a_query_moves_mass_to_the_prompt_experts() {
    let model = fresh(Method::VptShallow).valid();
    let (x, _) = batch();
    let x = x.inner();
    let before = model.moe_view(x.clone()).blocks[0][0].cls_query.prompt;
    // Prompt keys are LN(p)·Wk; choosing p so that its key aligns with CLS's query raises the score.
    // Take the CLS token after the embedding, its head-0 query q = LN(cls)·Wq, and set every prompt to
    // a vector whose key k = LN(p)·Wk has a large positive dot product with q: p ∝ Wk_h0 · q.
    let block = &model.backbone.blocks[0];
    let emb = model.backbone.embed(x.clone());
    let cls = emb.narrow(1, 0, 1);
    let q = block.attn.query.forward(block.norm1.forward(cls)); // [B, 1, D]
    let q0 = q.narrow(2, 0, 12).mean_dim(0).reshape([1, 12]); // head 0
    let wk = block.attn.key.weight.val().narrow(1, 0, 12); // [D, 12]
    let dir = q0.matmul(wk.transpose()); // [1, D]: gradient of q·k wrt u
    let gamma = block.norm1.weight.val().unsqueeze::<2>();
    let p = (dir / gamma).mul_scalar(50.0);
    let mut moved = model.clone();
    if let Some(prompts) = moved.prompt.as_mut() {
        let [np, d] = prompts.r#static.dims();
        prompts.r#static = burn::module::Param::from_tensor(p.expand([np, d]));
    }
    let after = moved.moe_view(x).blocks[0][0].cls_query.prompt;
    assert!(after > before + 0.05, "prompt mass {before:.4} -> {after:.4}");
}

#[test]
fn prompt_artifact_round_trips_and_rejects_a_mismatched_backbone() {
    let model = fresh(Method::Vapt);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prompts.safetensors");
    vapt_experts::save_artifact(&model, Some("abc123"), &path).unwrap();
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size < 200_000, "artifact is {size} bytes");
    let device = Default::default();
    let vit = backbone();
    let loaded = vapt_experts::load_artifact(&path, vit.clone(), Some("abc123"), &device).unwrap();
    assert_eq!(loaded.config, model.config);
    assert_eq!(loaded.export_experts().tensors, model.export_experts().tensors);
    let (x, _) = batch();
    assert_eq!(values(loaded.forward(x.clone())), values(model.forward(x)));
    // Another hash: refused, naming the file.
    let err = vapt_experts::load_artifact(&path, vit, Some("fff"), &device)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("prompts.safetensors") && err.contains("abc123"),
        "{err}"
    );
    // Another architecture: refused.
    let other = VitConfig::from_variant("D48-L2-H4-M96-P16")
        .unwrap()
        .init::<A>(&device);
    let err = vapt_experts::load_artifact(&path, other, None, &device)
        .unwrap_err()
        .to_string();
    assert!(err.contains("trained on D48-L4-H4-M96-P16"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Knobs beyond the three fixtures: the adaptive generator against an independent f64 reference.
// ---------------------------------------------------------------------------------------------

use vapt_experts::{Activation, VaptConfig};
use vapt_vit::{RawTensor, TensorMap};

/// erf to ~1e-12 (series for small |x|, continued fraction otherwise).
fn erf(x: f64) -> f64 {
    if x.abs() < 2.5 {
        // Maclaurin series.
        let mut sum = x;
        let mut term = x;
        for n in 1..80 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // erfc continued fraction (Lentz), then erf = 1 - erfc.
        let ax = x.abs();
        let mut f = ax;
        for k in (1..60).rev() {
            f = ax + (k as f64 / 2.0) / f;
        }
        let erfc = (-ax * ax).exp() / std::f64::consts::PI.sqrt() / f;
        x.signum() * (1.0 - erfc)
    }
}

/// One adaptive generator computed by hand in f64 from the exported tensors (SPEC §3.2).
fn reference_generator(patches: &[f64], b: usize, cfg: &PromptConfig, p: &TensorMap, k: usize) -> Vec<f64> {
    let (d, g, np) = (48usize, 14usize, cfg.num_prompts);
    let n = g * g;
    let v = &cfg.vapt;
    let t = |name: &str| -> Vec<f64> { p.tensors[name].data.iter().map(|&x| x as f64).collect() };
    let (lw, lb) = (
        t(&format!("vapt.{k}.norm.weight")),
        t(&format!("vapt.{k}.norm.bias")),
    );
    let (wp, bp) = (
        t(&format!("vapt.{k}.token_proj.weight")),
        t(&format!("vapt.{k}.token_proj.bias")),
    );
    let mlp = if v.share_projector {
        "vapt.mlp".to_string()
    } else {
        format!("vapt.{k}.mlp")
    };
    let mut out = Vec::new();
    for bi in 0..b {
        // LayerNorm per token, eps 1e-5.
        let mut z = vec![0.0; n * d];
        for tok in 0..n {
            let row = &patches[(bi * n + tok) * d..(bi * n + tok + 1) * d];
            let mean = row.iter().sum::<f64>() / d as f64;
            let var = row.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / d as f64;
            for c in 0..d {
                z[tok * d + c] = (row[c] - mean) / (var + v.norm_eps).sqrt() * lw[c] + lb[c];
            }
        }
        // F[c][s]
        let (f, s_len) = if v.conv {
            let kk = v.kernel;
            let pad = v.padding;
            let gp = g + 2 * pad;
            let go = gp + 1 - kk;
            let w = t(&format!("vapt.{k}.conv.kernel"));
            let mut f = vec![0.0; d * go * go];
            for c in 0..d {
                let wc = if v.channelwise { 0 } else { c };
                let at = |y: usize, x: usize| -> f64 {
                    if y < pad || x < pad || y >= pad + g || x >= pad + g {
                        0.0
                    } else {
                        z[((y - pad) * g + (x - pad)) * d + c]
                    }
                };
                for y in 0..go {
                    for x in 0..go {
                        let mut acc = 0.0;
                        for dy in 0..kk {
                            for dx in 0..kk {
                                acc += at(y + dy, x + dx) * w[(wc * kk + dy) * kk + dx];
                            }
                        }
                        f[c * go * go + y * go + x] = acc;
                    }
                }
            }
            (f, go * go)
        } else {
            let mut f = vec![0.0; d * n];
            for c in 0..d {
                for s in 0..n {
                    f[c * n + s] = z[s * d + c];
                }
            }
            (f, n)
        };
        // U[j][c]
        let mut u = vec![0.0; np * d];
        for j in 0..np {
            for c in 0..d {
                u[j * d + c] = bp[j]
                    + (0..s_len)
                        .map(|s| f[c * s_len + s] * wp[j * s_len + s])
                        .sum::<f64>();
            }
        }
        if !v.feat_projector {
            out.extend(u);
            continue;
        }
        let (fc1, fc2) = (t(&format!("{mlp}.fc1.weight")), t(&format!("{mlp}.fc2.weight")));
        let scale = if v.learnable_scale {
            t(&format!("{mlp}.scale"))[0]
        } else {
            1.0
        };
        let r = v.hidden_dim;
        for j in 0..np {
            let mut h: Vec<f64> = (0..r)
                .map(|i| (0..d).map(|c| u[j * d + c] * fc1[i * d + c]).sum::<f64>())
                .collect();
            match v.activation {
                Activation::Relu => h.iter_mut().for_each(|x| *x = x.max(0.0)),
                Activation::Gelu => h
                    .iter_mut()
                    .for_each(|x| *x = 0.5 * *x * (1.0 + erf(*x / 2f64.sqrt()))),
                Activation::Sigmoid => h.iter_mut().for_each(|x| *x = 1.0 / (1.0 + (-*x).exp())),
                Activation::Attention => {
                    let m = h.iter().cloned().fold(f64::MIN, f64::max);
                    let zsum: f64 = h.iter().map(|x| (x - m).exp()).sum();
                    h.iter_mut().for_each(|x| *x = (*x - m).exp() / zsum);
                }
                Activation::Identity => {}
            }
            for c in 0..d {
                out.push(u[j * d + c] + scale * (0..r).map(|i| h[i] * fc2[c * r + i]).sum::<f64>());
            }
        }
    }
    out
}

/// Fills every expert tensor with deterministic non-zero values (the official init zeroes the
/// token projector, which would hide layout mistakes).
fn randomise(model: PromptedVit<A>) -> PromptedVit<A> {
    let mut map = model.export_experts();
    for (i, t) in map.tensors.values_mut().enumerate() {
        let n = t.data.len();
        let data: Vec<f32> = (0..n)
            .map(|j| ((((j + 17 * i) * 2_654_435_761usize) % 10_007) as f32 / 10_007.0 - 0.5) * 0.6)
            .collect();
        *t = RawTensor::new(t.shape.clone(), data);
    }
    model.import_experts(&map).unwrap()
}

#[test]
fn adaptive_generator_matches_an_independent_reference_for_every_knob() {
    let device = Default::default();
    let base = VaptConfig::default();
    let variants: Vec<(&str, VaptConfig)> = vec![
        ("default", base.clone()),
        (
            "per-channel K3 pad1",
            VaptConfig {
                channelwise: false,
                kernel: 3,
                padding: 1,
                ..base.clone()
            },
        ),
        (
            "K4 pad2 shared",
            VaptConfig {
                kernel: 4,
                padding: 2,
                ..base.clone()
            },
        ),
        (
            "no conv",
            VaptConfig {
                conv: false,
                ..base.clone()
            },
        ),
        (
            "unshared + scale",
            VaptConfig {
                share_projector: false,
                learnable_scale: true,
                ..base.clone()
            },
        ),
        (
            "gelu r16",
            VaptConfig {
                activation: Activation::Gelu,
                hidden_dim: 16,
                ..base.clone()
            },
        ),
        (
            "sigmoid",
            VaptConfig {
                activation: Activation::Sigmoid,
                ..base.clone()
            },
        ),
        (
            "attention",
            VaptConfig {
                activation: Activation::Attention,
                ..base.clone()
            },
        ),
        (
            "identity",
            VaptConfig {
                activation: Activation::Identity,
                ..base.clone()
            },
        ),
        (
            "no projector",
            VaptConfig {
                feat_projector: false,
                ..base.clone()
            },
        ),
        (
            "vpt_depth 2",
            VaptConfig {
                vpt_depth: 2,
                ..base.clone()
            },
        ),
    ];
    let (b, n, d) = (2, 196, 48);
    let patches: Vec<f32> = (0..b * n * d)
        .map(|i| ((i * 7919 % 1009) as f32 / 1009.0 - 0.5) * 2.0)
        .collect();
    let patches64: Vec<f64> = patches.iter().map(|&x| x as f64).collect();
    for (name, vapt) in variants {
        let vit = backbone();
        let mut cfg = PromptConfig::new(Method::Vapt, 3, 7);
        cfg.vapt = vapt;
        let cfg = cfg.without_dropout();
        let model = randomise(PromptedVit::new(vit, cfg.clone(), &device).unwrap());
        let exported = model.export_experts();
        let x = Tensor::<A, 3>::from_data(TensorData::new(patches.clone(), [b, n, d]), &device);
        let Some(adaptive) = &model.vapt else {
            panic!("a VAPT model has adaptive experts")
        };
        for k in 0..adaptive.blocks.len() {
            let (p, _) = adaptive.generate(k, x.clone(), false);
            let ours = values(p);
            let expect = reference_generator(&patches64, b, &cfg, &exported, k);
            let max = expect.iter().fold(0f64, |m, v| m.max(v.abs()));
            let err = ours
                .iter()
                .zip(&expect)
                .fold(0f64, |m, (a, e)| m.max((*a as f64 - e).abs()));
            assert!(
                err <= 1e-5 * max.max(1.0),
                "{name}, generator {k}: max err {err:.2e} (max {max:.2})"
            );
        }
    }
}

#[test]
fn vpt_depth_uses_deep_static_prompts_before_the_adaptive_blocks() {
    let device = Default::default();
    let vit = backbone();
    let mut cfg = PromptConfig::new(Method::Vapt, 4, 7).without_dropout();
    cfg.vapt.vpt_depth = 3;
    let model = randomise(PromptedVit::new(vit, cfg, &device).unwrap());
    assert_eq!(model.vapt.as_ref().map(|v| v.blocks.len()), Some(1));
    let deep = model.export_experts().tensors["prompt.deep_static"].clone();
    assert_eq!(deep.shape, vec![2, 4, 48]);
    let (x, _) = batch();
    let mut trace = Trace::new(true, false);
    let _ = model.forward_traced(x, Some(&mut trace));
    for (i, row) in [(1usize, 0usize), (2, 1)] {
        let got = values(trace.tensors[&format!("out.prompts.{i}")].1.clone());
        let want = &deep.data[row * 4 * 48..(row + 1) * 4 * 48];
        assert_eq!(&got[..4 * 48], want, "block {i} must get deep_static[{row}]");
        assert_eq!(&got[4 * 48..], want, "block {i}, second sample");
    }
    assert!(
        trace.tensors.contains_key("out.vapt.0.token_proj"),
        "block 3 is adaptive"
    );
}
