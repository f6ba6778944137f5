//! `vapt train`, `eval`, `predict`, `sweep`, `report`: the run-level commands.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::tensor::activation::softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use clap::{Args, Subcommand};
use vapt_data::{images, ImageSet};
use vapt_experts::artifact::read_header;
use vapt_experts::{load_artifact, PromptedVit};
use vapt_train::config::{DataConfig, DataFormat, OptimizerKind, TrainConfig};
use vapt_train::monitor::{self, Monitor};
use vapt_train::report::{find_summaries, Table};
use vapt_train::run::{self, evaluate, load_backbone, transform_for, Task, CONFIG_FILE};
use vapt_train::sweep::{self, PointOutcome, SweepSpec};
use vapt_train::{Outcome, RunOptions, RunStatus};

use crate::device::{DeviceSpec, Job};
use crate::experts::ExpertArgs;

fn parse_format(s: &str) -> Result<DataFormat, String> {
    match s.to_ascii_lowercase().as_str() {
        "vtab" => Ok(DataFormat::Vtab),
        "fgvc" => Ok(DataFormat::Fgvc),
        _ => Err(format!("unknown data format `{s}`: expected vtab or fgvc")),
    }
}

fn parse_optimizer(s: &str) -> Result<OptimizerKind, String> {
    s.parse()
}

/// The settings of a run. Every flag is optional: unset ones keep the value from `--config`,
/// or vapt's defaults (the paper's protocol: SGD, 100 epochs, warm-up 10, batch 64).
#[derive(Args, Debug, Clone, Default)]
pub struct RunArgs {
    /// A TOML or JSON file with any of the settings below (see docs/config.md); flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Folder holding the task folders (VTAB `<root>/<task>/train800.txt ...`, FGVC
    /// `<root>/<dataset>/train.json ...`) [default: datasets].
    #[arg(long, value_name = "DIR")]
    pub data_root: Option<PathBuf>,
    /// VTAB task (`cifar`, `dtd`, ..., `fashion-mnist-1k`) or FGVC dataset (`CUB_200_2011`, ...)
    /// [default: fashion-mnist-1k].
    #[arg(long)]
    pub task: Option<String>,
    /// Data layout: `vtab` or `fgvc` [default: vtab].
    #[arg(long, value_parser = parse_format)]
    pub format: Option<DataFormat>,
    /// Training split [default: train800val200; FGVC: train].
    #[arg(long)]
    pub train_split: Option<String>,
    /// Split scored after the last epoch [default: test].
    #[arg(long)]
    pub eval_split: Option<String>,
    /// Pre-trained backbone: Google npz, timm or vapt safetensors. Without it the backbone is
    /// random (tests, benchmarks) and --variant is required.
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,
    /// Architecture: `auto` (from the weights), `B/16`, ... or `D768-L12-H12-M3072-P16`.
    #[arg(long)]
    pub variant: Option<String>,
    /// Input side in pixels [default: the checkpoint's].
    #[arg(long)]
    pub image_size: Option<usize>,
    #[command(flatten)]
    pub experts: ExpertArgs,
    /// Optimiser: `sgd` (the paper's) or `adamw` (for --method full) [default: sgd].
    #[arg(long, value_parser = parse_optimizer)]
    pub optimizer: Option<OptimizerKind>,
    /// Epochs [default: 100].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Linear warm-up epochs; epoch 0 trains at lr 0 [default: 10].
    #[arg(long)]
    pub warmup: Option<usize>,
    /// Batch size [default: 64].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Base learning rate (the paper's grid value); the peak lr is lr × batch / 256
    /// [default: 10].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Weight decay: coupled L2 on every trainable tensor but the head bias [default: 0.001].
    #[arg(long)]
    pub wd: Option<f64>,
    /// Seed of initialisation, shuffling, dropout and augmentation [default: 42].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Also evaluate every N epochs (0: only after the last) [default: 0].
    #[arg(long)]
    pub eval_every: Option<usize>,
}

impl RunArgs {
    /// The configuration: `--config` (or defaults), then the flags.
    pub fn resolve(&self) -> Result<TrainConfig> {
        let mut c = match &self.config {
            Some(p) => TrainConfig::from_file(p)?,
            None => TrainConfig::default(),
        };
        macro_rules! set {
            ($field:expr, $flag:expr) => {
                if let Some(v) = $flag.clone() {
                    $field = v;
                }
            };
        }
        set!(c.data.root, self.data_root);
        set!(c.data.task, self.task);
        if let Some(f) = self.format {
            if f == DataFormat::Fgvc && c.data.format != DataFormat::Fgvc {
                c.data.train_split = "train".into();
            }
            c.data.format = f;
        }
        set!(c.data.train_split, self.train_split);
        set!(c.data.eval_split, self.eval_split);
        if self.weights.is_some() {
            c.backbone.weights = self.weights.clone();
        }
        set!(c.backbone.variant, self.variant);
        if self.image_size.is_some() {
            c.backbone.image_size = self.image_size;
        }
        self.experts.apply(&mut c.experts);
        set!(c.optim.optimizer, self.optimizer);
        set!(c.optim.epochs, self.epochs);
        set!(c.optim.warmup, self.warmup);
        set!(c.optim.batch_size, self.batch_size);
        set!(c.optim.lr, self.lr);
        set!(c.optim.wd, self.wd);
        set!(c.seed, self.seed);
        set!(c.eval_every, self.eval_every);
        c.validate(match &self.config {
            Some(p) => p.to_str().unwrap_or("--config"),
            None => "flags",
        })?;
        Ok(c)
    }
}

/// `vapt train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Run folder [default: runs/<task>/<method>-lr<lr>-wd<wd>-seed<seed>]. A finished run there
    /// is never overwritten.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Continue the unfinished run in --out from its last checkpoint. Without other settings it
    /// uses the run's own config.json; settings that differ from it are refused.
    #[arg(long)]
    pub resume: bool,
    /// Stop (resumably) after this many epochs, e.g. to fit a job's time slot.
    #[arg(long, value_name = "EPOCHS")]
    pub stop_after: Option<usize>,
    /// Plain progress lines even in a terminal (no dashboard).
    #[arg(long)]
    pub plain: bool,
}

/// A run on the chosen device.
pub struct TrainJob(pub TrainArgs, pub DeviceSpec);

impl Job for TrainJob {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        let TrainJob(mut args, spec) = self;
        // `--resume --out DIR` alone continues with the run's own configuration.
        if let (true, None, Some(out)) = (args.resume, &args.run.config, &args.out) {
            let saved = out.join(CONFIG_FILE);
            if saved.is_file() {
                args.run.config = Some(saved);
            }
        }
        let cfg = args.run.resolve()?;
        let out = args
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("runs").join(cfg.label()));
        let opts = RunOptions {
            out: out.clone(),
            resume: args.resume,
            stop_after: args.stop_after,
            device_label: spec.to_string(),
        };
        let mut m = monitor::auto(args.plain);
        let outcome = run::train::<B>(&cfg, &opts, &device, m.as_mut());
        drop(m);
        match outcome? {
            Outcome::Finished(r) => {
                println!(
                    "{} top-1 {:.2}% ({} split, last epoch) — trainable {} of {} parameters, {:.0} s",
                    r.task,
                    r.eval_top1,
                    r.eval_split,
                    vapt_experts::params::group(r.trainable_params),
                    vapt_experts::params::group(r.total_params),
                    r.wall_seconds
                );
                println!("run folder: {}", out.display());
                println!("prompts:    {}", out.join(run::ARTIFACT_FILE).display());
            }
            Outcome::Stopped(k) => {
                println!(
                    "stopped after {k} epochs; continue with: vapt train --out {} --resume",
                    out.display()
                );
            }
        }
        Ok(())
    }
}

/// Where `eval`, `predict` and `analyze` get a trained model from.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A run folder (its config.json and prompts.safetensors) or a prompts artifact file.
    pub model: PathBuf,
    /// Backbone weights (needed with an artifact file; overrides the run's).
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,
}

/// A loaded prompted model and what it was trained with.
pub struct Loaded<B: Backend> {
    /// The model.
    pub model: PromptedVit<B>,
    /// The run configuration (from the run folder, or defaults + the artifact's settings).
    pub cfg: TrainConfig,
    /// The backbone's preprocessing.
    pub pre: vapt_vit::PretrainedCfg,
}

impl<B: Backend> Loaded<B> {
    /// Split `data.eval_split` of `data`'s task (only that split is read), preprocessed as the
    /// model was evaluated.
    fn eval_set(&self, data: &DataConfig) -> Result<ImageSet> {
        let split = Task::open(data)?.split(&data.eval_split)?;
        let size = self.model.backbone.config.image_size;
        Ok(ImageSet::new(
            split,
            transform_for(data.format, false, &self.pre, size),
            0,
        ))
    }
}

/// Loads a run folder or an artifact with its backbone.
pub fn load_model<B: Backend>(args: &ModelArgs, device: &B::Device) -> Result<Loaded<B>> {
    let (mut cfg, artifact) = if args.model.is_dir() {
        let path = args.model.join(CONFIG_FILE);
        let cfg = TrainConfig::from_file(&path)?;
        (cfg, args.model.join(run::ARTIFACT_FILE))
    } else {
        (TrainConfig::default(), args.model.clone())
    };
    if !artifact.is_file() {
        bail!(
            "{}: no prompts artifact (is the run finished? `result.json` is written with it)",
            artifact.display()
        );
    }
    let (header, _) = read_header(&artifact)?;
    if args.weights.is_some() {
        cfg.backbone.weights = args.weights.clone();
    }
    if cfg.backbone.weights.is_none() && !args.model.is_dir() {
        if let Some(sha) = &header.backbone_sha256 {
            bail!(
                "{}: these prompts were trained on a backbone with SHA-256 {sha}; pass it with --weights",
                artifact.display()
            );
        }
        // Trained on a random backbone (tests, benchmarks): re-create one of the artifact's shape.
        cfg.backbone.variant = format!(
            "D{}-L{}-H{}-M{}-P{}",
            header.backbone.hidden,
            header.backbone.depth,
            header.backbone.heads,
            header.backbone.mlp_dim,
            header.backbone.patch_size
        );
        cfg.backbone.image_size = Some(header.backbone.image_size);
    }
    cfg.experts = header.prompt.clone();
    // A random backbone is re-created from the run's seed, as training created it.
    B::seed(device, cfg.seed);
    let (backbone, pre) = load_backbone::<B>(&cfg.backbone, device)?;
    let model = load_artifact(&artifact, backbone, pre.sha256.as_deref(), device)?;
    Ok(Loaded { model, cfg, pre })
}

/// `vapt eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Folder holding the task folders [default: the run's].
    #[arg(long, value_name = "DIR")]
    pub data_root: Option<PathBuf>,
    /// Task [default: the run's].
    #[arg(long)]
    pub task: Option<String>,
    /// Split to score [default: the run's eval split].
    #[arg(long)]
    pub split: Option<String>,
    /// Batch size.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `vapt eval` on a device.
pub struct EvalJob(pub EvalArgs);

impl Job for EvalJob {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        let args = self.0;
        let loaded = load_model::<B::InnerBackend>(&args.model, &device)?;
        let mut data = loaded.cfg.data.clone();
        if let Some(r) = &args.data_root {
            data.root = r.clone();
        }
        if let Some(t) = &args.task {
            data.task = t.clone();
        }
        if let Some(s) = &args.split {
            data.eval_split = s.clone();
        }
        let set = loaded.eval_set(&data)?;
        let name = set.split.name.clone();
        set.preload()?;
        let (loss, top1) = evaluate(&loaded.model, &set, args.batch_size, &device, |_, _| {})?;
        if args.json {
            println!(
                "{}",
                serde_json::json!({"task": data.task, "split": name, "images": set.len(), "loss": loss, "top1": top1})
            );
        } else {
            println!(
                "{} {name}: top-1 {top1:.2}%  loss {loss:.4}  ({} images)",
                data.task,
                set.len()
            );
        }
        Ok(())
    }
}

/// `vapt predict`.
#[derive(Args, Debug)]
pub struct PredictArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Images to classify (PNG or JPEG).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// How many classes to print per image.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    /// Print JSON lines.
    #[arg(long)]
    pub json: bool,
}

/// `vapt predict` on a device.
pub struct PredictJob(pub PredictArgs);

impl Job for PredictJob {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        let args = self.0;
        let loaded = load_model::<B::InnerBackend>(&args.model, &device)?;
        let size = loaded.model.backbone.config.image_size;
        let t = transform_for(loaded.cfg.data.format, false, &loaded.pre, size);
        for path in &args.images {
            let img = images::decode(path)?;
            let pixels = t.apply(&img, &mut vapt_data::transform::SplitMix64(0));
            let x =
                Tensor::<B::InnerBackend, 4>::from_data(TensorData::new(pixels, [1, 3, size, size]), &device);
            let probs = softmax(loaded.model.forward(x), 1);
            let v: Vec<f32> = probs.into_data().convert::<f32>().into_vec().unwrap_or_default();
            let mut idx: Vec<usize> = (0..v.len()).collect();
            idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]));
            idx.truncate(args.top);
            if args.json {
                let top: Vec<_> = idx
                    .iter()
                    .map(|&i| serde_json::json!({"class": i, "p": v[i]}))
                    .collect();
                println!("{}", serde_json::json!({"image": path, "top": top}));
            } else {
                let top: Vec<String> = idx
                    .iter()
                    .map(|&i| format!("{i} ({:.1}%)", 100.0 * v[i]))
                    .collect();
                println!("{}: {}", path.display(), top.join(", "));
            }
        }
        Ok(())
    }
}

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
                let state = match run::read_result(&dir)? {
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

/// `vapt analyze`.
#[derive(Args, Debug)]
pub struct AnalyzeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Images (from the run's evaluation split) to average over.
    #[arg(long, default_value_t = 32)]
    pub images: usize,
    /// Write the heatmap (rows = blocks, columns = heads, colour = prompt gate mass of the CLS
    /// query) to this PNG.
    #[arg(long, value_name = "PNG")]
    pub png: Option<PathBuf>,
    /// Print JSON (the full per-block, per-head view) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `vapt analyze` on a device.
pub struct AnalyzeJob(pub AnalyzeArgs);

impl Job for AnalyzeJob {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        let args = self.0;
        let loaded = load_model::<B::InnerBackend>(&args.model, &device)?;
        let set = loaded.eval_set(&loaded.cfg.data)?;
        let size = loaded.model.backbone.config.image_size;
        let n = args.images.min(set.len()).max(1);
        let idx: Vec<usize> = (0..n).collect();
        let items = set.items(&idx)?;
        let batch = images::make_batch::<B::InnerBackend>(&items, size, &device);
        let view = loaded.model.moe_view(batch.images);
        if args.json {
            println!("{}", serde_json::to_string_pretty(&view)?);
        } else {
            print!("{}", crate::analyze::table(&view));
        }
        if let Some(png) = &args.png {
            crate::analyze::heatmap(&view, png)?;
            println!("heatmap: {}", png.display());
        }
        Ok(())
    }
}
