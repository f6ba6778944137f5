//! `vapt train`: one run, and the run settings every run-level command shares ([`RunArgs`]).

use std::path::PathBuf;

use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use vapt_train::config::{DataFormat, OptimizerKind, TrainConfig};
use vapt_train::monitor;
use vapt_train::run_dir::{ARTIFACT_FILE, CONFIG_FILE};
use vapt_train::{Outcome, RunOptions};

use crate::device::{DeviceSpec, Job};
use crate::experts::ExpertArgs;

fn parse_format(s: &str) -> Result<DataFormat, String> {
    s.parse()
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
    /// Data layout: `vtab` (VTAB-1k lists), `fgvc` (VPT's json) or `folder`
    /// (`<root>/<task>/<split>/<class>/<image>`) [default: vtab].
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
    /// Pre-training of the weights: `supervised`, `mae` or `moco-v3` [default: read off the
    /// file]; for a random backbone, its kind.
    #[arg(long, value_parser = crate::parse_kind)]
    pub backbone_kind: Option<vapt_vit::BackboneKind>,
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
            if f != c.data.format {
                c.data.train_split = f.default_train_split().into();
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
        if self.backbone_kind.is_some() {
            c.backbone.kind = self.backbone_kind;
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
    /// With --resume: accept that the backbone file (`weights`) or the data (`data`) changed
    /// since the run started, e.g. after moving them (their SHA-256 must otherwise match the
    /// checkpoint's). Recorded in result.json.
    #[arg(long, value_delimiter = ',', requires = "resume", value_parser = ["weights", "data"])]
    pub allow_changed: Vec<String>,
    /// Stop (resumably) after this many epochs (at least 1), e.g. to fit a job's time slot.
    #[arg(long, value_name = "EPOCHS", value_parser = clap::value_parser!(u64).range(1..))]
    pub stop_after: Option<u64>,
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
            } else if args.run.resolve().is_err() {
                anyhow::bail!(
                    "{}: nothing to resume here (no {CONFIG_FILE}: the run never got past \
                     loading its weights and data); start it again with its flags, without --resume",
                    out.display()
                );
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
            stop_after: args.stop_after.map(|k| k as usize),
            device_label: spec.to_string(),
            allow_changed: args.allow_changed.clone(),
        };
        let mut m = monitor::auto(args.plain);
        let outcome = vapt_train::train::<B>(&cfg, &opts, &device, m.as_mut());
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
                println!("prompts:    {}", out.join(ARTIFACT_FILE).display());
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
