//! Runs the `vapt` binary as a user would.

use std::path::PathBuf;
use std::process::Command;

fn vapt() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vapt"))
}

fn fixtures() -> PathBuf {
    std::env::var_os("VAPT_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/parity"))
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
    let out = vapt()
        .args(["--device", "cuda", "inspect"])
        .arg(fixture_npz())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--features cuda"), "{err}");
}

#[test]
fn unknown_device_is_a_clear_error() {
    let out = vapt()
        .args(["--device", "tpu", "inspect", "x.npz"])
        .output()
        .unwrap();
    assert!(!out.status.success());
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
    let out = vapt()
        .arg("convert")
        .arg(fixture_npz())
        .arg(&dst)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    assert_eq!(std::fs::read(&dst).unwrap(), before);
}

#[test]
fn a_broken_weights_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("not_weights.safetensors");
    std::fs::write(&bad, b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage").unwrap();
    let out = vapt().arg("inspect").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not_weights.safetensors"), "{err}");
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
}

#[test]
fn params_table_is_readable_and_bad_knobs_are_errors() {
    let out = vapt().args(["params", "--prompts", "5"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("trainable params: 42,418"), "{text}");
    assert!(text.contains("vapt.10") && text.contains("vapt.mlp"), "{text}");
    let out = vapt().args(["params", "--vpt-depth", "13"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("vpt_depth 13 exceeds the backbone depth 12"));
}

fn parity_cli(device: &str, name: &str) -> String {
    let out = vapt()
        .args(["--device", device, "parity"])
        .arg(fixtures().join(name))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = text.lines().last().unwrap_or_default().to_string();
    assert!(last.starts_with("parity: PASS"), "{text}");
    last
}

#[test]
fn parity_passes_on_cpu_for_every_fixture() {
    for name in ["a_vpt_shallow", "b_vpt_deep", "c_vapt_default"] {
        eprintln!("cpu {name}: {}", parity_cli("cpu", name));
    }
}

/// WGPU through Mesa's lavapipe on CI (Debian `mesa-vulkan-drivers`). Set `VAPT_SKIP_WGPU=1` on a
/// machine without any Vulkan driver.
#[cfg(feature = "wgpu")]
#[test]
fn parity_passes_on_wgpu_for_vapt() {
    if std::env::var_os("VAPT_SKIP_WGPU").is_some() {
        eprintln!("VAPT_SKIP_WGPU set: skipping the WGPU parity check");
        return;
    }
    eprintln!("wgpu c_vapt_default: {}", parity_cli("wgpu", "c_vapt_default"));
}

#[test]
fn parity_fails_loudly_on_a_tampered_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join("a_vpt_shallow");
    for f in [
        "config.json",
        "backbone.npz",
        "params.safetensors",
        "io.safetensors",
    ] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    // Tighten every tolerance 1e6-fold: the comparison must now fail, with exit code 1.
    let cfg = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    for r in v["suggested_tolerance"]["by_prefix"].as_array_mut().unwrap() {
        r["atol"] = serde_json::json!(1e-13);
        r["rtol"] = serde_json::json!(1e-13);
    }
    std::fs::write(dir.path().join("config.json"), v.to_string()).unwrap();
    let out = vapt().arg("parity").arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().last().unwrap().starts_with("parity: FAIL"), "{text}");
    // A broken config is an error naming the file.
    std::fs::write(dir.path().join("config.json"), "{ not json").unwrap();
    let out = vapt().arg("parity").arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("config.json"));
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
        assert!(v["eval_forward_s"].as_f64().unwrap() > 0.0);
        assert!(v["train_step_s"].as_f64().unwrap() > 0.0);
        assert_eq!(v["train_runs_s"].as_array().unwrap().len(), 2);
    }
}
