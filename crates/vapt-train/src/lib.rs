//! # vapt-train
//!
//! The VTAB-1k / FGVC training protocol, sweeps and reports.
//!
//! Not implemented yet (tracked in the training-protocol issue).

pub use vapt_data;
pub use vapt_experts;
