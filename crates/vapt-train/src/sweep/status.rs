//! Where every point of a sweep stands, read off the folder and the locks: done, diverged,
//! running (a worker holds its lock), failed (started, nobody on it: an error or a killed
//! worker; it resumes from its checkpoint when run again), waiting (needs an earlier stage) or
//! pending. `vapt sweep status` prints it; `--slurm` submits what is neither done nor running.

use std::path::{Path, PathBuf};

use super::{claim, log_path, points, summarize, Point, SweepSpec};
use crate::error::TrainError;
use crate::run_dir::{read_result, RunStatus, CONFIG_FILE};

/// The state of one point.
#[derive(Debug, Clone, PartialEq)]
pub enum PointState {
    /// Finished (validation or test top-1).
    Done(f64),
    /// Finished with a NaN/inf loss (scores 0).
    Diverged,
    /// A worker holds it (`pid@host`).
    Running(String),
    /// Started, not finished, and no worker holds it.
    Failed,
    /// Needs an earlier stage (the grid, or fast mode's wd stage) finished.
    Waiting,
    /// Never started.
    Pending,
}

impl PointState {
    /// Finished, one way or the other.
    pub fn finished(&self) -> bool {
        matches!(self, PointState::Done(_) | PointState::Diverged)
    }

    /// `done`, `diverged`, `running`, `failed`, `waiting`, `pending`.
    pub fn word(&self) -> &'static str {
        match self {
            PointState::Done(_) => "done",
            PointState::Diverged => "diverged",
            PointState::Running(_) => "running",
            PointState::Failed => "failed",
            PointState::Waiting => "waiting",
            PointState::Pending => "pending",
        }
    }
}

/// One point with its state.
#[derive(Debug, Clone, PartialEq)]
pub struct PointStatus {
    /// Its number.
    pub index: usize,
    /// The point.
    pub point: Point,
    /// Its state.
    pub state: PointState,
    /// Its log file, when it has one.
    pub log: Option<PathBuf>,
}

/// The state of every point, in point order.
pub fn point_states(spec: &SweepSpec, out: &Path) -> Result<Vec<PointStatus>, TrainError> {
    let grid_chosen = summarize(spec, out)?.chosen.is_some();
    let mut all = Vec::new();
    for (index, point) in points(spec, out)?.into_iter().enumerate() {
        let log = Some(log_path(out, index)).filter(|p| p.is_file());
        let state = match point.dir(out) {
            None => PointState::Waiting,
            Some(dir) => match read_result(&dir)? {
                Some(r) if r.status == RunStatus::Ok => PointState::Done(r.eval_top1),
                Some(_) => PointState::Diverged,
                None => match claim::holder(out, &point)? {
                    Some(who) => PointState::Running(who),
                    None if dir.join(CONFIG_FILE).exists() || log.is_some() => PointState::Failed,
                    None if matches!(point, Point::Final { .. }) && !grid_chosen => PointState::Waiting,
                    None => PointState::Pending,
                },
            },
        };
        all.push(PointStatus {
            index,
            point,
            state,
            log,
        });
    }
    Ok(all)
}

/// The last `n` lines of a text file (empty when it cannot be read).
pub fn tail(path: &Path, n: usize) -> Vec<String> {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|s| s.to_string())
        .collect()
}
