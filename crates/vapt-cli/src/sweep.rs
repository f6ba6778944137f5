//! `vapt sweep` and `vapt report`: the protocol over one task, and the table over tasks.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::{Args, Subcommand};
use vapt_train::monitor::{self, Monitor};
use vapt_train::report::{find_summaries, Table};
use vapt_train::sweep::{self, Summary, SweepSpec};

use crate::cluster::{self, PoolArgs, SlurmArgs};
use crate::device::{dispatch, DeviceSpec, Job};
use crate::train::RunArgs;

/// `vapt sweep`.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct SweepArgs {
    #[command(subcommand)]
    pub action: Option<SweepAction>,
    #[command(flatten)]
    pub run: RunArgs,
    /// Sweep folder [default: sweeps/<task>/<method>].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Learning rates, comma-separated [default: the paper's grid, 50 … 0.05].
    #[arg(long, value_delimiter = ',')]
    pub lrs: Option<Vec<f64>>,
    /// Weight decays, comma-separated [default: 0.01,0.001,0.0001,0].
    #[arg(long, value_delimiter = ',')]
    pub wds: Option<Vec<f64>>,
    /// `LRS:WDS`, e.g. `--grid 10,1:0.001,0` (same as --lrs and --wds).
    #[arg(long)]
    pub grid: Option<String>,
    /// Final-run seeds, comma-separated [default: 42,44,82,100,800].
    #[arg(long, value_delimiter = ',')]
    pub seeds: Option<Vec<u64>>,
    /// Coordinate mode: wd at lr 5 first, then lr at the best wd (13 cells instead of 40).
    #[arg(long)]
    pub fast: bool,
    /// Run only point N (grid cells first, then final seeds; see --list), e.g. as a job-array
    /// index. Aggregate with `vapt sweep report`.
    #[arg(long)]
    pub point: Option<usize>,
    /// List the points and their state, run nothing.
    #[arg(long)]
    pub list: bool,
    /// Plain progress lines even in a terminal.
    #[arg(long)]
    pub plain: bool,
    #[command(flatten)]
    pub pool: PoolArgs,
    #[command(flatten)]
    pub slurm: SlurmArgs,
}

/// `vapt sweep report | status | work`.
#[derive(Subcommand, Debug)]
pub enum SweepAction {
    /// Aggregate a sweep folder: the grid table, the chosen (lr, wd), final mean ± std; writes
    /// summary.json. Works on what has finished.
    Report {
        /// The sweep folder.
        dir: PathBuf,
    },
    /// Where every point stands: done / running / failed / pending counts, and the failed points
    /// with the last lines of their logs.
    Status {
        /// The sweep folder.
        dir: PathBuf,
        /// Log lines shown per failed point.
        #[arg(long, default_value_t = 10)]
        lines: usize,
    },
    /// One worker on an existing sweep folder (what --slurm and --devices start): trains every
    /// point no other worker holds, or only --point N, on the global --device.
    Work {
        /// The sweep folder (its sweep.json says what to train).
        dir: PathBuf,
        /// Only point N (a job-array task).
        #[arg(long)]
        point: Option<usize>,
        /// Plain progress lines even in a terminal.
        #[arg(long)]
        plain: bool,
    },
}

impl SweepArgs {
    fn spec(&self) -> Result<SweepSpec> {
        let mut base = self.run.resolve()?;
        base.data.train_split = String::new();
        base.data.eval_split = String::new();
        base.optim.lr = 0.0;
        base.optim.wd = 0.0;
        base.seed = 0;
        let mut spec = SweepSpec::paper(base);
        if let Some(g) = &self.grid {
            let (l, w) = g
                .split_once(':')
                .context("--grid: expected `LRS:WDS`, e.g. 10,1:0.001,0")?;
            let parse = |s: &str| -> Result<Vec<f64>> {
                s.split(',')
                    .map(|x| {
                        x.trim()
                            .parse::<f64>()
                            .with_context(|| format!("--grid: `{x}` is not a number"))
                    })
                    .collect()
            };
            spec.lrs = parse(l)?;
            spec.wds = parse(w)?;
        }
        if let Some(l) = &self.lrs {
            spec.lrs = l.clone();
        }
        if let Some(w) = &self.wds {
            spec.wds = w.clone();
        }
        if let Some(s) = &self.seeds {
            spec.seeds = s.clone();
        }
        spec.fast = self.fast;
        if spec.lrs.is_empty() || spec.wds.is_empty() || spec.seeds.is_empty() {
            bail!("the grid and the seed list must not be empty");
        }
        Ok(spec)
    }

    /// `--out`, or `sweeps/<task>/<method>`.
    fn out_dir(&self, spec: &SweepSpec) -> PathBuf {
        self.out.clone().unwrap_or_else(|| {
            PathBuf::from("sweeps")
                .join(&spec.base.data.task)
                .join(spec.base.experts.label())
        })
    }
}

/// `vapt sweep`: a subcommand, a Slurm submission, a pool of workers, or the sweep in this
/// process (which cooperates with any other worker on the same folder).
pub fn run(args: SweepArgs, device: DeviceSpec, threads: Option<usize>) -> Result<()> {
    match args.action {
        Some(SweepAction::Report { dir }) => return sweep_report(&dir),
        Some(SweepAction::Status { dir, lines }) => return cluster::print_status(&dir, lines),
        Some(SweepAction::Work { dir, point, plain }) => {
            return dispatch(
                device,
                cluster::WorkJob {
                    dir,
                    point,
                    plain,
                    device,
                },
            )
        }
        None => {}
    }
    let spec = args.spec()?;
    let out = args.out_dir(&spec);
    if args.list {
        sweep::prepare(&spec, &out)?;
        return cluster::print_status(&out, 0);
    }
    if let Some(point) = args.point {
        sweep::prepare(&spec, &out)?;
        let job = cluster::WorkJob {
            dir: out,
            point: Some(point),
            plain: args.plain,
            device,
        };
        return dispatch(device, job);
    }
    if args.slurm.slurm {
        return cluster::submit_slurm(&spec, &out, &args.slurm, device, threads);
    }
    if let Some(workers) = args.pool.workers(device)? {
        return cluster::run_pool(&spec, &out, &workers, threads);
    }
    dispatch(
        device,
        SweepJob {
            spec,
            out,
            plain: args.plain,
            device,
        },
    )
}

/// Prints a sweep's table.
pub fn sweep_report(dir: &Path) -> Result<()> {
    let spec = sweep::read_spec(dir)?;
    let summary = sweep::write_summary(&spec, dir)?;
    print!("{}", sweep::markdown(&spec, &summary));
    Ok(())
}

/// `vapt sweep` in this process, on a device.
pub struct SweepJob {
    spec: SweepSpec,
    out: PathBuf,
    plain: bool,
    device: DeviceSpec,
}

impl Job for SweepJob {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        let SweepJob {
            spec,
            out,
            plain,
            device: dev,
        } = self;
        let label = dev.to_string();
        let mut on_point = cluster::print_point;
        let mut make = || -> Box<dyn Monitor> { monitor::auto(plain) };
        let summary = sweep::run_all::<B>(&spec, &out, &device, &label, &mut make, &mut on_point)?;
        print!("{}", sweep::markdown(&spec, &summary));
        println!("sweep folder: {}", out.display());
        Ok(())
    }
}

/// `vapt report`.
#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Folders to search for sweep summaries (summary.json, up to 4 levels deep).
    #[arg(default_value = "sweeps")]
    pub roots: Vec<PathBuf>,
    /// Also write the table as CSV to this file.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// Also write one self-contained, offline HTML page (DIR/index.html): the table, every
    /// sweep's lr × wd grid and seeds, the curves of the final runs, the MoE view of one run per
    /// prompt method, and the provenance. Open it in any browser.
    #[arg(long, value_name = "DIR")]
    pub html: Option<PathBuf>,
    /// Images of the evaluation split the MoE views average over (0: no MoE section).
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub moe_images: usize,
}

/// Every finished sweep under `roots`, with its folder.
fn sweeps(roots: &[PathBuf]) -> Result<Vec<(PathBuf, Summary)>> {
    let mut out = Vec::new();
    for root in roots {
        for (file, s) in find_summaries(root)? {
            let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
            out.push((dir, s));
        }
    }
    Ok(out)
}

/// `vapt report` on a device (the MoE views of `--html` run a forward pass).
pub struct ReportJob(pub ReportArgs);

impl Job for ReportJob {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        let args = self.0;
        let found = sweeps(&args.roots)?;
        let summaries: Vec<Summary> = found.iter().map(|(_, s)| s.clone()).collect();
        let table = Table::new(&summaries);
        let roots = args
            .roots
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        if table.rows.is_empty() {
            bail!(
                "no finished sweep under {roots}: run `vapt sweep` (or `vapt sweep report DIR` to refresh a summary)"
            );
        }
        print!("{}", table.markdown());
        if let Some(path) = &args.csv {
            std::fs::write(path, table.csv()).with_context(|| format!("writing {}", path.display()))?;
            println!("CSV: {}", path.display());
        }
        if let Some(out) = &args.html {
            let started = std::time::Instant::now();
            let moe = moe_views::<B::InnerBackend>(&found, args.moe_images, &device)?;
            let title = format!("vapt report: {roots}");
            let report = vapt_train::html::page(&title, &found, &moe)?;
            let path = vapt_train::html::write(out, &report)?;
            println!(
                "HTML: {} ({} sweeps, {} MoE views, {:.1} s)",
                path.display(),
                found.len(),
                moe.len(),
                started.elapsed().as_secs_f64()
            );
        }
        Ok(())
    }
}

/// The MoE view of the first finished final run of each method that has prompt experts.
fn moe_views<B: burn::tensor::backend::Backend>(
    sweeps: &[(PathBuf, Summary)],
    images: usize,
    device: &B::Device,
) -> Result<Vec<vapt_train::html::MoeEntry>> {
    let mut out: Vec<vapt_train::html::MoeEntry> = Vec::new();
    if images == 0 {
        return Ok(out);
    }
    for (dir, s) in sweeps {
        if out.iter().any(|m| m.method == s.method) {
            continue;
        }
        let Some(run) = s
            .seeds
            .iter()
            .map(|seed| vapt_train::sweep::final_dir(dir, *seed))
            .find(|r| r.join(vapt_train::run_dir::RESULT_FILE).is_file())
        else {
            continue;
        };
        let predictor = vapt_train::Predictor::<B>::load(&run, None, device)?;
        let view = predictor.moe_view(images, device)?;
        if view.num_prompts > 0 {
            out.push(vapt_train::html::MoeEntry {
                method: s.method.clone(),
                run,
                view,
            });
        }
    }
    Ok(out)
}
