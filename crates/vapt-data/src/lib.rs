//! # vapt-data
//!
//! Datasets and transforms for vapt: VTAB-1k folder lists, VPT's FGVC json, class-per-folder image
//! trees, the paper's VTAB/FGVC transforms and a Burn batcher.
//!
//! Not implemented yet (tracked in the datasets issue); this crate currently only reserves its
//! place in the layer order `data → vit → experts → train → cli`.
