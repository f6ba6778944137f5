//! Cross-crate integration tests (one binary, to keep link time low).

mod backbone;
mod baselines;
mod dinov2;
mod experts;
mod pth;
mod train;
