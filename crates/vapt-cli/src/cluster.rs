//! A sweep past one process: `--slurm` (job arrays), `--devices` / `--jobs` (worker processes
//! on this node), `vapt sweep status` and `vapt sweep work` (the worker every one of them runs).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use vapt_cluster::{pool, slurm};
use vapt_train::monitor::{self, Monitor};
use vapt_train::sweep::{self, PointOutcome, PointState, SweepSpec};

use crate::device::{DeviceSpec, Job};

/// Slurm options of `vapt sweep --slurm` (each becomes an `#SBATCH` line of the job scripts).
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Slurm (with --slurm)")]
pub struct SlurmArgs {
    /// Submit the sweep as Slurm job arrays (one task per point; the seeds as a second array that
    /// starts after the grid) instead of running it here. Scripts and per-point logs go into the
    /// sweep folder; re-running the same command submits only the points not finished or
    /// running. Follow it with `vapt sweep status DIR`.
    #[arg(long)]
    pub slurm: bool,
    /// Print the job scripts and sbatch commands; write and submit nothing.
    #[arg(long, requires = "slurm")]
    pub dry_run: bool,
    /// Slurm partition (`#SBATCH --partition`).
    #[arg(long, requires = "slurm")]
    pub partition: Option<String>,
    /// Slurm account to charge (`--account`).
    #[arg(long, requires = "slurm")]
    pub account: Option<String>,
    /// Quality of service (`--qos`).
    #[arg(long, requires = "slurm")]
    pub qos: Option<String>,
    /// Generic resources per task, e.g. `gpu:1` or `gpu:a100:1` (`--gres`); with `--device cuda`
    /// each task then sees its GPU as cuda:0.
    #[arg(long, requires = "slurm")]
    pub gres: Option<String>,
    /// Time limit per task, e.g. `02:00:00` (`--time`).
    #[arg(long, requires = "slurm")]
    pub time: Option<String>,
    /// CPU cores per task (`--cpus-per-task`); the worker uses that many threads.
    #[arg(long, requires = "slurm")]
    pub cpus_per_task: Option<u32>,
    /// Memory per task, e.g. `32G` (`--mem`).
    #[arg(long, requires = "slurm")]
    pub mem: Option<String>,
    /// At most N tasks of an array at once (`--array=...%N`).
    #[arg(long, requires = "slurm", value_name = "N")]
    pub array_parallel: Option<usize>,
    /// Any other sbatch option, verbatim, repeatable, e.g. `--sbatch-arg=--constraint=a100`.
    #[arg(long, requires = "slurm", value_name = "OPTION", allow_hyphen_values = true)]
    pub sbatch_arg: Vec<String>,
}

/// Worker processes on this node (`--devices`, `--per-device`, `--jobs`).
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Several workers on this node")]
pub struct PoolArgs {
    /// Run points concurrently in worker processes on these devices, comma-separated, e.g.
    /// `cuda:0,cuda:1,cuda:2` or `cpu` (with --jobs).
    #[arg(long, value_delimiter = ',', value_parser = crate::parse_device, conflicts_with = "slurm")]
    pub devices: Option<Vec<DeviceSpec>>,
    /// Worker processes per device in --devices [default: 1].
    #[arg(long, value_name = "N", requires = "devices", conflicts_with = "jobs")]
    pub per_device: Option<usize>,
    /// Worker processes in all, spread over --devices (or on --device), e.g. `--devices cpu
    /// --jobs 2`. Each CPU worker gets an equal share of the cores unless --threads is given.
    #[arg(long, value_name = "N", conflicts_with = "slurm")]
    pub jobs: Option<usize>,
}

impl PoolArgs {
    /// The device of each worker, or `None` when no pool was asked for.
    pub(crate) fn workers(&self, device: DeviceSpec) -> Result<Option<Vec<DeviceSpec>>> {
        let devices = match (&self.devices, self.jobs) {
            (None, None) => return Ok(None),
            (Some(d), _) => d.clone(),
            (None, Some(_)) => vec![device],
        };
        if devices.is_empty() {
            bail!("--devices: name at least one device");
        }
        let n = match (self.per_device, self.jobs) {
            (Some(k), _) => devices.len() * k,
            (None, Some(j)) => j,
            (None, None) => devices.len(),
        };
        if n == 0 {
            bail!("--jobs / --per-device: at least one worker");
        }
        Ok(Some((0..n).map(|i| devices[i % devices.len()]).collect()))
    }
}

fn exe() -> Result<PathBuf> {
    std::env::current_exe().context("cannot find the vapt executable to start workers with")
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("{}: cannot make the path absolute", p.display()))
}

/// The worker command line (`vapt --device D [--threads T] sweep work DIR --plain`) without the
/// program.
fn work_args(out: &Path, device: DeviceSpec, threads: Option<&str>) -> Vec<String> {
    let mut a = vec!["--device".to_string(), device.to_string()];
    if let Some(t) = threads {
        a.extend(["--threads".to_string(), t.to_string()]);
    }
    a.extend(["sweep", "work"].map(String::from));
    a.push(out.display().to_string());
    a.push("--plain".into());
    a
}

/// `--devices` / `--jobs`: worker processes on this node until the sweep is done.
pub fn run_pool(spec: &SweepSpec, out: &Path, devices: &[DeviceSpec], threads: Option<usize>) -> Result<()> {
    sweep::prepare(spec, out)?;
    let out = absolute(out)?;
    let exe = exe()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = threads.unwrap_or((cores / devices.len()).max(1)).to_string();
    let names: Vec<String> = devices.iter().map(|d| d.to_string()).collect();
    let workers = devices
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let mut c = std::process::Command::new(&exe);
            c.args(work_args(&out, *d, Some(&threads)));
            pool::Worker {
                label: format!("w{i} {d}"),
                command: c,
            }
        })
        .collect();
    println!(
        "{} workers on {} ({} threads each) for {}",
        devices.len(),
        names.join(","),
        threads,
        out.display()
    );
    let ends = pool::run(workers, &mut std::io::stdout())?;
    let failed: Vec<String> = ends
        .iter()
        .filter(|e| !e.status.success())
        .map(|e| format!("{} ({})", e.label, e.status))
        .collect();
    let summary = sweep::write_summary(spec, &out)?;
    print!("{}", sweep::markdown(spec, &summary));
    println!("sweep folder: {}", out.display());
    if !failed.is_empty() {
        bail!(
            "workers failed: {}; `vapt sweep status {}` lists the failed points and their logs, \
             and the same command resumes them",
            failed.join(", "),
            out.display()
        );
    }
    Ok(())
}

/// `--slurm`: job scripts into `DIR/slurm/`, submitted stage after stage.
pub fn submit_slurm(
    spec: &SweepSpec,
    out: &Path,
    args: &SlurmArgs,
    device: DeviceSpec,
    threads: Option<usize>,
) -> Result<()> {
    let sbatch = if args.dry_run {
        None
    } else {
        Some(slurm::find_sbatch()?)
    };
    if args.dry_run {
        sweep::check(spec, out)?;
    } else {
        sweep::prepare(spec, out)?;
    }
    let out = absolute(out)?;
    let states = sweep::point_states(spec, &out)?;
    let todo: Vec<usize> = states
        .iter()
        .filter(|s| !s.state.finished() && !matches!(s.state, PointState::Running(_)))
        .map(|s| s.index)
        .collect();
    if todo.is_empty() {
        println!(
            "nothing to submit: every point of {} is finished or running (`vapt sweep status`)",
            out.display()
        );
        return Ok(());
    }
    let threads = match (threads, args.cpus_per_task) {
        (Some(t), _) => Some(t.to_string()),
        (None, Some(_)) => Some("${SLURM_CPUS_PER_TASK}".to_string()),
        (None, None) => None,
    };
    let mut command = vec![exe()?.display().to_string()];
    command.extend(work_args(&out, device, threads.as_deref()));
    command.extend(["--point".into(), "$SLURM_ARRAY_TASK_ID".into()]);
    let opts = slurm::SlurmOptions {
        job_name: format!("vapt-{}-{}", spec.base.data.task, spec.base.experts.label()),
        partition: args.partition.clone(),
        account: args.account.clone(),
        qos: args.qos.clone(),
        gres: args.gres.clone(),
        time: args.time.clone(),
        cpus_per_task: args.cpus_per_task,
        mem: args.mem.clone(),
        array_parallel: args.array_parallel,
        extra: args.sbatch_arg.clone(),
    };
    let workdir = std::env::current_dir().context("the current folder")?;
    let script_dir = out.join("slurm");
    let log_dir = out.join(sweep::LOG_DIR);
    if !args.dry_run {
        for d in [&script_dir, &log_dir] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
    }
    let mut previous: Option<String> = None;
    for (stage, range) in spec.stages() {
        let points: Vec<usize> = todo.iter().copied().filter(|i| range.contains(i)).collect();
        if points.is_empty() {
            continue;
        }
        let job = slurm::ArrayJob {
            stage: stage.to_string(),
            points,
            command: command.clone(),
            workdir: Some(workdir.clone()),
        };
        let script = slurm::render(&opts, &job, &log_dir);
        let path = script_dir.join(format!("{stage}.sbatch"));
        let after: Vec<String> = previous.iter().cloned().collect();
        match &sbatch {
            None => {
                let dep = previous
                    .as_ref()
                    .map(|_| " --dependency=afterany:<job id of the stage above>")
                    .unwrap_or("");
                println!("# {}\n{script}", path.display());
                println!("# submitted with: sbatch --parsable{dep} {}\n", path.display());
                previous = Some(stage.to_string());
            }
            Some(sbatch) => {
                std::fs::write(&path, &script).with_context(|| format!("writing {}", path.display()))?;
                let id = slurm::submit(sbatch, &path, &after)?;
                println!(
                    "submitted {stage}: job {id}, array {}{}",
                    slurm::array_spec(&job.points, None),
                    previous
                        .as_ref()
                        .map(|p| format!(", after job {p}"))
                        .unwrap_or_default()
                );
                previous = Some(id);
            }
        }
    }
    if sbatch.is_some() {
        println!(
            "logs: {}/point-N.log · follow it: vapt sweep status {} · table: vapt sweep report {}",
            log_dir.display(),
            out.display(),
            out.display()
        );
    }
    Ok(())
}

/// Prints the state of every point and the counts; failed points get the last `lines` lines of
/// their logs.
pub fn print_status(dir: &Path, lines: usize) -> Result<()> {
    let spec = sweep::read_spec(dir)?;
    let states = sweep::point_states(&spec, dir)?;
    let count = |w: &[&str]| states.iter().filter(|s| w.contains(&s.state.word())).count();
    for s in &states {
        let state = match &s.state {
            PointState::Done(v) => format!("done, {v:.2}%"),
            PointState::Running(who) => format!("running ({who})"),
            other => other.word().to_string(),
        };
        println!("{:>4}  {:<30} {state}", s.index, s.point.describe());
    }
    println!(
        "{}: {} points — {} done, {} running, {} failed, {} pending",
        dir.display(),
        states.len(),
        count(&["done", "diverged"]),
        count(&["running"]),
        count(&["failed"]),
        count(&["pending", "waiting"]),
    );
    let failed: Vec<_> = states.iter().filter(|s| s.state == PointState::Failed).collect();
    if !failed.is_empty() {
        println!(
            "\nfailed points (started, not finished, no worker on them; running them again \
             resumes from their checkpoints — the same `vapt sweep` command, or \
             `vapt sweep work {} --point N`):",
            dir.display()
        );
    }
    for s in failed {
        match &s.log {
            Some(log) => {
                println!("  point {} ({}), {}:", s.index, s.point.describe(), log.display());
                for l in sweep::tail(log, lines) {
                    println!("    | {l}");
                }
            }
            None => println!("  point {} ({}), no log", s.index, s.point.describe()),
        }
    }
    Ok(())
}

/// One line per point as a worker ends it: `point 3 (grid lr 0.5 wd 0): Trained`.
pub fn print_point(i: usize, p: sweep::Point, o: &PointOutcome) {
    match o {
        PointOutcome::Busy(who) => println!(
            "point {i} ({}): {who} is training it; nothing to do here",
            p.describe()
        ),
        o => println!("point {i} ({}): {o:?}", p.describe()),
    }
}

/// `vapt sweep work DIR`: one worker on a sweep folder (what `--slurm` and `--devices` run).
pub struct WorkJob {
    /// The sweep folder.
    pub dir: PathBuf,
    /// Only this point.
    pub point: Option<usize>,
    /// Plain progress lines.
    pub plain: bool,
    /// The device, for the run folders.
    pub device: DeviceSpec,
}

impl Job for WorkJob {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        let spec = sweep::read_spec(&self.dir)?;
        let label = self.device.to_string();
        let plain = self.plain;
        let mut on_point = print_point;
        if let Some(n) = self.point {
            let mut m = monitor::auto(plain);
            let (p, o) = sweep::run_point::<B>(&spec, &self.dir, n, &device, &label, m.as_mut())?;
            drop(m);
            on_point(n, p, &o);
            sweep::write_summary(&spec, &self.dir)?;
            return Ok(());
        }
        let mut make = || -> Box<dyn Monitor> { monitor::auto(plain) };
        sweep::work::<B>(
            &spec,
            &self.dir,
            &device,
            &label,
            &mut make,
            &mut on_point,
            std::time::Duration::from_secs(1),
        )?;
        Ok(())
    }
}
