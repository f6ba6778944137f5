//! `cargo xtask <task>`: project automation that needs more than one cargo command.
//!
//! * `cargo xtask train [ARGS..]` — build `vapt` in release mode (default features) and run
//!   `vapt train ARGS..`; with no arguments, the embedded default (see [`default_train_args`]).
//! * `cargo xtask bench [ARGS..]` — build `vapt` in release mode and run `vapt bench ARGS..`.
//! * `cargo xtask ci` — what CI runs: fmt check, clippy, tests, and a `cuda` feature check.
//! * `cargo xtask fashion-mnist [--src DIR] [--out DIR] [--force]` — (re)build the embedded
//!   `datasets/fashion-mnist-1k` task from the Debian package `dataset-fashion-mnist`.

mod fashion_mnist;

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};

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

fn vapt(sub: &str, args: &[String]) -> Result<()> {
    run(cargo()
        .args([
            "run",
            "--release",
            "--quiet",
            "-p",
            "vapt-cli",
            "--bin",
            "vapt",
            "--",
            sub,
        ])
        .args(args))
}

/// The embedded default run: VAPT on the shipped `datasets/fashion-mnist-1k` task, offline, in a
/// new folder under `runs/default/`. The backbone is the shipped pre-trained tiny ViT when
/// `datasets/weights/vit-mnist.safetensors` exists, else a random one of the same shape.
fn default_train_args() -> Vec<String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let weights = root.join("datasets/weights/vit-mnist.safetensors");
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut args: Vec<String> = vec![
        "--data-root".into(),
        root.join("datasets").display().to_string(),
        "--task".into(),
        "fashion-mnist-1k".into(),
        "--method".into(),
        "vapt".into(),
        "--epochs".into(),
        "20".into(),
        "--warmup".into(),
        "2".into(),
        "--lr".into(),
        "10".into(),
        "--wd".into(),
        "0.0001".into(),
        "--out".into(),
        root.join(format!("runs/default/{stamp}")).display().to_string(),
    ];
    if weights.is_file() {
        args.extend(["--weights".into(), weights.display().to_string()]);
    } else {
        eprintln!("xtask: {} not found: using a random backbone", weights.display());
        args.extend(["--variant", "D48-L4-H4-M96-P4", "--image-size", "28"].map(String::from));
    }
    args
}

fn ci() -> Result<()> {
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    run(cargo().args(["test", "--workspace"]))?;
    run(cargo().args(["check", "-p", "vapt-cli", "--features", "cuda"]))
}

fn fashion(args: &[String]) -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
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
  train [ARGS..]   build vapt (release) and run `vapt train ARGS..`
  bench [ARGS..]   build vapt (release) and run `vapt bench ARGS..` (add --json for JSON)
  ci               fmt check, clippy -D warnings, tests, cuda feature check
  fashion-mnist [--src DIR] [--out DIR] [--force]
                   rebuild datasets/fashion-mnist-1k from the Debian package dataset-fashion-mnist";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("train") if args.len() == 1 => vapt("train", &default_train_args()),
        Some("train") => vapt("train", &args[1..]),
        Some("bench") => vapt("bench", &args[1..]),
        Some("ci") => ci(),
        Some("fashion-mnist") => fashion(&args[1..]),
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
