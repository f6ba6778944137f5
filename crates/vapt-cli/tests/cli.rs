//! Runs the `vapt` binary as a user would.

use std::path::PathBuf;
use std::process::Command;

fn vapt() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vapt"))
}

fn fixture_npz() -> PathBuf {
    let root = std::env::var_os("VAPT_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/parity"));
    root.join("c_vapt_default/backbone.npz")
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
