//! # vapt-train
//!
//! The VTAB-1k / FGVC training protocol (SPEC §7) for prompt experts on a frozen ViT, and what
//! is built on one run:
//!
//! - [`protocol`] — the lr schedule (also as a Burn `LrScheduler`), SGD settings and coupled
//!   weight decay that skips the head bias; [`loss`] — the cross-entropy;
//! - [`config`] — [`TrainConfig`], what a `--config` file (TOML/JSON) holds;
//! - [`run_dir`] — the run folder: layout, `config.json`, metrics, `result.json`;
//! - [`trainer`] — one run into a run folder (epochs, evaluation, checkpoints, the artifact),
//!   resumable bit for bit, stopping on a NaN/inf loss; [`eval`] — scoring on a loader;
//! - [`checkpoint`] — atomic per-epoch checkpoints of the trainable tensors and optimiser state;
//! - [`monitor`] — burn-train's terminal dashboard or plain progress lines;
//! - [`sweep`] — the lr × wd grid on train800/val200 and the 5-seed final runs, resumable,
//!   addressable point by point; [`report`] — the paper-layout table over tasks (Markdown, CSV);
//! - [`inference`] — a finished run as a library: [`Predictor`] (load, predict top-k, evaluate);
//! - [`parity`] — the authors' fixtures: every output and gradient of the training loss compared.

pub mod checkpoint;
pub mod config;
pub mod error;
pub mod eval;
pub mod figures;
pub mod files;
pub mod html;
pub mod inference;
pub mod loss;
pub mod monitor;
pub mod parity;
pub mod protocol;
pub mod report;
pub mod run_dir;
pub mod sweep;
pub mod trainer;

pub use config::{BackboneConfig, DataConfig, DataFormat, OptimConfig, OptimizerKind, TrainConfig};
pub use error::TrainError;
pub use inference::{Prediction, Predictor, Score};
pub use loss::cross_entropy;
pub use monitor::Monitor;
pub use parity::{run_parity, ParityReport};
pub use protocol::{coupled_weight_decay, gradients, sgd, EpochScheduler, Schedule};
pub use run_dir::{EpochRow, Outcome, RunOptions, RunResult, RunStatus};
pub use trainer::train;
pub use vapt_data;
pub use vapt_experts;
