//! Typed data errors; every variant names the file (and line, where there is one).

use std::path::PathBuf;

/// Everything that can be wrong with a dataset on disk.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or folder could not be read.
    #[error("{path}: {source}", path = .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A malformed line in a list file.
    #[error("{path}:{line}: {message}", path = .path.display())]
    Line {
        /// The list file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A malformed JSON split file.
    #[error("{path}: {message}", path = .path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An image listed in a split is missing, or not a file that can be read.
    #[error("{path}: image listed in {list}{at} {problem}", path = .path.display(), list = .list.display(), at = .line.map(|l| format!(":{l}")).unwrap_or_default())]
    MissingImage {
        /// The image path.
        path: PathBuf,
        /// What is wrong (`does not exist`, `is a folder`, `is a symbolic link loop`, ...).
        problem: String,
        /// The list/json file naming it.
        list: PathBuf,
        /// Line in the list, if any.
        line: Option<usize>,
    },
    /// An image cannot be decoded.
    #[error("{path}: cannot decode image: {message}", path = .path.display())]
    Decode {
        /// The image path.
        path: PathBuf,
        /// The decoder's message.
        message: String,
    },
    /// A split file lists no image.
    #[error("{path}: the split is empty (no images listed)", path = .path.display())]
    EmptySplit {
        /// The list/json file.
        path: PathBuf,
    },
    /// A task or dataset name that is not known.
    #[error("unknown task `{name}`: known tasks are {known}")]
    UnknownTask {
        /// The name given.
        name: String,
        /// Comma-separated known names.
        known: String,
    },
    /// A split file that should exist does not.
    #[error("{path}: split file not found{hint}", path = .path.display())]
    MissingSplit {
        /// The expected file.
        path: PathBuf,
        /// Extra advice.
        hint: String,
    },
    /// A manifest does not match the files.
    #[error("{path}: {message}", path = .path.display())]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// The mismatch.
        message: String,
    },
}

impl DataError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }
}
