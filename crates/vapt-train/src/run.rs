//! One training run: data → backbone → prompt experts → the epoch loop → run folder.
//!
//! The run folder (`--out`) receives, in order: `config.json` (the full configuration, before any
//! work), `metrics.jsonl` + `metrics.csv` (one row per epoch, rewritten atomically after each
//! epoch), `checkpoint/` (trainable tensors + optimiser state, atomic, every epoch), and at the
//! end `prompts.safetensors` (the prompt-only artifact) and `result.json`. A folder with a
//! `result.json` is never written to again.
//!
//! Determinism: the model is initialised from the seed; epoch `e` shuffles with (seed, e) and
//! reseeds the backend RNG (dropout) with (seed, e), so a run killed after epoch k and resumed
//! ends with the same metrics, bit for bit, as an uninterrupted one (same device and threads).

use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use vapt_data::fgvc::{self, Fgvc};
use vapt_data::transform::SplitMix64;
use vapt_data::vtab;
use vapt_data::{images::make_batch, ImageItem, ImageSet, Split, Transform};
use vapt_experts::{cross_entropy, save_artifact, Method, PromptedVit};
use vapt_vit::{load_pretrained, LoadOptions, PosEmbResample, PretrainedCfg, Vit};

use crate::checkpoint::{self, write_atomic, CheckpointMeta};
use crate::config::{BackboneConfig, DataConfig, DataFormat, OptimizerKind, TrainConfig};
use crate::error::TrainError;
use crate::monitor::{Monitor, RunHeader, StepInfo};
use crate::protocol::{gradients, sgd};

/// The prompt-only artifact written at the end of a run.
pub const ARTIFACT_FILE: &str = "prompts.safetensors";
/// The fine-tuned backbone, written at the end of a `full` run.
pub const BACKBONE_FILE: &str = "backbone.safetensors";
/// The final record of a run.
pub const RESULT_FILE: &str = "result.json";
/// The configuration, written first.
pub const CONFIG_FILE: &str = "config.json";

/// How to run (not part of the configuration: it does not change the result).
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The run folder.
    pub out: PathBuf,
    /// Continue an unfinished run in `out` from its last checkpoint.
    pub resume: bool,
    /// Stop (resumably) once this many epochs are complete; for splitting a run across job slots.
    pub stop_after: Option<usize>,
    /// A name of the device for the record (`cpu`, `cuda:0`, ...).
    pub device_label: String,
}

/// One row of `metrics.jsonl` / `metrics.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRow {
    /// Epoch (0-based).
    pub epoch: usize,
    /// Learning rate of every step of the epoch.
    pub lr: f64,
    /// Mean training cross-entropy over the epoch's images.
    pub train_loss: f64,
    /// Training top-1 (%), with dropout on, as the model trained.
    pub train_top1: f64,
    /// Evaluation loss, on epochs that were evaluated.
    pub eval_loss: Option<f64>,
    /// Evaluation top-1 (%), on epochs that were evaluated.
    pub eval_top1: Option<f64>,
    /// Wall seconds of the epoch (training and evaluation).
    pub seconds: f64,
}

/// Final status of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunStatus {
    /// All epochs completed.
    Ok,
    /// The loss became NaN/inf; the run scores 0 in selection.
    Diverged,
}

/// `result.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// ok or diverged.
    pub status: RunStatus,
    /// Why the run stopped early, if it did.
    pub failure: Option<String>,
    /// Task.
    pub task: String,
    /// Method.
    pub method: String,
    /// The split scored.
    pub eval_split: String,
    /// Last-epoch top-1 (%) on `eval_split` (0 for a diverged run).
    pub eval_top1: f64,
    /// Last-epoch loss on `eval_split`.
    pub eval_loss: Option<f64>,
    /// Last-epoch training loss.
    pub train_loss: Option<f64>,
    /// Epochs completed.
    pub epochs: usize,
    /// Trainable parameters (experts + head).
    pub trainable_params: usize,
    /// All parameters (backbone included).
    pub total_params: usize,
    /// Wall seconds over all sessions of the run.
    pub wall_seconds: f64,
    /// Device.
    pub device: String,
    /// Seed.
    pub seed: u64,
    /// vapt's source revision.
    pub git_revision: String,
    /// SHA-256 of the backbone weights file (`null` for a random backbone).
    pub weights_sha256: Option<String>,
    /// SHA-256 of the task folder's `vapt-manifest.json` (`null` when it has none; run
    /// `vapt data verify` to create it).
    pub data_manifest_sha256: Option<String>,
    /// The prompt artifact (relative to the run folder).
    pub artifact: Option<String>,
}

/// How a call to [`train`] ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The run finished (ok or diverged) and `result.json` was written.
    Finished(Box<RunResult>),
    /// Stopped resumably after this many epochs (`stop_after` or a user interrupt).
    Stopped(usize),
}

/// vapt's source revision, recorded in every result.
pub fn git_revision() -> &'static str {
    option_env!("VAPT_GIT_REV").unwrap_or("unknown")
}

/// The task a data configuration names, opened once (for FGVC: the class map from `train.json`).
pub enum Task {
    /// A VTAB-format task folder.
    Vtab {
        /// The folder holding the task folders.
        root: PathBuf,
        /// The task's registry name.
        name: &'static str,
    },
    /// An FGVC dataset.
    Fgvc(Fgvc),
}

impl Task {
    /// Opens the task of `data` (checks the name; FGVC reads its class map).
    pub fn open(data: &DataConfig) -> Result<Self, TrainError> {
        Ok(match data.format {
            DataFormat::Vtab => Task::Vtab {
                root: data.root.clone(),
                name: vtab::task(&data.task)?.name,
            },
            DataFormat::Fgvc => {
                let info = fgvc::dataset(&data.task)?;
                Task::Fgvc(Fgvc::open(&data.root.join(info.name), info)?)
            }
        })
    }

    /// Split `name` (a VTAB list such as `train800`, any other `<name>.txt`, or an FGVC json).
    pub fn split(&self, name: &str) -> Result<Split, TrainError> {
        Ok(match self {
            Task::Vtab { root, name: task } => vtab::open_named(root, task, name)?,
            Task::Fgvc(set) => set.split(name)?,
        })
    }

    /// SHA-256 of the task folder's `vapt-manifest.json`, if it has one.
    pub fn manifest_sha256(&self) -> Option<String> {
        let dir = match self {
            Task::Vtab { root, name } => root.join(name),
            Task::Fgvc(set) => set.root.clone(),
        };
        std::fs::read(dir.join(vapt_data::verify::MANIFEST))
            .ok()
            .map(|b| vapt_vit::weights::hex_sha256(&b))
    }
}

/// The training and evaluation splits a configuration names, and the task's manifest hash.
pub fn open_data(data: &DataConfig) -> Result<(Split, Split, Option<String>), TrainError> {
    let task = Task::open(data)?;
    Ok((
        task.split(&data.train_split)?,
        task.split(&data.eval_split)?,
        task.manifest_sha256(),
    ))
}

/// The backbone a configuration names: loaded weights, or a random one of `variant`.
pub fn load_backbone<B: Backend>(
    cfg: &BackboneConfig,
    device: &B::Device,
) -> Result<(Vit<B>, PretrainedCfg), TrainError> {
    let resample: PosEmbResample = cfg.resample.parse().map_err(|message| TrainError::Config {
        path: PathBuf::from("backbone.resample"),
        message,
    })?;
    let opts = LoadOptions::from_variant(&cfg.variant, cfg.image_size, resample)?;
    match &cfg.weights {
        Some(path) => Ok(load_pretrained::<B>(path, &opts, device)?),
        None => {
            let vit = opts.arch.ok_or_else(|| TrainError::Config {
                path: PathBuf::from("backbone"),
                message: "a random backbone needs an explicit variant".into(),
            })?;
            vit.validate()?;
            let pre = PretrainedCfg {
                input_size: vit.image_size,
                ..PretrainedCfg::default()
            };
            Ok((vit.init::<B>(device), pre))
        }
    }
}

/// The preprocessing of a split for this data format and backbone.
pub fn transform_for(format: DataFormat, train: bool, pre: &PretrainedCfg, size: usize) -> Transform {
    match (format, train) {
        (DataFormat::Vtab, _) => Transform::vtab(size, pre.mean, pre.std),
        (DataFormat::Fgvc, true) => Transform::fgvc_train(size, pre.mean, pre.std),
        (DataFormat::Fgvc, false) => Transform::fgvc_eval(size, pre.mean, pre.std),
    }
}

fn mix(seed: u64, epoch: usize) -> u64 {
    SplitMix64(seed ^ (epoch as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03)).next_u64()
}

/// The order of the training images in `epoch`: a Fisher–Yates shuffle seeded by (seed, epoch).
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = SplitMix64(mix(seed, epoch));
    for i in (1..n).rev() {
        let j = rng.below(i + 1);
        order.swap(i, j);
    }
    order
}

/// Calls `f` with the items of each batch of `order`, decoding the next batch on another thread
/// while `f` computes. Stops early when `f` returns `Ok(false)`.
pub fn for_batches(
    set: &ImageSet,
    order: &[usize],
    batch_size: usize,
    mut f: impl FnMut(Vec<ImageItem>) -> Result<bool, TrainError>,
) -> Result<(), TrainError> {
    let batch_size = batch_size.max(1);
    std::thread::scope(|scope| {
        let (tx, rx) = sync_channel::<Result<Vec<ImageItem>, vapt_data::DataError>>(2);
        scope.spawn(move || {
            for chunk in order.chunks(batch_size) {
                if tx.send(set.items(chunk)).is_err() {
                    return;
                }
            }
        });
        for items in rx {
            if !f(items?)? {
                break;
            }
        }
        Ok(())
    })
}

/// The head's input of every image of a split, computed once (linear probing).
pub struct Features {
    /// Feature width.
    pub dim: usize,
    /// `[N, dim]`, row-major.
    pub values: Vec<f32>,
    /// Labels.
    pub labels: Vec<usize>,
}

impl Features {
    /// Rows `indices` as a `[n, dim]` tensor and their labels.
    pub fn batch<B: Backend>(
        &self,
        indices: &[usize],
        device: &B::Device,
    ) -> (Tensor<B, 2>, Tensor<B, 1, Int>) {
        let mut v = Vec::with_capacity(indices.len() * self.dim);
        for &i in indices {
            v.extend_from_slice(&self.values[i * self.dim..(i + 1) * self.dim]);
        }
        let labels: Vec<i64> = indices.iter().map(|&i| self.labels[i] as i64).collect();
        (
            Tensor::from_data(TensorData::new(v, [indices.len(), self.dim]), device),
            Tensor::from_data(TensorData::new(labels, [indices.len()]), device),
        )
    }
}

struct FeatureCache {
    train: Features,
    eval: Features,
}

/// Features (`PromptedVit::features`) of every image of `set`, in order.
pub fn compute_features<B: Backend>(
    model: &PromptedVit<B>,
    set: &ImageSet,
    batch_size: usize,
    device: &B::Device,
) -> Result<Features, TrainError> {
    let size = set.transform.output_size();
    let order: Vec<usize> = (0..set.len()).collect();
    let mut values = Vec::new();
    let mut dim = 0;
    for_batches(set, &order, batch_size, |items| {
        let batch = make_batch::<B>(&items, size, device);
        let f = model.features(batch.images);
        dim = f.dims()[1];
        values.extend(
            f.into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .unwrap_or_default(),
        );
        Ok(true)
    })?;
    let labels = set.split.samples.iter().map(|s| s.label).collect();
    Ok(Features { dim, values, labels })
}

/// A batch's input: images, or cached features (linear probing).
enum Input<B: Backend> {
    Images(Tensor<B, 4>),
    Features(Tensor<B, 2>),
}

/// Logits of `model` for a batch input (features skip the backbone and go to the head).
fn logits<B: Backend>(model: &PromptedVit<B>, input: Input<B>) -> Tensor<B, 2> {
    match input {
        Input::Images(x) => model.forward(x),
        Input::Features(f) => match &model.head {
            Some(head) => head.forward(f),
            None => f,
        },
    }
}

/// Calls `f` with each batch of `order`: rows of `features` when given, else the decoded and
/// transformed images of `set` (see [`for_batches`]).
fn for_input_batches<B: Backend>(
    set: &ImageSet,
    features: Option<&Features>,
    order: &[usize],
    batch_size: usize,
    device: &B::Device,
    mut f: impl FnMut(Input<B>, Tensor<B, 1, Int>) -> Result<bool, TrainError>,
) -> Result<(), TrainError> {
    match features {
        Some(c) => {
            for chunk in order.chunks(batch_size.max(1)) {
                let (x, y) = c.batch::<B>(chunk, device);
                if !f(Input::Features(x), y)? {
                    break;
                }
            }
            Ok(())
        }
        None => {
            let size = set.transform.output_size();
            for_batches(set, order, batch_size, |items| {
                let batch = make_batch::<B>(&items, size, device);
                f(Input::Images(batch.images), batch.targets)
            })
        }
    }
}

/// Loss and top-1 (%) of `model` on `set` (eval mode, no gradients).
pub fn evaluate<B: Backend>(
    model: &PromptedVit<B>,
    set: &ImageSet,
    batch_size: usize,
    device: &B::Device,
    on_batch: impl FnMut(usize, usize),
) -> Result<(f64, f64), TrainError> {
    score(model, set, None, batch_size, device, on_batch)
}

/// [`evaluate`], on `features` of `set` when given.
fn score<B: Backend>(
    model: &PromptedVit<B>,
    set: &ImageSet,
    features: Option<&Features>,
    batch_size: usize,
    device: &B::Device,
    mut on_batch: impl FnMut(usize, usize),
) -> Result<(f64, f64), TrainError> {
    let order: Vec<usize> = (0..set.len()).collect();
    let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
    let total = set.len();
    for_input_batches(set, features, &order, batch_size, device, |input, targets| {
        let n = targets.dims()[0];
        let logits = logits(model, input);
        let loss: f64 = cross_entropy(logits.clone(), targets.clone())
            .into_scalar()
            .elem();
        loss_sum += loss * n as f64;
        correct += count_correct(logits, targets);
        seen += n;
        on_batch(seen, total);
        Ok(true)
    })?;
    let n = seen.max(1) as f64;
    Ok((loss_sum / n, 100.0 * correct as f64 / n))
}

fn count_correct<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> usize {
    let n = targets.dims()[0];
    let pred = logits.argmax(1).reshape([n]);
    let c: i64 = pred.equal(targets).int().sum().into_scalar().elem();
    c as usize
}

/// Writes `value` as pretty JSON, atomically.
pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), TrainError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| TrainError::Config {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    write_atomic(path, format!("{text}\n").as_bytes())
}

/// Reads a run's `result.json`, if it has one.
pub fn read_result(dir: &Path) -> Result<Option<RunResult>, TrainError> {
    let path = dir.join(RESULT_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    read_json(&path, "vapt result").map(Some)
}

/// Reads a JSON file; a parse error names the file and says it is not a `what`.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<T, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Config {
        path: path.to_path_buf(),
        message: format!("not a {what}: {e}"),
    })
}

fn diff_keys(a: &serde_json::Value, b: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
    match (a, b) {
        (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
            let keys: std::collections::BTreeSet<_> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => diff_keys(u, v, &p, out),
                    _ => out.push(p),
                }
            }
        }
        _ if a != b => out.push(prefix.to_string()),
        _ => {}
    }
}

/// Prepares the run folder: refuses a finished run, refuses an unfinished one without `resume`
/// (and with another configuration), writes `config.json` for a new one.
fn prepare_dir(cfg: &TrainConfig, opts: &RunOptions) -> Result<(), TrainError> {
    let dir = &opts.out;
    if dir.join(RESULT_FILE).exists() {
        return Err(TrainError::Finished { dir: dir.clone() });
    }
    let config_path = dir.join(CONFIG_FILE);
    let ours = serde_json::to_value(cfg).map_err(|e| TrainError::Config {
        path: config_path.clone(),
        message: e.to_string(),
    })?;
    if config_path.exists() {
        if !opts.resume {
            return Err(TrainError::Unfinished { dir: dir.clone() });
        }
        let theirs: serde_json::Value = read_json(&config_path, "run configuration")?;
        let mut keys = Vec::new();
        diff_keys(&theirs, &ours, "", &mut keys);
        if !keys.is_empty() {
            return Err(TrainError::ConfigMismatch {
                path: config_path,
                keys: keys.join(", "),
            });
        }
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    write_json(&config_path, &ours)
}

fn write_metrics(dir: &Path, history: &[EpochRow]) -> Result<(), TrainError> {
    let mut jsonl = String::new();
    let mut csv = String::from("epoch,lr,train_loss,train_top1,eval_loss,eval_top1,seconds\n");
    let opt = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
    for r in history {
        jsonl.push_str(&serde_json::to_string(r).unwrap_or_default());
        jsonl.push('\n');
        csv.push_str(&format!(
            "{},{},{},{},{},{},{:.3}\n",
            r.epoch,
            r.lr,
            r.train_loss,
            r.train_top1,
            opt(r.eval_loss),
            opt(r.eval_top1),
            r.seconds
        ));
    }
    write_atomic(&dir.join("metrics.jsonl"), jsonl.as_bytes())?;
    write_atomic(&dir.join("metrics.csv"), csv.as_bytes())
}

/// Everything a run needs besides the optimiser type.
struct Ctx<'a, B: AutodiffBackend> {
    cfg: &'a TrainConfig,
    opts: &'a RunOptions,
    device: &'a B::Device,
    train: ImageSet,
    eval: ImageSet,
    pre: PretrainedCfg,
    data_sha: Option<String>,
    monitor: &'a mut dyn Monitor,
}

/// Trains one run as `cfg` describes into `opts.out`, reporting progress to `monitor`.
pub fn train<B: AutodiffBackend>(
    cfg: &TrainConfig,
    opts: &RunOptions,
    device: &B::Device,
    monitor: &mut dyn Monitor,
) -> Result<Outcome, TrainError> {
    cfg.validate("configuration")?;
    let (train_split, eval_split, data_sha) = open_data(&cfg.data)?;
    prepare_dir(cfg, opts)?;
    B::seed(device, cfg.seed);
    let (backbone, pre) = load_backbone::<B>(&cfg.backbone, device)?;
    let size = backbone.config.image_size;
    let mut prompt = cfg.experts.clone();
    prompt.num_classes = train_split.num_classes;
    let model = PromptedVit::new(backbone, prompt, device)?;
    let model = checkpoint::renumber_params(model);
    let train = ImageSet::new(
        train_split,
        transform_for(cfg.data.format, true, &pre, size),
        cfg.seed,
    );
    let eval = ImageSet::new(
        eval_split,
        transform_for(cfg.data.format, false, &pre, size),
        cfg.seed,
    );
    monitor.message(&format!(
        "decoding {} training and {} evaluation images",
        train.len(),
        eval.len()
    ));
    train.preload()?;
    eval.preload()?;
    let mut ctx = Ctx {
        cfg,
        opts,
        device,
        train,
        eval,
        pre,
        data_sha,
        monitor,
    };
    match cfg.optim.optimizer {
        OptimizerKind::Sgd => {
            let optim = sgd().init::<B, PromptedVit<B>>();
            fit(&mut ctx, model, optim)
        }
        OptimizerKind::Adamw => {
            let optim = AdamWConfig::new()
                .with_weight_decay(cfg.optim.wd as f32)
                .init::<B, PromptedVit<B>>();
            fit(&mut ctx, model, optim)
        }
    }
}

fn fit<B: AutodiffBackend, O: Optimizer<PromptedVit<B>, B>>(
    ctx: &mut Ctx<'_, B>,
    model: PromptedVit<B>,
    mut optim: O,
) -> Result<Outcome, TrainError> {
    let cfg = ctx.cfg;
    let dir = ctx.opts.out.clone();
    let ckpt_dir = dir.join("checkpoint");
    let schedule = cfg.optim.schedule();
    // A new run folder has no checkpoint (`prepare_dir` refuses an unfinished one without --resume).
    let saved = if ctx.opts.resume {
        checkpoint::load::<B, _, O::Record>(&ckpt_dir, model.clone(), ctx.device)?
    } else {
        None
    };
    let (mut model, mut history, mut wall, start) = match saved {
        Some((m, record, meta)) => {
            optim = optim.load_record(record);
            let history: Vec<EpochRow> =
                serde_json::from_str(&meta.history).map_err(|e| TrainError::Checkpoint {
                    path: ckpt_dir.join(checkpoint::STATE_FILE),
                    message: format!("bad metric history: {e}"),
                })?;
            (m, history, meta.wall_seconds, meta.epochs_done)
        }
        None => (model, Vec::new(), 0.0, 0),
    };
    let (trainable, total) = checkpoint::count_params(&model);
    let steps = ctx.train.len().div_ceil(cfg.optim.batch_size.max(1));
    ctx.monitor.start(&RunHeader {
        label: cfg.label(),
        out: dir.clone(),
        device: ctx.opts.device_label.clone(),
        trainable,
        total,
        epochs: schedule.epochs,
        start_epoch: start,
        steps_per_epoch: steps,
        train_images: ctx.train.len(),
        eval_images: ctx.eval.len(),
    });
    let wd = cfg.optim.wd;
    let sgd_decay = cfg.optim.optimizer == OptimizerKind::Sgd;
    // Linear probing with a deterministic transform: the frozen backbone's features never change,
    // so compute them once and train the head on them (`VAPT_NO_FEATURE_CACHE=1` turns this off,
    // to check that both paths agree).
    let cache_ok = std::env::var_os("VAPT_NO_FEATURE_CACHE").is_none();
    let cache = if cache_ok
        && cfg.experts.method == Method::Linear
        && !ctx.train.transform.is_random()
        && start < schedule.epochs
    {
        ctx.monitor
            .message("linear probe: computing the frozen backbone's features once");
        let t0 = Instant::now();
        let inner = model.valid();
        let c = FeatureCache {
            train: compute_features(&inner, &ctx.train, cfg.optim.batch_size, ctx.device)?,
            eval: compute_features(&inner, &ctx.eval, cfg.optim.batch_size, ctx.device)?,
        };
        wall += t0.elapsed().as_secs_f64();
        Some(c)
    } else {
        None
    };
    for epoch in start..schedule.epochs {
        let t0 = Instant::now();
        let lr = schedule.lr(epoch);
        B::seed(ctx.device, mix(cfg.seed, epoch));
        ctx.train.set_epoch(epoch as u64);
        let order = epoch_order(ctx.train.len(), cfg.seed, epoch);
        let (mut loss_sum, mut correct, mut seen, mut step) = (0.0f64, 0usize, 0usize, 0usize);
        let mut diverged: Option<(usize, f64)> = None;
        let mut stopped = false;
        let monitor = &mut *ctx.monitor;
        let device = ctx.device;
        let features = cache.as_ref().map(|c| &c.train);
        for_input_batches(
            &ctx.train,
            features,
            &order,
            cfg.optim.batch_size,
            device,
            |input, targets| {
                let n = targets.dims()[0];
                let logits = logits(&model, input);
                let loss = cross_entropy(logits.clone(), targets.clone());
                let loss_v: f64 = loss.clone().into_scalar().elem();
                if !loss_v.is_finite() {
                    diverged = Some((step, loss_v));
                    return Ok(false);
                }
                correct += count_correct(logits.detach(), targets);
                let grads = if sgd_decay {
                    gradients(&model, loss, wd)
                } else {
                    GradientsParams::from_grads(loss.backward(), &model)
                };
                model = optim.step(lr, model.clone(), grads);
                loss_sum += loss_v * n as f64;
                seen += n;
                monitor.step(&StepInfo {
                    epoch,
                    epochs: schedule.epochs,
                    step,
                    steps,
                    loss: loss_v,
                    lr,
                    running_loss: loss_sum / seen as f64,
                    running_top1: 100.0 * correct as f64 / seen as f64,
                });
                step += 1;
                if monitor.should_stop() {
                    stopped = true;
                    return Ok(false);
                }
                Ok(true)
            },
        )?;
        if let Some((step, loss)) = diverged {
            wall += t0.elapsed().as_secs_f64();
            let failure = format!("loss {loss} at epoch {epoch}, step {step}");
            let result = record(
                ctx,
                &history,
                trainable,
                total,
                wall,
                RunStatus::Diverged,
                Some(failure),
                None,
            );
            write_json(&dir.join(RESULT_FILE), &result)?;
            return Err(TrainError::Diverged {
                epoch,
                step,
                loss,
                dir,
            });
        }
        if stopped {
            ctx.monitor.message(&format!(
                "stopped during epoch {epoch}; --resume continues from the start of it"
            ));
            ctx.monitor.finish();
            return Ok(Outcome::Stopped(history.len()));
        }
        let last = epoch + 1 == schedule.epochs;
        let every = cfg.eval_every > 0 && (epoch + 1) % cfg.eval_every == 0;
        let (eval_loss, eval_top1) = if last || every {
            let inner = model.valid();
            let monitor = &mut *ctx.monitor;
            let features = cache.as_ref().map(|c| &c.eval);
            let (l, t) = score(
                &inner,
                &ctx.eval,
                features,
                cfg.optim.batch_size,
                ctx.device,
                |done, total| monitor.eval_progress(epoch, done, total),
            )?;
            (Some(l), Some(t))
        } else {
            (None, None)
        };
        let seconds = t0.elapsed().as_secs_f64();
        wall += seconds;
        let n = seen.max(1) as f64;
        let row = EpochRow {
            epoch,
            lr,
            train_loss: loss_sum / n,
            train_top1: 100.0 * correct as f64 / n,
            eval_loss,
            eval_top1,
            seconds,
        };
        ctx.monitor.epoch_end(&row);
        history.push(row);
        write_metrics(&dir, &history)?;
        let meta = CheckpointMeta {
            epochs_done: epoch + 1,
            history: serde_json::to_string(&history).unwrap_or_default(),
            wall_seconds: wall,
        };
        checkpoint::save(&ckpt_dir, &model, optim.to_record(), &meta)?;
        if !last && ctx.opts.stop_after.is_some_and(|k| epoch + 1 >= k) {
            ctx.monitor.message(&format!(
                "stopped after epoch {} of {} as asked; continue with --resume",
                epoch + 1,
                schedule.epochs
            ));
            ctx.monitor.finish();
            return Ok(Outcome::Stopped(epoch + 1));
        }
    }
    if cfg.experts.method == Method::Full {
        // Full fine-tuning changes the backbone: save it (with its preprocessing) for reuse.
        let inner = model.valid();
        let pre = PretrainedCfg {
            source: "vapt full fine-tuning".into(),
            file: None,
            sha256: None,
            tag: Some(cfg.label()),
            input_size: inner.backbone.config.image_size,
            ..ctx.pre.clone()
        };
        inner
            .backbone
            .save_safetensors(&dir.join(BACKBONE_FILE), Some(&pre))?;
    }
    let artifact = dir.join(ARTIFACT_FILE);
    save_artifact(&model.valid(), ctx.pre.sha256.as_deref(), &artifact)?;
    let result = record(
        ctx,
        &history,
        trainable,
        total,
        wall,
        RunStatus::Ok,
        None,
        Some(ARTIFACT_FILE.to_string()),
    );
    write_json(&dir.join(RESULT_FILE), &result)?;
    let _ = std::fs::remove_dir_all(&ckpt_dir);
    ctx.monitor.finish();
    Ok(Outcome::Finished(Box::new(result)))
}

#[allow(clippy::too_many_arguments)]
fn record<B: AutodiffBackend>(
    ctx: &Ctx<'_, B>,
    history: &[EpochRow],
    trainable: usize,
    total: usize,
    wall: f64,
    status: RunStatus,
    failure: Option<String>,
    artifact: Option<String>,
) -> RunResult {
    let last = history.last();
    let ok = status == RunStatus::Ok;
    RunResult {
        status,
        failure,
        task: ctx.cfg.data.task.clone(),
        method: ctx.cfg.experts.method.to_string(),
        eval_split: ctx.cfg.data.eval_split.clone(),
        eval_top1: if ok {
            last.and_then(|r| r.eval_top1).unwrap_or(0.0)
        } else {
            0.0
        },
        eval_loss: last.and_then(|r| r.eval_loss).filter(|_| ok),
        train_loss: last.map(|r| r.train_loss),
        epochs: history.len(),
        trainable_params: trainable,
        total_params: total,
        wall_seconds: wall,
        device: ctx.opts.device_label.clone(),
        seed: ctx.cfg.seed,
        git_revision: git_revision().to_string(),
        weights_sha256: ctx.pre.sha256.clone(),
        data_manifest_sha256: ctx.data_sha.clone(),
        artifact,
    }
}
