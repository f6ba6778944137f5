//! Writing and reading the small files of run and sweep folders: atomic writes (a temporary file
//! in the same folder, then a rename) and JSON with errors that name the file.

use std::path::Path;

use serde::Serialize;

use crate::error::TrainError;

/// Writes `bytes` to `path` atomically and durably ([`vapt_files::write_atomic`]); an error
/// names the file being written.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    vapt_files::write_atomic(path, bytes).map_err(|e| TrainError::io(&e.path, e.source))
}

/// Writes `value` as pretty JSON, atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), TrainError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| TrainError::Config {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    write_atomic(path, format!("{text}\n").as_bytes())
}

/// Reads a JSON file; a parse error names the file and says it is not a `what`.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<T, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Config {
        path: path.to_path_buf(),
        message: format!("not a {what}: {e}"),
    })
}
