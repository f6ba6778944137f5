//! # vapt-files
//!
//! The two file facts every vapt crate shares, written once: how a file is written so that a
//! kill or a power loss never leaves it half-written ([`write_atomic`]), and how a file's
//! identity is recorded ([`sha256_hex`]). Each crate maps [`WriteError`] into its own error
//! type, which names the file.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// A failed write: the file that was being written (the temporary file, or the final name for
/// the rename) and why.
#[derive(Debug)]
pub struct WriteError {
    /// The file being written when it failed.
    pub path: PathBuf,
    /// The operating system's error.
    pub source: std::io::Error,
}

/// Writes `bytes` to `path` atomically and durably: a temporary file in the same folder (named
/// for this process and call, so that processes sharing a folder never write into each other's),
/// flushed to disk, renamed over `path`, then the folder flushed so the rename is on disk too.
/// A failed write removes its temporary file; `path` keeps its old content.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let tmp = tmp_path(path);
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, bytes)?;
        f.sync_all()
    })();
    if let Err(source) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(WriteError { path: tmp, source });
    }
    if let Err(source) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(WriteError {
            path: path.to_path_buf(),
            source,
        });
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

fn tmp_path(path: &Path) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}-{n}.tmp", std::process::id()));
    path.with_file_name(name)
}

/// SHA-256 of `bytes`, lower-case hex (how vapt records weights, data manifests, configs).
pub fn sha256_hex(bytes: &[u8]) -> String {
    let mut h = Sha256Hex::default();
    h.update(bytes);
    h.finish()
}

/// SHA-256 fed in parts, for data that is not one buffer (a model's tensors): the same sum as
/// [`sha256_hex`] of the parts joined.
#[derive(Default)]
pub struct Sha256Hex(Sha256);

impl Sha256Hex {
    /// Adds `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The sum, lower-case hex.
    pub fn finish(self) -> String {
        self.0.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_replaces_the_file_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("result.json");
        write_atomic(&path, b"old").unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("result.json")]);
    }

    #[test]
    fn a_failed_write_names_the_file_and_keeps_the_old_content() {
        let dir = tempfile::tempdir().unwrap();
        // The final name is a non-empty folder: the rename fails, the temporary file goes.
        let path = dir.path().join("taken");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("inside"), b"kept").unwrap();
        let err = write_atomic(&path, b"new").unwrap_err();
        assert_eq!(err.path, path);
        assert_eq!(std::fs::read(path.join("inside")).unwrap(), b"kept");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
        // A folder that does not exist: the temporary file is named.
        let err = write_atomic(&dir.path().join("no/such/file"), b"x").unwrap_err();
        assert!(
            err.path.to_string_lossy().ends_with(".tmp"),
            "{}",
            err.path.display()
        );
    }

    #[test]
    fn sha256_of_abc_is_the_standard_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
