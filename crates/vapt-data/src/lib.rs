//! # vapt-data
//!
//! Datasets and transforms for vapt, reading the formats people actually have and saying precisely
//! what is wrong (file and line) when something is:
//!
//! * [`vtab`] — VTAB-1k community folder lists (`train800`, `val200`, `train800val200`, `test`) and
//!   the task registry (19 tasks + the embedded `fashion-mnist-1k`).
//! * [`fgvc`] — VPT's FGVC json splits, with one class map built from `train.json`.
//! * [`folder`] — class-per-subfolder trees for users' own data.
//! * [`transform`] — the exact VTAB (TF2 bilinear) and FGVC (PIL bilinear, crops, flip) recipes.
//! * [`images`] — parallel decoding, the in-memory u8 cache, a Burn `Dataset` and `Batcher`.
//! * [`task`] — a run's [`DataConfig`] opened as a [`Task`] (VTAB / FGVC / folders), and the
//!   recipe's transform per split.
//! * [`loader`] — [`Loader`]: the batches of an epoch, shuffled by (seed, epoch), over images
//!   (decoded one batch ahead) or cached feature rows.
//! * [`verify`] — `vapt data verify`: existence, decoding, counts and a SHA-256 manifest.

pub mod error;
pub mod fgvc;
pub mod folder;
pub mod images;
pub mod loader;
pub mod split;
pub mod task;
pub mod transform;
pub mod verify;
pub mod vtab;

pub use error::DataError;
pub use images::{ImageBatch, ImageBatcher, ImageItem, ImageSet};
pub use loader::{Batch, FeatureTable, Input, Loader};
pub use split::{Sample, Split};
pub use task::{DataConfig, DataFormat, Task};
pub use transform::{Crop, Resize, Resized, Rgb8, Transform};
pub use vtab::{Group, TaskInfo, VtabSplit};

#[cfg(test)]
mod tests;
