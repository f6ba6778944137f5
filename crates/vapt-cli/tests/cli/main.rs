//! Runs the `vapt` binary as a user would: commands and their errors here, the parity fixtures in
//! `parity`, training runs and sweeps in `runs`.

mod cluster;
mod integrity;
mod parity;
mod report;
mod runs;

use std::path::PathBuf;
use std::process::Command;

pub(crate) fn vapt() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vapt"))
}

pub(crate) fn fixtures() -> PathBuf {
    vapt_tests::fixtures_root()
}

/// The stdout of a command that must have succeeded (else its output in the panic).
pub(crate) fn succeeded(out: std::process::Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{what} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The stderr of a `vapt` run that must fail with a clear error (exit code 1, not a panic's 101)
/// containing `needle`.
pub(crate) fn fails_with(cmd: &mut Command, needle: &str) -> String {
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(needle), "{err}");
    err
}

fn fixture_npz() -> PathBuf {
    fixtures().join("c_vapt_default/backbone.npz")
}

#[test]
fn help_lists_the_commands_and_the_device_flag() {
    let out = vapt().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in ["inspect", "convert", "--device", "cuda:N"] {
        assert!(text.contains(needle), "--help lacks `{needle}`:\n{text}");
    }
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_without_the_feature_says_how_to_enable_it() {
    fails_with(
        vapt().args(["--device", "cuda", "inspect"]).arg(fixture_npz()),
        "--features cuda",
    );
}

#[test]
fn unknown_device_is_a_clear_error() {
    // clap's usage errors exit with 2.
    let out = vapt()
        .args(["--device", "tpu", "inspect", "x.npz"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown device `tpu`"), "{err}");
}

#[test]
fn inspect_and_convert_a_google_npz() {
    let out = vapt().arg("inspect").arg(fixture_npz()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("D48-L4-H4-M96-P16 @224"), "{text}");
    assert!(text.contains("google npz"), "{text}");
    assert!(text.contains("forward:      ok on cpu"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("native.safetensors");
    let out = vapt()
        .arg("convert")
        .arg(fixture_npz())
        .arg(&dst)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = vapt().arg("inspect").arg(&dst).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("vapt native safetensors") && text.contains("D48-L4-H4-M96-P16"),
        "{text}"
    );
    // A second convert to the same path must refuse, leaving the file intact.
    let before = std::fs::read(&dst).unwrap();
    fails_with(
        vapt().arg("convert").arg(fixture_npz()).arg(&dst),
        "already exists",
    );
    assert_eq!(std::fs::read(&dst).unwrap(), before);
}

/// A DINOv2-style ViT-S/14 in timm's layout (random weights, the real file's shapes): `inspect`
/// names the size, LayerScale, the stored 37 × 37 grid and its resize to the input's.
#[test]
fn inspect_a_dinov2_vit_s14_names_layer_scale_and_the_position_embedding_resize() {
    use vapt_vit::weights::{rename, write_safetensors, Layout};
    let cfg = vapt_vit::VitConfig::from_variant("S/14").unwrap().with_dinov2(37);
    let vit = cfg.init::<burn::backend::Flex>(&Default::default());
    let timm = rename::invert(&vit.to_native(), &Layout::Timm.table(&cfg)).unwrap();
    assert!(
        timm.tensors.contains_key("blocks.11.ls2.gamma")
            && timm.tensors.contains_key("blocks.0.attn.qkv.weight")
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vit_small_patch14_dinov2.safetensors");
    write_safetensors(&file, &timm).unwrap();
    let out = vapt()
        .arg("inspect")
        .arg(&file)
        .args(["--image-size", "224"])
        .output()
        .unwrap();
    let text = succeeded(out, "inspect");
    for needle in [
        "timm safetensors",
        "architecture: ViT-S/14 @224 (LayerScale, pos-emb 37×37 bicubic)",
        "LayerScale γ after attention and after the MLP",
        "stored for a native 37x37 grid (518 px), resized bicubically",
        "to 16x16 at every forward pass",
        "parameters:   22,056,192",
        "forward:      ok on cpu",
    ] {
        assert!(text.contains(needle), "no `{needle}` in:\n{text}");
    }
}

/// The released self-supervised layouts (the fixtures' `.pth` / `.pth.tar`): `inspect` names the
/// kind, the head input and what the file held that the backbone does not use.
#[test]
fn inspect_reads_the_kind_of_a_pytorch_checkpoint() {
    for (file, kind, pooling, ignored) in [
        (
            "g_mae_vapt/backbone.pth",
            "mae",
            "fc_norm of the mean",
            "norm.weight",
        ),
        (
            "h_moco_vapt/backbone.pth.tar",
            "moco-v3",
            "final LayerNorm of the CLS",
            "optimizer.state",
        ),
    ] {
        let out = vapt()
            .args(["inspect", "--variant", "D48-L4-H4-M96-P16"])
            .arg(fixtures().join(file))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("pytorch checkpoint"), "{text}");
        assert!(
            text.contains(&format!("kind:         {kind} (head input: {pooling}")),
            "{text}"
        );
        assert!(text.contains("loaded:       in "), "{text}");
        let line = text
            .lines()
            .find(|l| l.starts_with("ignored:"))
            .unwrap_or_default();
        assert!(line.contains(ignored), "{file}: {line}");
    }
}

#[test]
fn a_broken_weights_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("not_weights.safetensors");
    std::fs::write(&bad, b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage").unwrap();
    let err = fails_with(vapt().arg("inspect").arg(&bad), "not_weights.safetensors");
    assert!(!err.contains("panicked"), "{err}");
}

fn params_json(args: &[&str]) -> serde_json::Value {
    let out = vapt().arg("params").args(args).arg("--json").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn params_reports_the_papers_counts() {
    let v = params_json(&[
        "--variant",
        "B/16",
        "--method",
        "vapt",
        "--prompts",
        "10",
        "--kernel",
        "2",
        "--hidden-dim",
        "8",
        "--classes",
        "0",
    ]);
    assert_eq!(v["trainable"], 55_608);
    assert_eq!(v["total"], 55_608 + 85_798_656);
    let v = params_json(&[
        "--variant",
        "B/16",
        "--method",
        "vpt-deep",
        "--prompts",
        "10",
        "--classes",
        "0",
    ]);
    assert_eq!(v["trainable"], 92_160);
    let v = params_json(&["--variant", "B/16", "--method", "linear", "--classes", "100"]);
    assert_eq!(v["trainable"], 768 * 100 + 100);
    let v = params_json(&["--variant", "B/16", "--method", "full", "--classes", "0"]);
    assert_eq!(v["trainable"], 85_798_656);
    // The comparison rows, head excluded (the authors' counts; LoRA as peft counts it: r·(in+out)
    // per target, q and v in 12 blocks).
    for (method, extra, count) in [
        ("partial-1", &[][..], 7_089_408),
        ("partial-2", &[], 14_177_280),
        ("partial", &["--partial-blocks", "4"][..], 28_353_024),
        ("bias", &[], 102_912),
        ("adapter", &["--reduction", "8"], 1_779_840),
        ("vpt-deep+bias", &["--prompts", "10"], 195_072),
        ("lora", &["--lora-rank", "8"], 12 * 2 * 8 * (768 + 768)),
        (
            "lora",
            &["--lora-rank", "4", "--lora-targets", "q,k,v,o,fc1,fc2"],
            12 * 4 * (4 * 1536 + 2 * (768 + 3072)),
        ),
        ("mlp-3", &[], 2 * (768 * 768 + 3 * 768)),
    ] {
        let mut args = vec!["--variant", "B/16", "--method", method, "--classes", "0"];
        args.extend_from_slice(extra);
        let v = params_json(&args);
        assert_eq!(v["trainable"], count, "{method} {extra:?}");
        // The backbone's own trained tensors (partial, bias) count once, in the backbone row.
        let modules = v["modules"].as_array().unwrap();
        let row = |name: &str| {
            modules
                .iter()
                .find(|m| m["module"] == name)
                .map(|m| m["trainable"].clone())
        };
        let in_backbone = row("backbone").and_then(|t| t.as_u64()).unwrap() as usize;
        assert_eq!(v["total"], 85_798_656 + count - in_backbone, "{method}");
    }
    // The self-supervised backbones (the authors' MAE / MoCo v3 classes).
    for kind in ["mae", "moco-v3"] {
        for (method, count) in [("vapt", 55_608), ("vpt-deep", 92_160)] {
            let v = params_json(&["--backbone-kind", kind, "--method", method, "--prompts", "10"]);
            assert_eq!(v["trainable"], count, "{kind} {method}");
        }
        // vpt_depth 2: L - 1 static rows there, 1 on the supervised ViT.
        let v = params_json(&["--backbone-kind", kind, "--vpt-depth", "2"]);
        assert_eq!(v["trainable"], 136_848, "{kind}");
    }
    assert_eq!(params_json(&["--vpt-depth", "2"])["trainable"], 60_048);
    // Model scales: the backbone counts of ViT-L/16 and ViT-H/14.
    assert_eq!(
        params_json(&["--variant", "L/16", "--method", "full"])["trainable"],
        303_301_632
    );
    assert_eq!(
        params_json(&["--variant", "H/14", "--method", "full"])["trainable"],
        630_764_800
    );
}

#[test]
fn params_table_is_readable_and_bad_knobs_are_errors() {
    let out = vapt().args(["params", "--prompts", "5"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("trainable params: 42,418"), "{text}");
    assert!(text.contains("vapt.10") && text.contains("vapt.mlp"), "{text}");
    fails_with(
        vapt().args(["params", "--vpt-depth", "13"]),
        "vpt_depth 13 exceeds the backbone depth 12",
    );
}

#[test]
fn bench_prints_valid_json_with_timings() {
    for method in ["vapt", "vpt-deep", "linear", "full"] {
        let out = vapt()
            .args([
                "bench",
                "--variant",
                "D48-L2-H4-M96-P16",
                "--image-size",
                "32",
                "--batch-size",
                "2",
            ])
            .args([
                "--iters",
                "2",
                "--warmup",
                "1",
                "--classes",
                "5",
                "--prompts",
                "3",
                "--json",
                "--method",
                method,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["method"], method);
        assert_eq!(v["cpu_kernels"], cfg!(feature = "cpu-kernels"), "{v}");
        assert!(v["eval_forward_s"].as_f64().unwrap() > 0.0);
        assert!(v["train_step_s"].as_f64().unwrap() > 0.0);
        assert_eq!(v["train_runs_s"].as_array().unwrap().len(), 2);
    }
}
