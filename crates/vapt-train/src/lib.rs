//! # vapt-train
//!
//! The VTAB-1k / FGVC training protocol (SPEC §7) for prompt experts on a frozen ViT:
//!
//! - [`protocol`] — the lr schedule (also as a Burn `LrScheduler`), SGD settings and coupled
//!   weight decay that skips the head bias;
//! - [`config`] — [`TrainConfig`], what a `--config` file (TOML/JSON) holds;
//! - [`run`] — one run into a run folder (config, metrics, checkpoints, result, prompt artifact),
//!   resumable bit for bit, stopping on a NaN/inf loss;
//! - [`checkpoint`] — atomic per-epoch checkpoints of the trainable tensors and optimiser state;
//! - [`monitor`] — burn-train's terminal dashboard or plain progress lines;
//! - [`sweep`] — the lr × wd grid on train800/val200 and the 5-seed final runs, resumable,
//!   addressable point by point;
//! - [`report`] — the paper-layout table over tasks (Markdown, CSV).

pub mod checkpoint;
pub mod config;
pub mod error;
pub mod monitor;
pub mod protocol;
pub mod report;
pub mod run;
pub mod sweep;

pub use config::{BackboneConfig, DataConfig, DataFormat, OptimConfig, OptimizerKind, TrainConfig};
pub use error::TrainError;
pub use monitor::Monitor;
pub use protocol::{coupled_weight_decay, gradients, sgd, EpochScheduler, Schedule};
pub use run::{train, EpochRow, Outcome, RunOptions, RunResult, RunStatus};
pub use vapt_data;
pub use vapt_experts;
