//! Errors of weight loading; every variant names the file.

use std::fmt;
use std::path::PathBuf;

use crate::config::VariantError;

/// A key whose array has the wrong shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeMismatch {
    /// Key in the file.
    pub key: String,
    /// Shape in the file.
    pub found: Vec<usize>,
    /// Shape the model needs.
    pub expected: Vec<usize>,
}

/// Errors from reading, validating or converting a weights file. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read or written.
    #[error("{path}: {source}", path = .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not in a format vapt reads (or is corrupt).
    #[error("{path}: {message}", path = .path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// One entry of the file is unreadable.
    #[error("{path}: entry `{key}`: {message}", path = .path.display())]
    Entry {
        /// The file.
        path: PathBuf,
        /// The entry (array) name.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The keys or shapes of the file do not match the model (every problem listed).
    #[error("{0}")]
    Mismatch(Box<KeyMismatch>),
    /// The architecture could not be read off the file.
    #[error("{path}: cannot infer the ViT architecture: {message}; pass an explicit --variant", path = .path.display())]
    Infer {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The architecture given by the caller contradicts the file.
    #[error("{path}: the file holds {found} but {requested} was requested", path = .path.display())]
    Architecture {
        /// The file.
        path: PathBuf,
        /// What the file holds.
        found: String,
        /// What the caller asked for.
        requested: String,
    },
    /// A bad variant or configuration.
    #[error(transparent)]
    Variant(#[from] VariantError),
    /// A bad backbone setting (not a file problem).
    #[error("{key}: {message}")]
    Setting {
        /// The setting (`backbone.resample`).
        key: String,
        /// What is wrong.
        message: String,
    },
}

fn fmt_shape(s: &[usize]) -> String {
    format!("{s:?}")
}

/// Every disagreement between a weights file and the model it was checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyMismatch {
    /// The file.
    pub path: PathBuf,
    /// Layout the file was read as (e.g. `google npz`).
    pub layout: String,
    /// The model it was checked against.
    pub model: String,
    /// Keys the model needs that the file lacks, with the expected shape.
    pub missing: Vec<(String, Vec<usize>)>,
    /// Keys in the file the model does not use, with their shape.
    pub unexpected: Vec<(String, Vec<usize>)>,
    /// Keys present with the wrong shape.
    pub wrong_shape: Vec<ShapeMismatch>,
}

impl fmt::Display for KeyMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: the weights ({} layout) do not match {}: {} missing, {} unexpected, {} with a wrong shape",
            self.path.display(),
            self.layout,
            self.model,
            self.missing.len(),
            self.unexpected.len(),
            self.wrong_shape.len()
        )?;
        for (k, shape) in &self.missing {
            write!(f, "\n  missing:     {k} (expected shape {})", fmt_shape(shape))?;
        }
        for (k, shape) in &self.unexpected {
            write!(f, "\n  unexpected:  {k} (shape {})", fmt_shape(shape))?;
        }
        for m in &self.wrong_shape {
            write!(
                f,
                "\n  wrong shape: {} is {}, expected {}",
                m.key,
                fmt_shape(&m.found),
                fmt_shape(&m.expected)
            )?;
        }
        Ok(())
    }
}
