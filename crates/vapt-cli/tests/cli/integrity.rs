//! What a user can put on disk does not crash vapt or silently change a result: damaged,
//! zeroed, bit-flipped and foreign checkpoints, a swapped backbone, edited counters, a failed
//! start followed by the corrected command, `--resume` with nothing to resume.

use std::path::{Path, PathBuf};

use crate::runs::{metrics, tiny_train_args};
use crate::vapt;

/// A tiny run on a backbone file (`weights`), `epochs` epochs, into `out`.
fn args(root: &Path, weights: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = tiny_train_args(root);
    a.extend(
        [
            "--weights",
            weights.to_str().unwrap(),
            "--epochs",
            "4",
            "--warmup",
            "1",
            "--out",
            out.to_str().unwrap(),
        ]
        .map(String::from),
    );
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// (exit code, stdout, stderr).
fn run(a: &[String]) -> (Option<i32>, String, String) {
    let o = vapt().args(a).output().unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

fn ok(a: &[String]) -> (String, String) {
    let (code, out, err) = run(a);
    assert_eq!(code, Some(0), "{a:?}\n{out}\n{err}");
    (out, err)
}

fn resume(out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["train", "--plain", "--resume", "--out"]
        .map(String::from)
        .to_vec();
    a.push(out.display().to_string());
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let dest = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    weights: PathBuf,
    /// An uninterrupted run.
    whole: PathBuf,
    /// The same run stopped after 2 of 4 epochs (a newest and a previous checkpoint).
    stopped: PathBuf,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    vapt_tests::write_tiny_vtab(&root, 4);
    let weights = root.join("backbone.safetensors");
    vapt_tests::write_tiny_weights(&weights, 0.0);
    let whole = root.join("whole");
    ok(&args(&root, &weights, &whole, &[]));
    let stopped = root.join("stopped");
    ok(&args(&root, &weights, &stopped, &["--stop-after", "2"]));
    Setup {
        _tmp: tmp,
        root,
        weights,
        whole,
        stopped,
    }
}

impl Setup {
    /// A copy of the stopped run to damage.
    fn copy(&self, name: &str) -> PathBuf {
        let dir = self.root.join(name);
        copy_dir(&self.stopped, &dir);
        dir
    }
}

fn checkpoint(dir: &Path, file: &str) -> PathBuf {
    dir.join("checkpoint").join(file)
}

#[test]
fn damaged_checkpoints_fall_back_or_fail_clearly_and_never_change_the_result() {
    let s = setup();
    let ckpt = checkpoint(&s.stopped, "");
    let mut names: Vec<String> = std::fs::read_dir(&ckpt)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "optim-1.bin",
            "optim-2.bin",
            "state.prev.safetensors",
            "state.safetensors"
        ]
    );
    type Damage = fn(&mut Vec<u8>);
    let damages: [(&str, &str, Damage); 5] = [
        ("truncated optimiser", "optim-2.bin", |b| b.truncate(b.len() / 2)),
        ("empty optimiser", "optim-2.bin", |b| b.clear()),
        ("random optimiser", "optim-2.bin", |b| {
            for (i, v) in b.iter_mut().enumerate() {
                *v = (i * 131 % 251) as u8;
            }
        }),
        ("zeroed state", "state.safetensors", |b| b.fill(0)),
        ("one flipped bit in the state", "state.safetensors", |b| {
            let n = b.len();
            b[n - 3] ^= 0x10;
        }),
    ];
    for (i, (what, file, damage)) in damages.into_iter().enumerate() {
        let dir = s.copy(&format!("damaged-{i}"));
        let path = checkpoint(&dir, file);
        let mut bytes = std::fs::read(&path).unwrap();
        damage(&mut bytes);
        std::fs::write(&path, bytes).unwrap();
        let (_, err) = ok(&resume(&dir, &[]));
        assert!(
            err.contains("resumed from the previous checkpoint"),
            "{what}: {err}"
        );
        assert!(err.contains(file), "{what}: the message names the file: {err}");
        assert_eq!(metrics(&s.whole), metrics(&dir), "{what}: another result");
    }

    // Both states damaged: a clear error naming them, exit 1, no panic.
    let dir = s.copy("both");
    for f in ["state.safetensors", "state.prev.safetensors"] {
        let p = checkpoint(&dir, f);
        let n = std::fs::metadata(&p).unwrap().len() as usize;
        std::fs::write(&p, vec![0u8; n]).unwrap();
    }
    let (code, _, err) = run(&resume(&dir, &[]));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no usable checkpoint"), "{err}");
    assert!(err.contains("state.prev.safetensors"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_foreign_checkpoint_a_swapped_backbone_and_edited_counters_are_refused() {
    let s = setup();
    // Another run's checkpoint (another seed) copied in.
    let other = s.root.join("other");
    ok(&args(
        &s.root,
        &s.weights,
        &other,
        &["--seed", "7", "--stop-after", "2"],
    ));
    let dir = s.copy("foreign");
    std::fs::remove_dir_all(dir.join("checkpoint")).unwrap();
    copy_dir(&other.join("checkpoint"), &dir.join("checkpoint"));
    let (code, _, err) = run(&resume(&dir, &[]));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("belongs to another run"), "{err}");
    assert!(err.contains("config: "), "{err}");

    // The backbone file replaced in place: refused, unless --allow-changed weights.
    let dir = s.copy("swapped");
    let backbone = std::fs::read(&s.weights).unwrap();
    vapt_tests::write_tiny_weights(&s.weights, 0.01);
    let (code, _, err) = run(&resume(&dir, &[]));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("weights: "), "{err}");
    assert!(err.contains("--allow-changed"), "{err}");
    ok(&resume(&dir, &["--allow-changed", "weights"]));
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("result.json")).unwrap()).unwrap();
    assert_eq!(result["allowed_changes"], serde_json::json!(["weights"]));
    std::fs::write(&s.weights, backbone).unwrap();

    // A hand-edited epoch counter (same length, so the file still parses).
    let dir = s.copy("edited");
    let state = checkpoint(&dir, "state.safetensors");
    let text = std::fs::read(&state).unwrap();
    let needle = b"\"epochs_done\":\"2\"";
    let at = text
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("epochs_done in the header");
    let mut edited = text.clone();
    edited[at + needle.len() - 2] = b'3';
    std::fs::write(&state, edited).unwrap();
    let (code, _, err) = run(&resume(&dir, &[]));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("epoch counter (3)"), "{err}");
}

#[test]
fn a_failed_start_leaves_nothing_that_blocks_the_corrected_command() {
    let tmp = tempfile::tempdir().unwrap();
    vapt_tests::write_tiny_vtab(tmp.path(), 2);
    let weights = tmp.path().join("backbone.safetensors");
    vapt_tests::write_tiny_weights(&weights, 0.0);
    let out = tmp.path().join("run");
    let typo = tmp.path().join("backbone.safetensor");
    let (code, _, err) = run(&args(tmp.path(), &typo, &out, &[]));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("backbone.safetensor"), "{err}");
    assert!(
        !out.join("config.json").exists(),
        "a failed start wrote config.json"
    );
    // Nothing to resume, and it says so.
    let (code, _, err) = run(&resume(&out, &[]));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("nothing to resume here"), "{err}");
    // The corrected command starts the run.
    ok(&args(tmp.path(), &weights, &out, &[]));
    assert!(out.join("result.json").is_file());
}

#[test]
fn small_mistakes_get_one_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    vapt_tests::write_tiny_vtab(tmp.path(), 2);
    let out = tmp.path().join("run");
    let missing = tmp.path().join("missing.safetensors");
    // The OS error once, after the file it concerns.
    let (code, _, err) = run(&args(tmp.path(), &missing, &out, &[]));
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");
    assert!(err.contains("missing.safetensors"), "{err}");
    // A warm-up longer than the run.
    let weights = tmp.path().join("backbone.safetensors");
    vapt_tests::write_tiny_weights(&weights, 0.0);
    let mut long_warmup = args(tmp.path(), &weights, &out, &[]);
    let w = long_warmup.iter().position(|a| a == "--warmup").unwrap();
    long_warmup[w + 1] = "5".into();
    let (code, _, err) = run(&long_warmup);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("optim.warmup (5) is longer than optim.epochs (4)"),
        "{err}"
    );
    // `--stop-after 0` would train an epoch anyway: refused.
    let (code, _, err) = run(&args(tmp.path(), &weights, &out, &["--stop-after", "0"]));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--stop-after"), "{err}");
    assert!(!out.exists(), "refused commands leave no run folder");
    // A batch larger than the training set is the training set: the lr scales with that.
    let big = tmp.path().join("big-batch");
    let mut a = args(tmp.path(), &weights, &big, &[]);
    let b = a.iter().position(|x| x == "--batch-size").unwrap();
    a[b + 1] = "64".into();
    let (stdout, stderr) = ok(&a);
    let said = format!("{stdout}{stderr}");
    let images: f64 = said
        .split("batch 64 is larger than the ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no message about the batch: {said}"));
    assert!((1.0..64.0).contains(&images), "{said}");
    // Warm-up 1 of 4 epochs: epoch 1 runs at the peak lr, 4 × images / 256 (not 4 × 64 / 256).
    let lr = metrics(&big)[1]["lr"].as_f64().unwrap();
    assert!(
        (lr - 4.0 * images / 256.0).abs() < 1e-12,
        "lr {lr} with {images} images"
    );
}

/// SIGKILL at 20 moments spread over the run (start-up, epochs, checkpoint writes, the finish),
/// `--resume` after each: the run ends bit-identical to an uninterrupted one.
#[test]
fn a_run_killed_at_twenty_random_moments_ends_as_if_never_killed() {
    let tmp = tempfile::tempdir().unwrap();
    vapt_tests::write_tiny_vtab(tmp.path(), 4);
    let weights = tmp.path().join("backbone.safetensors");
    vapt_tests::write_tiny_weights(&weights, 0.0);
    let epochs = |out: &Path| {
        let mut a = args(tmp.path(), &weights, out, &[]);
        let e = a.iter().position(|x| x == "--epochs").unwrap();
        a[e + 1] = "150".into();
        a
    };
    let whole = tmp.path().join("whole");
    ok(&epochs(&whole));
    let killed = tmp.path().join("killed");
    let mut a = epochs(&killed);
    a.push("--resume".into());
    // Kill k waits for epoch ≈ 7k (the first two land in the start-up), then a pseudo-random
    // 0–3 ms more, so the kills are spread over the whole run and some hit a checkpoint write,
    // whatever the machine's speed.
    let epochs_done = |dir: &Path| {
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut kills = 0;
    for k in 0..20u64 {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let r = state >> 33;
        let mut child = vapt()
            .args(&a)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        if k < 2 {
            std::thread::sleep(std::time::Duration::from_millis(r % 40));
        } else {
            let target = (7 * k + r % 5) as usize;
            while epochs_done(&killed) < target && child.try_wait().unwrap().is_none() {
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            std::thread::sleep(std::time::Duration::from_micros(r % 3000));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
    }
    assert_eq!(kills, 20, "a run ended before it was killed");
    assert!(!killed.join("result.json").exists());
    ok(&a);
    assert_eq!(metrics(&whole), metrics(&killed));
    assert_eq!(
        std::fs::read(whole.join("prompts.safetensors")).unwrap(),
        std::fs::read(killed.join("prompts.safetensors")).unwrap(),
        "the artifact differs after 20 kills"
    );
}
