//! Sweeps past one process: workers sharing a folder, a killed worker, a pool of workers, the
//! Slurm submission (dry run, bad input) and, where Slurm runs, a real job-array sweep.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::runs::{metrics, run_ok, tiny_train_args};
use crate::{fails_with, succeeded, vapt};

/// A tiny sweep (the tiny run's flags, lr from `grid`): `grid` (`LRS:WDS`), `seeds`, `epochs`,
/// into `out`.
pub(crate) fn sweep_args(root: &Path, out: &Path, grid: &str, seeds: &str, epochs: usize) -> Vec<String> {
    let mut args = tiny_train_args(root);
    args[0] = "sweep".into();
    let lr = args.iter().position(|a| a == "--lr").unwrap();
    args.drain(lr..lr + 2);
    let epochs = epochs.to_string();
    args.extend(
        [
            "--warmup", "0", "--epochs", &epochs, "--grid", grid, "--seeds", seeds, "--out",
        ]
        .map(String::from),
    );
    args.push(out.display().to_string());
    args
}

pub(crate) fn json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// A run folder's result and metrics without the wall-clock fields.
fn run_record(dir: &Path) -> (serde_json::Value, Vec<serde_json::Value>) {
    let r = json(&dir.join("result.json"));
    (
        serde_json::json!([
            r["eval_top1"],
            r["eval_loss"],
            r["train_loss"],
            r["status"],
            r["epochs"]
        ]),
        metrics(dir),
    )
}

/// Which points an output says it trained.
fn trained(stdout: &str) -> Vec<usize> {
    stdout
        .lines()
        .filter(|l| l.ends_with(": Trained"))
        .filter_map(|l| l.strip_prefix("point ")?.split(' ').next()?.parse().ok())
        .collect()
}

#[test]
fn three_workers_on_one_folder_train_every_point_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    vapt_tests::write_tiny_vtab(tmp.path(), 4);
    let (seq, par) = (tmp.path().join("seq"), tmp.path().join("par"));
    let grid = "4,0.5:0.001,0";
    run_ok(&sweep_args(tmp.path(), &seq, grid, "42,44", 2));
    let args = sweep_args(tmp.path(), &par, grid, "42,44", 2);
    let workers: Vec<_> = (0..3)
        .map(|_| {
            vapt()
                .args(["--threads", "1"])
                .args(&args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<String> = workers
        .into_iter()
        .map(|w| succeeded(w.wait_with_output().unwrap(), "a worker"))
        .collect();
    let mut all: Vec<usize> = outputs.iter().flat_map(|o| trained(o)).collect();
    all.sort_unstable();
    assert_eq!(all, [0, 1, 2, 3, 4, 5], "each point once:\n{outputs:#?}");
    assert_eq!(json(&seq.join("summary.json")), json(&par.join("summary.json")));
    let status = run_ok(&["sweep".into(), "status".into(), par.display().to_string()]);
    assert!(
        status.contains("6 points — 6 done, 0 running, 0 failed, 0 pending"),
        "{status}"
    );
}

#[test]
fn a_killed_workers_point_is_resumed_by_the_next_worker_and_ends_as_if_never_killed() {
    let tmp = tempfile::tempdir().unwrap();
    vapt_tests::write_tiny_vtab(tmp.path(), 4);
    let (whole, killed) = (tmp.path().join("whole"), tmp.path().join("killed"));
    let epochs = 60;
    run_ok(&sweep_args(tmp.path(), &whole, "4:0", "42", epochs));
    let args = sweep_args(tmp.path(), &killed, "4:0", "42", epochs);
    let mut first = vapt()
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let point = killed.join("grid").join("lr4-wd0");
    let checkpoint = point.join("checkpoint").join("state.safetensors");
    let start = Instant::now();
    while !checkpoint.exists() {
        assert!(first.try_wait().unwrap().is_none(), "the worker ended early");
        assert!(start.elapsed() < Duration::from_secs(120), "no checkpoint");
        std::thread::sleep(Duration::from_millis(5));
    }
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(
        !point.join("result.json").exists(),
        "killed after the point ended"
    );
    let status = run_ok(&["sweep".into(), "status".into(), killed.display().to_string()]);
    assert!(status.contains("1 failed"), "{status}");
    let out = vapt().args(&args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let stdout = succeeded(out, "the second worker");
    assert!(stderr.contains("resuming at epoch"), "{stderr}");
    assert_eq!(trained(&stdout), [0, 1], "{stdout}");
    for dir in ["grid/lr4-wd0", "final/seed42"] {
        assert_eq!(
            run_record(&whole.join(dir)),
            run_record(&killed.join(dir)),
            "{dir}"
        );
    }
    assert_eq!(
        json(&whole.join("summary.json")),
        json(&killed.join("summary.json"))
    );
}

#[test]
fn a_pool_of_cpu_workers_gives_the_sequential_summary() {
    let tmp = tempfile::tempdir().unwrap();
    vapt_tests::write_tiny_vtab(tmp.path(), 4);
    let (seq, pool) = (tmp.path().join("seq"), tmp.path().join("pool"));
    run_ok(&sweep_args(tmp.path(), &seq, "4,0.5:0", "42", 1));
    let mut args = sweep_args(tmp.path(), &pool, "4,0.5:0", "42", 1);
    args.extend(["--devices", "cpu", "--jobs", "2"].map(String::from));
    let out = run_ok(&args);
    assert!(out.contains("2 workers on cpu,cpu (1 threads each)"), "{out}");
    for w in ["[w0 cpu] ", "[w1 cpu] "] {
        assert!(out.contains(w), "no lines from {w}:\n{out}");
    }
    assert_eq!(json(&seq.join("summary.json")), json(&pool.join("summary.json")));
}

#[test]
fn slurm_dry_run_shows_the_scripts_and_bad_input_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    vapt_tests::write_tiny_vtab(tmp.path(), 2);
    let out = tmp.path().join("s");
    let mut args = sweep_args(tmp.path(), &out, "4,0.5:0.001,0", "42,44", 1);
    args.extend(
        [
            "--slurm",
            "--dry-run",
            "--partition",
            "gpu",
            "--gres",
            "gpu:1",
            "--array-parallel",
            "2",
            "--sbatch-arg=--constraint=a100",
        ]
        .map(String::from),
    );
    let text = run_ok(&args);
    for want in [
        "grid.sbatch",
        "#SBATCH --array=0-3%2",
        "#SBATCH --partition=gpu",
        "#SBATCH --gres=gpu:1",
        "#SBATCH --constraint=a100",
        "seeds.sbatch",
        "#SBATCH --array=4-5%2",
        "sweep work",
        "--point $SLURM_ARRAY_TASK_ID",
        "--dependency=afterany:",
    ] {
        assert!(text.contains(want), "missing {want:?}:\n{text}");
    }
    assert!(!out.exists(), "a dry run writes nothing");

    // No sbatch on the PATH.
    let empty = tmp.path().join("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let real: Vec<String> = args.iter().filter(|a| *a != "--dry-run").cloned().collect();
    fails_with(vapt().args(&real).env("PATH", &empty), "sbatch not found on PATH");

    // A folder made by another configuration: refused, with the differences.
    let list = |epochs: &str| {
        let mut a = sweep_args(tmp.path(), &out, "4:0", "42", 1);
        let e = a.iter().position(|x| x == "--epochs").unwrap();
        a[e + 1] = epochs.into();
        a.push("--list".into());
        a
    };
    run_ok(&list("1"));
    let msg = fails_with(vapt().args(list("2")), "another configuration");
    assert!(msg.contains("optim.epochs: 1 → 2"), "{msg}");
    assert!(msg.contains("sweep.json"), "{msg}");
}

/// The Slurm client and a cluster it can reach, or why not.
fn slurm() -> Result<PathBuf, String> {
    let sbatch = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("sbatch"))
        .find(|p| p.is_file())
        .ok_or("no sbatch on PATH (Debian: slurm-client; tests/slurm/start.sh starts a cluster)")?;
    let sinfo = Command::new("sinfo").args(["-h", "-o", "%t"]).output();
    match sinfo {
        Ok(o) if o.status.success() && !o.stdout.is_empty() => Ok(sbatch),
        Ok(o) => Err(format!(
            "no Slurm cluster answers (sinfo: {}); start one with tests/slurm/start.sh",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("sinfo: {e}")),
    }
}

#[test]
fn a_sweep_submitted_to_slurm_gives_the_summary_of_a_local_run() {
    let require = std::env::var("VAPT_REQUIRE_SLURM").is_ok_and(|v| v == "1");
    if let Err(why) = slurm() {
        assert!(!require, "VAPT_REQUIRE_SLURM=1 but {why}");
        println!("skipped: {why}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    vapt_tests::write_tiny_vtab(tmp.path(), 4);
    let (local, cluster) = (tmp.path().join("local"), tmp.path().join("cluster"));
    let grid = "4,0.5:0.001,0";
    run_ok(&sweep_args(tmp.path(), &local, grid, "42,44", 2));

    // sbatch's own message for a partition that does not exist.
    let mut bad = sweep_args(tmp.path(), &tmp.path().join("bad"), grid, "42,44", 2);
    bad.extend(["--slurm", "--partition", "no-such-partition"].map(String::from));
    let msg = fails_with(vapt().args(&bad), "sbatch refused");
    assert!(msg.contains("nvalid partition"), "{msg}");

    let mut args = sweep_args(tmp.path(), &cluster, grid, "42,44", 2);
    args.extend(["--slurm", "--cpus-per-task", "1"].map(String::from));
    let submitted = run_ok(&args);
    assert!(submitted.contains("submitted grid: job "), "{submitted}");
    assert!(submitted.contains("submitted seeds: job "), "{submitted}");
    assert!(submitted.contains(", after job "), "{submitted}");
    let want = json(&local.join("summary.json"));
    let start = Instant::now();
    loop {
        let summary = cluster.join("summary.json");
        if summary.exists() && json(&summary) == want {
            break;
        }
        if start.elapsed() > Duration::from_secs(600) {
            let status = run_ok(&["sweep".into(), "status".into(), cluster.display().to_string()]);
            panic!("the Slurm sweep did not finish in 10 minutes:\n{status}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let log = std::fs::read_to_string(cluster.join("logs").join("point-0.log")).unwrap();
    assert!(log.contains("== point 0: job "), "{log}");
    let status = run_ok(&["sweep".into(), "status".into(), cluster.display().to_string()]);
    assert!(status.contains("6 done"), "{status}");
    // Everything is finished: submitting again submits nothing.
    let again = run_ok(&args);
    assert!(again.contains("nothing to submit"), "{again}");
}
