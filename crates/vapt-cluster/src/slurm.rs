//! Slurm job arrays: one array task per sweep point, `--array` listing only the points still to
//! run, logs in the sweep folder (`logs/point-<N>.log`, one file per point), and stages chained
//! with `--dependency=afterany:<job>` — the later stage checks for itself that the earlier one
//! finished, so a re-submission after failed points (which submits only those) works the same.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::ClusterError;

/// The `#SBATCH` options every array of a sweep gets (the ones vapt names, then the user's own).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SlurmOptions {
    /// Job name prefix (`<name>-<stage>`).
    pub job_name: String,
    /// `--partition`.
    pub partition: Option<String>,
    /// `--account`.
    pub account: Option<String>,
    /// `--qos`.
    pub qos: Option<String>,
    /// `--gres`, e.g. `gpu:1` or `gpu:a100:1`.
    pub gres: Option<String>,
    /// `--time`, e.g. `04:00:00`.
    pub time: Option<String>,
    /// `--cpus-per-task`; the worker then uses that many threads.
    pub cpus_per_task: Option<u32>,
    /// `--mem`, e.g. `32G`.
    pub mem: Option<String>,
    /// At most this many tasks of an array at once (`--array=...%N`).
    pub array_parallel: Option<usize>,
    /// Anything else, one `#SBATCH` option each, e.g. `--constraint=a100`.
    pub extra: Vec<String>,
}

/// One stage of a sweep as one job array.
#[derive(Debug, Clone, PartialEq)]
pub struct ArrayJob {
    /// Stage name, e.g. `grid` or `seeds`: the script is `<stage>.sbatch`.
    pub stage: String,
    /// The point numbers to run (array indices).
    pub points: Vec<usize>,
    /// The worker command; `$SLURM_ARRAY_TASK_ID` is the point number.
    pub command: Vec<String>,
    /// The folder the tasks run in (`--chdir`; relative paths in the sweep's configuration are
    /// relative to it).
    pub workdir: Option<PathBuf>,
}

/// `--array` value for `points`: ranges joined by commas, `%N` for the parallel limit.
pub fn array_spec(points: &[usize], parallel: Option<usize>) -> String {
    let mut sorted = points.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    let mut s = parts.join(",");
    if let Some(n) = parallel {
        let _ = write!(s, "%{n}");
    }
    s
}

/// A word for a POSIX shell: as is when it is plainly safe, else single-quoted.
pub fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,%+@".contains(c));
    if plain || s == "$SLURM_ARRAY_TASK_ID" || s == "${SLURM_CPUS_PER_TASK}" {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The job script of `job`: `#SBATCH` lines (name, array, one log per point in `log_dir`, the
/// options), then the worker command.
pub fn render(opts: &SlurmOptions, job: &ArrayJob, log_dir: &Path) -> String {
    let mut s = String::from("#!/bin/bash\n");
    let _ = writeln!(
        s,
        "# Written by vapt: one array task per sweep point ($SLURM_ARRAY_TASK_ID is the point)."
    );
    let mut line = |k: &str, v: &str| {
        let _ = writeln!(s, "#SBATCH --{k}={v}");
    };
    line("job-name", &format!("{}-{}", opts.job_name, job.stage));
    line("array", &array_spec(&job.points, opts.array_parallel));
    line("output", &format!("{}/point-%a.log", log_dir.display()));
    line("open-mode", "append");
    if let Some(d) = &job.workdir {
        line("chdir", &d.display().to_string());
    }
    for (k, v) in [
        ("partition", &opts.partition),
        ("account", &opts.account),
        ("qos", &opts.qos),
        ("gres", &opts.gres),
        ("time", &opts.time),
        ("mem", &opts.mem),
    ] {
        if let Some(v) = v {
            line(k, v);
        }
    }
    if let Some(n) = opts.cpus_per_task {
        line("cpus-per-task", &n.to_string());
    }
    for e in &opts.extra {
        let _ = writeln!(s, "#SBATCH {e}");
    }
    let _ = writeln!(s, "set -euo pipefail");
    let _ = writeln!(
        s,
        "echo \"== point $SLURM_ARRAY_TASK_ID: job $SLURM_JOB_ID on $(hostname) at $(date -Is)\""
    );
    let words: Vec<String> = job.command.iter().map(|w| shell_word(w)).collect();
    let _ = writeln!(s, "exec {}", words.join(" "));
    s
}

/// The `sbatch` on PATH.
pub fn find_sbatch() -> Result<PathBuf, ClusterError> {
    find_program("sbatch").ok_or(ClusterError::NoSbatch)
}

/// A program on PATH.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The `sbatch` command line that submits `script` after `after` (job ids).
pub fn sbatch_args(script: &Path, after: &[String]) -> Vec<String> {
    let mut args = vec!["--parsable".to_string()];
    if !after.is_empty() {
        args.push(format!("--dependency=afterany:{}", after.join(":")));
    }
    args.push(script.display().to_string());
    args
}

/// Submits `script` with `sbatch` (after the jobs `after`), returning the job id. sbatch's own
/// message comes back in the error when it refuses (unknown partition, bad option, ...).
pub fn submit(sbatch: &Path, script: &Path, after: &[String]) -> Result<String, ClusterError> {
    let out = Command::new(sbatch)
        .args(sbatch_args(script, after))
        .output()
        .map_err(|e| ClusterError::io(sbatch, e))?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() {
        return Err(ClusterError::Sbatch {
            script: script.to_path_buf(),
            status: out
                .status
                .code()
                .map_or_else(|| "signal".into(), |c| c.to_string()),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    // `--parsable` prints `<id>` or `<id>;<cluster>`.
    let id = stdout.split(';').next().unwrap_or_default().trim();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        return Err(ClusterError::NoJobId {
            script: script.to_path_buf(),
            stdout,
        });
    }
    Ok(id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_specs_compress_ranges_and_carry_the_limit() {
        assert_eq!(array_spec(&[0, 1, 2, 3], None), "0-3");
        assert_eq!(array_spec(&[7, 0, 1, 3, 5, 6], Some(2)), "0-1,3,5-7%2");
        assert_eq!(array_spec(&[4], None), "4");
    }

    #[test]
    fn words_are_quoted_only_when_needed() {
        assert_eq!(shell_word("/opt/vapt/bin/vapt"), "/opt/vapt/bin/vapt");
        assert_eq!(shell_word("$SLURM_ARRAY_TASK_ID"), "$SLURM_ARRAY_TASK_ID");
        assert_eq!(shell_word("my sweeps/it's"), r"'my sweeps/it'\''s'");
        assert_eq!(shell_word(""), "''");
    }

    #[test]
    fn a_script_has_the_array_logs_options_and_command() {
        let opts = SlurmOptions {
            job_name: "vapt-dtd-vapt".into(),
            partition: Some("gpu".into()),
            gres: Some("gpu:1".into()),
            cpus_per_task: Some(8),
            array_parallel: Some(4),
            extra: vec!["--constraint=a100".into()],
            ..Default::default()
        };
        let job = ArrayJob {
            stage: "grid".into(),
            points: (0..40).collect(),
            command: vec![
                "/bin/vapt".into(),
                "sweep".into(),
                "work".into(),
                "/s/dtd".into(),
                "--point".into(),
                "$SLURM_ARRAY_TASK_ID".into(),
            ],
            workdir: Some("/home/me".into()),
        };
        let s = render(&opts, &job, Path::new("/s/dtd/logs"));
        for want in [
            "#SBATCH --job-name=vapt-dtd-vapt-grid\n",
            "#SBATCH --array=0-39%4\n",
            "#SBATCH --output=/s/dtd/logs/point-%a.log\n",
            "#SBATCH --partition=gpu\n",
            "#SBATCH --gres=gpu:1\n",
            "#SBATCH --cpus-per-task=8\n",
            "#SBATCH --chdir=/home/me\n",
            "#SBATCH --constraint=a100\n",
            "exec /bin/vapt sweep work /s/dtd --point $SLURM_ARRAY_TASK_ID\n",
        ] {
            assert!(s.contains(want), "missing {want:?} in\n{s}");
        }
        assert!(!s.contains("--account"), "{s}");
    }

    #[test]
    fn dependencies_go_on_the_sbatch_line() {
        let a = sbatch_args(Path::new("seeds.sbatch"), &["17".into()]);
        assert_eq!(a, ["--parsable", "--dependency=afterany:17", "seeds.sbatch"]);
        assert_eq!(sbatch_args(Path::new("g"), &[]), ["--parsable", "g"]);
    }

    /// Writes an executable script and waits until it can be run. Another test of this process may
    /// fork (to spawn its own children) while the file is open for writing; the child holds a copy
    /// of that descriptor until it execs, and running the script meanwhile fails with ETXTBSY
    /// ("Text file busy"), so the first runs are retried for a while.
    #[cfg(unix)]
    fn executable(path: &Path, body: &str) {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(path)
            .unwrap();
        std::io::Write::write_all(&mut f, body.as_bytes()).unwrap();
        drop(f);
        for _ in 0..500 {
            match Command::new(path).output() {
                Err(e) if e.raw_os_error() == Some(26) => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                _ => return,
            }
        }
        panic!("{} stayed busy for 5 s", path.display());
    }

    #[cfg(unix)]
    #[test]
    fn a_refusing_sbatch_is_an_error_with_its_message() {
        let tmp = tempfile::tempdir().unwrap();
        let fake = tmp.path().join("sbatch");
        executable(
            &fake,
            "#!/bin/sh\necho 'sbatch: error: invalid partition specified: nope' >&2\nexit 1\n",
        );
        let ok = tmp.path().join("sbatch-ok");
        executable(&ok, "#!/bin/sh\necho '4242;vapt'\n");
        let e = submit(&fake, Path::new("grid.sbatch"), &[]).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("invalid partition specified: nope"), "{msg}");
        assert!(msg.contains("grid.sbatch"), "{msg}");
        assert_eq!(submit(&ok, Path::new("g"), &[]).unwrap(), "4242");
    }
}
