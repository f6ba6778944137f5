//! # vapt-train
//!
//! The VTAB-1k / FGVC training protocol. So far: [`protocol`] — the lr schedule (also as a Burn
//! `LrScheduler` stepped per iteration), the SGD settings
//! and coupled weight decay that skips the head bias (SPEC §7.1). The run loop, checkpoints,
//! sweeps and reports are tracked in the training-protocol issue.

pub mod protocol;

pub use protocol::{coupled_weight_decay, gradients, sgd, EpochScheduler, Schedule};
pub use vapt_data;
pub use vapt_experts;
