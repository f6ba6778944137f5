//! Claims on points: an exclusive OS file lock (`flock`) on `locks/<point>.lock`, held while a
//! worker trains the point and released by the kernel when its process ends — also when it is
//! killed, so a dead worker's point is picked up again (and resumed from its checkpoint). Works
//! for processes on one machine and, where the filesystem supports `flock` (NFS, Lustre mounted
//! with `flock`), across machines. Lock files are never deleted (deleting one would let two
//! workers hold locks on different files of the same name).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::Point;
use crate::error::TrainError;

/// The lock folder inside a sweep folder.
pub const LOCK_DIR: &str = "locks";

/// A held claim on a point; dropping it releases the point.
#[derive(Debug)]
pub struct Claim {
    _file: File,
    path: PathBuf,
}

impl Claim {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The lock file of a point (`None` for an lr-stage cell that has no folder yet).
pub fn lock_path(out: &Path, point: &Point) -> Option<PathBuf> {
    let name = match point {
        Point::Grid { lr, wd } => format!("grid-lr{lr}-wd{wd}.lock"),
        Point::LrStage { .. } => return None,
        Point::Final { seed } => format!("final-seed{seed}.lock"),
    };
    Some(out.join(LOCK_DIR).join(name))
}

fn open(path: &Path) -> Result<File, TrainError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| TrainError::io(path, e))
}

/// Claims `point` if no other worker holds it: `Some(claim)`, or `None` when it is taken. The
/// holder writes `pid@host` into the file for `vapt sweep status`.
pub fn try_claim(out: &Path, point: &Point) -> Result<Option<Claim>, TrainError> {
    let Some(path) = lock_path(out, point) else {
        return Ok(None);
    };
    let mut file = open(&path)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Ok(None),
        Err(TryLockError::Error(e)) => return Err(TrainError::io(&path, e)),
    }
    let holder = format!("{}@{}\n", std::process::id(), host());
    file.set_len(0)
        .and_then(|_| file.write_all(holder.as_bytes()))
        .map_err(|e| TrainError::io(&path, e))?;
    Ok(Some(Claim { _file: file, path }))
}

/// `Some("pid@host")` when a worker holds `point` now, `None` when nobody does. (Probing takes
/// the lock for an instant; a worker that tries to claim in that instant comes back later.)
pub fn holder(out: &Path, point: &Point) -> Result<Option<String>, TrainError> {
    let Some(path) = lock_path(out, point) else {
        return Ok(None);
    };
    if !path.exists() {
        return Ok(None);
    }
    let mut file = open(&path)?;
    match file.try_lock() {
        Ok(()) => Ok(None),
        Err(TryLockError::WouldBlock) => {
            let mut who = String::new();
            let _ = file.read_to_string(&mut who);
            Ok(Some(who.trim().to_string()))
        }
        Err(TryLockError::Error(e)) => Err(TrainError::io(&path, e)),
    }
}

/// Waits for the sweep-wide summary lock (workers write `summary.json` one at a time).
pub(super) fn summary_turn(out: &Path) -> Result<File, TrainError> {
    let path = out.join(LOCK_DIR).join("summary.lock");
    let file = open(&path)?;
    file.lock().map_err(|e| TrainError::io(&path, e))?;
    Ok(file)
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_point_has_one_holder_until_it_lets_go() {
        let tmp = tempfile::tempdir().unwrap();
        let p = Point::Grid { lr: 0.5, wd: 0.0 };
        assert_eq!(holder(tmp.path(), &p).unwrap(), None);
        let claim = try_claim(tmp.path(), &p).unwrap().expect("free point");
        assert!(claim.path().ends_with("locks/grid-lr0.5-wd0.lock"));
        // flock locks belong to open files: a second open file (another worker) is refused.
        assert!(try_claim(tmp.path(), &p).unwrap().is_none());
        let who = holder(tmp.path(), &p).unwrap().expect("held");
        assert!(who.starts_with(&format!("{}@", std::process::id())), "{who}");
        let other = Point::Final { seed: 42 };
        assert!(try_claim(tmp.path(), &other).unwrap().is_some());
        drop(claim);
        assert_eq!(holder(tmp.path(), &p).unwrap(), None);
        assert!(try_claim(tmp.path(), &p).unwrap().is_some());
        assert!(try_claim(tmp.path(), &Point::LrStage { lr: 1.0 })
            .unwrap()
            .is_none());
    }
}
