//! `vapt sweep` and `vapt report`: the protocol over one task, and the table over tasks.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::{Args, Subcommand};
use vapt_train::monitor::{self, Monitor};
use vapt_train::report::{find_summaries, Table};
use vapt_train::run_dir::{self, CONFIG_FILE};
use vapt_train::sweep::{self, PointOutcome, SweepSpec};
use vapt_train::RunStatus;

use crate::device::{DeviceSpec, Job};
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
}

/// `vapt sweep report`.
#[derive(Subcommand, Debug)]
pub enum SweepAction {
    /// Aggregate a sweep folder: the grid table, the chosen (lr, wd), final mean ± std; writes
    /// summary.json.
    Report {
        /// The sweep folder.
        dir: PathBuf,
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
}

/// Prints a sweep's table.
pub fn sweep_report(dir: &Path) -> Result<()> {
    let spec = sweep::read_spec(dir)?;
    let summary = sweep::write_summary(&spec, dir)?;
    print!("{}", sweep::markdown(&spec, &summary));
    Ok(())
}

/// `vapt sweep` on a device.
pub struct SweepJob(pub SweepArgs, pub DeviceSpec);

impl Job for SweepJob {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        let SweepJob(args, dev) = self;
        let spec = args.spec()?;
        let out = args.out.clone().unwrap_or_else(|| {
            PathBuf::from("sweeps")
                .join(&spec.base.data.task)
                .join(spec.base.experts.method.name())
        });
        sweep::prepare(&spec, &out)?;
        if args.list {
            let (pts, complete) = sweep::points(&spec, &out)?;
            for (i, p) in pts.iter().enumerate() {
                let (name, dir) = match p {
                    sweep::Point::Grid { lr, wd } => {
                        (format!("grid lr {lr} wd {wd}"), sweep::grid_dir(&out, *lr, *wd))
                    }
                    sweep::Point::Final { seed } => {
                        (format!("final seed {seed}"), sweep::final_dir(&out, *seed))
                    }
                };
                let state = match run_dir::read_result(&dir)? {
                    Some(r) if r.status == RunStatus::Ok => format!("done, {:.2}%", r.eval_top1),
                    Some(_) => "diverged".into(),
                    None if dir.join(CONFIG_FILE).exists() => "started".into(),
                    None => "pending".into(),
                };
                println!("{i:>3}  {name:<28} {state}");
            }
            if !complete {
                println!("(fast mode: the lr stage is listed once the wd stage is done)");
            }
            return Ok(());
        }
        let label = dev.to_string();
        let plain = args.plain;
        let mut on_point = |i: usize, p: sweep::Point, o: &PointOutcome| {
            println!("point {i} {p:?}: {o:?}");
        };
        if let Some(n) = args.point {
            let mut m = monitor::auto(plain);
            let (p, o) = sweep::run_point::<B>(&spec, &out, n, &device, &label, m.as_mut())?;
            drop(m);
            on_point(n, p, &o);
            sweep::write_summary(&spec, &out)?;
            return Ok(());
        }
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
}

/// Prints the paper-layout table over every finished sweep found.
pub fn report(args: &ReportArgs) -> Result<()> {
    let mut summaries = Vec::new();
    for root in &args.roots {
        for (_, s) in find_summaries(root)? {
            summaries.push(s);
        }
    }
    let table = Table::new(&summaries);
    if table.rows.is_empty() {
        bail!(
            "no finished sweep under {}: run `vapt sweep` (or `vapt sweep report DIR` to refresh a summary)",
            args.roots
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    print!("{}", table.markdown());
    if let Some(path) = &args.csv {
        std::fs::write(path, table.csv()).with_context(|| format!("writing {}", path.display()))?;
        println!("CSV: {}", path.display());
    }
    Ok(())
}
