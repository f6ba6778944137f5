//! The run folder: its layout, what is written into it and when, and the records it holds.
//!
//! A run folder (`--out`) receives, in order: `config.json` (the full configuration, before any
//! work), `metrics.jsonl` + `metrics.csv` (one [`EpochRow`] per epoch, rewritten atomically after
//! each epoch), `checkpoint/` (trainable tensors + optimiser state, atomic, every epoch), and at the
//! end `prompts.safetensors` (the prompt-only artifact) and `result.json` ([`RunResult`]). A folder
//! with a `result.json` is never written to again.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use vapt_vit::BackboneKind;

use crate::config::TrainConfig;
use crate::error::TrainError;
use crate::files::{read_json, write_atomic, write_json};

/// The prompt-only artifact written at the end of a run.
pub const ARTIFACT_FILE: &str = "prompts.safetensors";
/// The fine-tuned backbone, written at the end of a `full` run.
pub const BACKBONE_FILE: &str = "backbone.safetensors";
/// The final record of a run.
pub const RESULT_FILE: &str = "result.json";
/// The configuration, written first.
pub const CONFIG_FILE: &str = "config.json";
/// The checkpoint folder, present while a run is unfinished.
pub const CHECKPOINT_DIR: &str = "checkpoint";

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
    /// On resume, accept a checkpoint whose backbone (`weights`) or data manifest (`data`)
    /// SHA-256 differs from today's files; recorded in `result.json`.
    pub allow_changed: Vec<String>,
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
    /// Parameters of the pre-trained backbone (tuned % = trainable / this); absent in results
    /// written before vapt recorded it.
    #[serde(default)]
    pub backbone_params: Option<usize>,
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
    /// The backbone's pre-training kind (read off the weights).
    #[serde(default)]
    pub backbone_kind: BackboneKind,
    /// Changes accepted on resume (`--allow-changed`): `weights`, `data`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_changes: Vec<String>,
}

/// How a call to [`crate::train`] ended.
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

/// Reads a run's `result.json`, if it has one.
pub fn read_result(dir: &Path) -> Result<Option<RunResult>, TrainError> {
    let path = dir.join(RESULT_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    read_json(&path, "vapt result").map(Some)
}

/// The differences between two JSON values, one per leaf: `optim.epochs: 100 → 3` (a key only
/// on one side: `key: absent → value`).
pub(crate) fn differences(old: &serde_json::Value, new: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    diff(old, new, "", &mut out);
    out
}

fn diff(a: &serde_json::Value, b: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
    match (a, b) {
        (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
            let keys: std::collections::BTreeSet<_> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                let absent = serde_json::Value::String("absent".into());
                diff(x.get(k).unwrap_or(&absent), y.get(k).unwrap_or(&absent), &p, out);
            }
        }
        _ if a != b => out.push(format!("{prefix}: {a} → {b}")),
        _ => {}
    }
}

/// Checks the run folder before anything is loaded: refuses a finished run, an unfinished one
/// without `resume`, and (with `resume`) one of another configuration. Writes nothing.
pub fn check(cfg: &TrainConfig, opts: &RunOptions) -> Result<(), TrainError> {
    let dir = &opts.out;
    if dir.join(RESULT_FILE).exists() {
        return Err(TrainError::Finished { dir: dir.clone() });
    }
    let config_path = dir.join(CONFIG_FILE);
    if config_path.exists() {
        if !opts.resume {
            return Err(TrainError::Unfinished { dir: dir.clone() });
        }
        let theirs: serde_json::Value = read_json(&config_path, "run configuration")?;
        let keys = differences(&theirs, &config_value(cfg, &config_path)?);
        if !keys.is_empty() {
            return Err(TrainError::ConfigMismatch {
                path: config_path,
                keys: keys.join("; "),
            });
        }
    }
    Ok(())
}

fn config_value(cfg: &TrainConfig, path: &Path) -> Result<serde_json::Value, TrainError> {
    serde_json::to_value(cfg).map_err(|e| TrainError::Config {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Starts the run folder once the backbone and the data have loaded: writes `config.json` for
/// a new run (a start that fails before this leaves no folder behind to block the next one).
pub fn start(cfg: &TrainConfig, opts: &RunOptions) -> Result<(), TrainError> {
    let dir = &opts.out;
    let config_path = dir.join(CONFIG_FILE);
    if config_path.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    write_json(&config_path, &config_value(cfg, &config_path)?)
}

/// The metric history of the run in `dir` (`metrics.jsonl`); a bad line is an error naming the
/// file and line.
pub fn read_metrics(dir: &Path) -> Result<Vec<EpochRow>, TrainError> {
    let path = dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| TrainError::Config {
                path: path.clone(),
                message: format!("line {}: not a metrics row: {e}", i + 1),
            })
        })
        .collect()
}

/// Rewrites `metrics.jsonl` and `metrics.csv` with `history`.
pub fn write_metrics(dir: &Path, history: &[EpochRow]) -> Result<(), TrainError> {
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
