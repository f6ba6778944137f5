//! `cargo xtask fuzz <target|all> --seconds N [--jobs J]`: runs the AFL++ harness of
//! `crates/vapt-fuzz` on one target (or each in turn) for a fixed time, then keeps what it found:
//! the queue, minimised with `afl-cmin`, becomes `crates/vapt-fuzz/corpus/<target>/`, every crash
//! is copied to `crates/vapt-fuzz/crashes/<target>/` (both replayed by `cargo test`). Prints the
//! executions, wall time and crashes per target, and appends them to `target/fuzz/runs.jsonl`.
//!
//! Needs `cargo-afl` (`cargo install cargo-afl`, which builds AFL++ on first use).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{cargo, repo_root, run};

pub fn fuzz(args: &[String]) -> Result<()> {
    let mut target = None;
    let mut seconds = 60u64;
    let mut jobs = 1usize;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => seconds = it.next().context("--seconds needs a number")?.parse()?,
            "--jobs" => jobs = it.next().context("--jobs needs a number")?.parse()?,
            t if !t.starts_with('-') && target.is_none() => target = Some(t.to_string()),
            other => bail!("unknown argument `{other}`"),
        }
    }
    let target = target.context("name a target, or `all` (`cargo xtask fuzz list` lists them)")?;
    if jobs == 0 {
        bail!("--jobs must be at least 1");
    }
    let afl_ok = cargo()
        .args(["afl", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !afl_ok {
        bail!("cargo-afl is not installed: run `cargo install cargo-afl` (it builds AFL++ on first use)");
    }
    let root = repo_root();
    let work = root.join("target/fuzz");
    run(cargo()
        .current_dir(&root)
        .args([
            "afl",
            "build",
            "--release",
            "-p",
            "vapt-fuzz",
            "--features",
            "afl",
            "--bin",
            "vapt-fuzz",
        ])
        .arg("--target-dir")
        .arg(&work))?;
    let bin = work.join("release/vapt-fuzz");
    // The targets are the harness's own list (`vapt_fuzz::TARGETS`).
    let listed = Command::new(&bin)
        .arg("list")
        .output()
        .context("cannot run the harness")?;
    let known: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(String::from)
        .collect();
    let targets: Vec<String> = match target.as_str() {
        "list" => {
            println!("{}", known.join("\n"));
            return Ok(());
        }
        "all" => known,
        t if known.iter().any(|k| k == t) => vec![t.to_string()],
        other => bail!("unknown target `{other}`; targets: all, {}", known.join(", ")),
    };
    for t in &targets {
        let stats = fuzz_one(&root, &work, &bin, t, seconds, jobs)?;
        println!("{stats}");
        let log = work.join("runs.jsonl");
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{stats}\n").as_bytes()))
            .with_context(|| format!("cannot write {}", log.display()))?;
    }
    Ok(())
}

/// AFL++'s limits for the target, for fuzzing and minimising alike: 2 GiB of address space (an
/// allocation the input only claims is a crash) and 2 s per input.
const AFL_LIMITS: [&str; 4] = ["-m", "2048", "-t", "2000"];

fn fuzz_one(root: &Path, work: &Path, bin: &Path, target: &str, seconds: u64, jobs: usize) -> Result<String> {
    let dir = work.join("work").join(target);
    let (input, output, minimised) = (dir.join("in"), dir.join("out"), dir.join("min"));
    for d in [&input, &output, &minimised] {
        let _ = std::fs::remove_dir_all(d);
    }
    std::fs::create_dir_all(&input)?;
    // Seeds from the repository, then everything kept from earlier runs.
    run(Command::new(bin).arg("seeds").arg(target).arg(&input).arg(root))?;
    let corpus = root.join("crates/vapt-fuzz/corpus").join(target);
    let crashes = root.join("crates/vapt-fuzz/crashes").join(target);
    for kept in [&corpus, &crashes] {
        for f in files(kept) {
            if let Some(name) = f.file_name() {
                std::fs::copy(&f, input.join(name))?;
            }
        }
    }
    let started = std::time::Instant::now();
    let mut children = Vec::new();
    for j in 0..jobs {
        let mut c = cargo();
        c.args(["afl", "fuzz", "-i"])
            .arg(&input)
            .arg("-o")
            .arg(&output)
            .args(["-V", &seconds.to_string()])
            .args(AFL_LIMITS)
            .args(if j == 0 {
                ["-M".to_string(), "main".to_string()]
            } else {
                ["-S".to_string(), format!("s{j}")]
            })
            .arg("--")
            .arg(bin)
            .arg(target)
            .env("AFL_NO_UI", "1")
            .env("AFL_SKIP_CPUFREQ", "1")
            .env("AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES", "1")
            .env("AFL_NO_AFFINITY", "1")
            .stdout(std::fs::File::create(dir.join(format!("afl-{j}.log")))?)
            .stderr(std::process::Stdio::inherit());
        eprintln!(
            "xtask: fuzzing {target} for {seconds} s (instance {j}, log {})",
            dir.display()
        );
        children.push(c.spawn().context("cannot start cargo afl fuzz")?);
    }
    for mut c in children {
        let status = c.wait()?;
        if !status.success() {
            bail!(
                "afl-fuzz for {target} failed with {status}; see {}/afl-*.log",
                dir.display()
            );
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let (mut execs, mut found) = (0u64, Vec::new());
    for instance in subdirs(&output) {
        execs += stat(&instance.join("fuzzer_stats"), "execs_done");
        found.extend(
            files(&instance.join("crashes"))
                .into_iter()
                .filter(|f| !f.ends_with("README.txt")),
        );
    }
    // Keep every crash, and the minimised queue as the corpus.
    keep_by_content(&found, &crashes)?;
    // AFL++'s shell version of afl-cmin (its default one is Python).
    let afl_bin = afl_bin_dir()?;
    let path = format!(
        "{}:{}",
        afl_bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut queue = Vec::new();
    for instance in subdirs(&output) {
        queue.extend(files(&instance.join("queue")));
    }
    let all = dir.join("queue");
    let _ = std::fs::remove_dir_all(&all);
    keep_by_content(&queue, &all)?;
    run(Command::new("bash")
        .arg(afl_bin.join("afl-cmin.bash"))
        .arg("-i")
        .arg(&all)
        .arg("-o")
        .arg(&minimised)
        .args(AFL_LIMITS)
        .arg("--")
        .arg(bin)
        .arg(target)
        .env("PATH", path)
        .env("AFL_SKIP_BIN_CHECK", "1")
        .stdout(std::process::Stdio::null()))?;
    let _ = std::fs::remove_dir_all(&corpus);
    let kept = keep_by_content(&files(&minimised), &corpus)?;
    Ok(serde_json::json!({
        "target": target,
        "seconds": seconds,
        "wall_seconds": (wall * 10.0).round() / 10.0,
        "instances": jobs,
        "executions": execs,
        "executions_per_second": (execs as f64 / wall).round(),
        "crashes": found.len(),
        "corpus": kept,
    })
    .to_string())
}

/// Where cargo-afl keeps the AFL++ it built (`~/.local/share/afl.rs/rustc-*/afl.rs-*/afl/bin`).
fn afl_bin_dir() -> Result<PathBuf> {
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .context("neither XDG_DATA_HOME nor HOME is set")?;
    let base = data.join("afl.rs");
    subdirs(&base)
        .into_iter()
        .flat_map(|rustc| subdirs(&rustc))
        .map(|afl| afl.join("afl/bin"))
        .rfind(|bin| bin.join("afl-cmin.bash").is_file())
        .with_context(|| {
            format!(
                "no AFL++ build under {} (run `cargo afl config --build`)",
                base.display()
            )
        })
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|e| e.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|e| e.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// A value of AFL's `fuzzer_stats` (`key : value` lines); 0 when missing.
fn stat(path: &Path, key: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == key).then(|| v.trim().parse().ok()).flatten()
        })
        .unwrap_or(0)
}

/// Copies `files` into `dir` (created if needed), each named by its content's hash, so a file
/// kept twice is kept once; returns how many were copied.
fn keep_by_content(files: &[PathBuf], dir: &Path) -> Result<usize> {
    std::fs::create_dir_all(dir)?;
    for f in files {
        let bytes = std::fs::read(f)?;
        std::fs::write(dir.join(short_sha(&bytes)), bytes)?;
    }
    Ok(files.len())
}

fn short_sha(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}
