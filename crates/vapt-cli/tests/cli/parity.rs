//! `vapt parity` on the authors' fixtures, on CPU and WGPU, and on a tampered copy.

use crate::{fixtures, vapt};

fn parity_output(device: &str, name: &str) -> std::process::Output {
    vapt()
        .args(["--device", device, "parity"])
        .arg(fixtures().join(name))
        .output()
        .unwrap()
}

/// The verdict line of a passing parity run.
fn parity_passed(out: std::process::Output) -> String {
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

fn parity_cli(device: &str, name: &str) -> String {
    parity_passed(parity_output(device, name))
}

#[test]
fn parity_passes_on_cpu_for_every_fixture() {
    for name in [
        "a_vpt_shallow",
        "b_vpt_deep",
        "c_vapt_default",
        "g_mae_vapt",
        "h_moco_vapt",
        "k_adapter",
    ] {
        eprintln!("cpu {name}: {}", parity_cli("cpu", name));
    }
}

/// WGPU through Mesa's lavapipe on CI (Debian `mesa-vulkan-drivers`). Without any adapter, vapt
/// must say so (no panic) and the check reports itself skipped — unless `VAPT_REQUIRE_WGPU=1`
/// (set by `.ci/run`), which makes a missing adapter a failure.
#[cfg(feature = "wgpu")]
#[test]
fn parity_passes_on_wgpu_for_vapt() {
    for name in ["c_vapt_default", "h_moco_vapt"] {
        let out = parity_output("wgpu", name);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        if !out.status.success() && stderr.contains("no WGPU adapter") {
            assert_eq!(out.status.code(), Some(1), "a clear error, not a panic: {stderr}");
            assert!(stderr.contains("mesa-vulkan-drivers"), "{stderr}");
            vapt_tests::skip_unless_required(
                "VAPT_REQUIRE_WGPU",
                "no WGPU adapter (install mesa-vulkan-drivers)",
            );
            return;
        }
        eprintln!("wgpu {name}: {}", parity_passed(out));
    }
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
