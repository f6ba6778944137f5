//! Typed errors of runs, sweeps and reports; each names the file or folder concerned.

use std::path::{Path, PathBuf};

/// Everything that can stop a run, sweep or report.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A file or folder could not be read or written.
    #[error("{path}: {source}", path = .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A bad configuration file or value.
    #[error("{path}: {message}", path = .path.display())]
    Config {
        /// The file (or `flags`).
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The dataset.
    #[error(transparent)]
    Data(#[from] vapt_data::DataError),
    /// The backbone weights.
    #[error(transparent)]
    Load(#[from] vapt_vit::LoadError),
    /// The architecture string.
    #[error(transparent)]
    Variant(#[from] vapt_vit::VariantError),
    /// The prompt configuration.
    #[error(transparent)]
    Prompt(#[from] vapt_experts::ConfigError),
    /// The prompt artifact.
    #[error(transparent)]
    Artifact(#[from] vapt_experts::ArtifactError),
    /// The run folder holds a finished run, which is never overwritten.
    #[error("{dir}: this run has finished (result.json exists); it is never overwritten — choose another --out", dir = .dir.display())]
    Finished {
        /// The run folder.
        dir: PathBuf,
    },
    /// The run folder holds an unfinished run and `--resume` was not given.
    #[error("{dir}: an unfinished run is already here; pass --resume to continue it, or choose another --out", dir = .dir.display())]
    Unfinished {
        /// The run folder.
        dir: PathBuf,
    },
    /// `--resume` with a configuration other than the one the run started with.
    #[error("{path}: the run was started with another configuration; differing keys: {keys}", path = .path.display())]
    ConfigMismatch {
        /// The run's `config.json`.
        path: PathBuf,
        /// The keys that differ.
        keys: String,
    },
    /// A checkpoint that cannot be used.
    #[error("{path}: bad checkpoint: {message}", path = .path.display())]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A checkpoint of another run (configuration, backbone or data differ).
    #[error(
        "{path}: this checkpoint belongs to another run; differences (checkpoint → now): \
         {differences}. Resume with the run's own configuration, weights and data, or pass \
         --allow-changed weights|data to accept a changed file (recorded in result.json)",
        path = .path.display()
    )]
    ForeignCheckpoint {
        /// The state file.
        path: PathBuf,
        /// What differs.
        differences: String,
    },
    /// The loss became NaN or infinite; the run is recorded as diverged.
    #[error("training diverged at epoch {epoch}, step {step}: loss {loss} (recorded in {dir}/result.json)", dir = .dir.display())]
    Diverged {
        /// Epoch (0-based).
        epoch: usize,
        /// Step within the epoch (0-based).
        step: usize,
        /// The loss value.
        loss: f64,
        /// The run folder.
        dir: PathBuf,
    },
}

impl TrainError {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
