//! Training points: one by number ([`run_point`], a job-array task) or every point a worker can
//! get ([`work`]), with any number of other workers on the same folder. A point is trained only
//! under its claim; a finished point is skipped; a point whose worker died is claimed again and
//! resumed from its checkpoint.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use burn::tensor::backend::AutodiffBackend;

use super::claim::{holder, try_claim};
use super::{
    final_dir, grid_dir, log_path, points, prepare, summarize, write_summary, Point, Summary, SweepSpec,
    SWEEP_FILE,
};
use crate::error::TrainError;
use crate::monitor::Monitor;
use crate::run_dir::{read_result, Outcome, RunOptions};
use crate::trainer::train;

/// What happened to one point in this invocation.
#[derive(Debug, Clone, PartialEq)]
pub enum PointOutcome {
    /// Already finished earlier: skipped.
    Skipped,
    /// Trained to the end now.
    Trained,
    /// Diverged now (recorded; scores 0).
    Diverged,
    /// Stopped resumably.
    Stopped,
    /// Another worker (`pid@host`) is training it.
    Busy(String),
}

fn no_point(out: &Path, message: String) -> TrainError {
    TrainError::Config {
        path: out.join(SWEEP_FILE),
        message,
    }
}

/// The configuration and folder of `point`, or why it cannot run yet (`summary`: the folder's
/// state, which holds the chosen cell a final point needs).
fn plan(
    spec: &SweepSpec,
    out: &Path,
    index: usize,
    point: Point,
    summary: &Summary,
) -> Result<(crate::TrainConfig, std::path::PathBuf), TrainError> {
    match point {
        Point::Grid { lr, wd } => Ok((spec.grid_config(lr, wd), grid_dir(out, lr, wd))),
        Point::LrStage { lr } => Err(no_point(
            out,
            format!(
                "point {index} (lr {lr}) is in the fast mode's lr stage: it needs the wd stage \
                 (points 0..{}) finished first",
                spec.wds.len()
            ),
        )),
        Point::Final { seed } => {
            let Some((lr, wd)) = summary.chosen else {
                let pending: Vec<String> = summary
                    .grid
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.val_top1.is_none())
                    .map(|(i, _)| i.to_string())
                    .collect();
                return Err(no_point(
                    out,
                    format!(
                        "final point {index} needs the whole grid; unfinished grid points: {}",
                        if pending.is_empty() {
                            "the lr stage (fast mode)".into()
                        } else {
                            pending.join(", ")
                        }
                    ),
                ));
            };
            Ok((spec.final_config(lr, wd, seed), final_dir(out, seed)))
        }
    }
}

/// Trains a claimed point; an error is also appended to the point's log.
fn train_claimed<B: AutodiffBackend>(
    cfg: &crate::TrainConfig,
    dir: &Path,
    out: &Path,
    index: usize,
    device: &B::Device,
    device_label: &str,
    monitor: &mut dyn Monitor,
) -> Result<PointOutcome, TrainError> {
    if read_result(dir)?.is_some() {
        return Ok(PointOutcome::Skipped);
    }
    let opts = RunOptions {
        out: dir.to_path_buf(),
        resume: true,
        stop_after: None,
        device_label: device_label.to_string(),
        allow_changed: Vec::new(),
    };
    match train::<B>(cfg, &opts, device, monitor) {
        Ok(Outcome::Finished(_)) => Ok(PointOutcome::Trained),
        Ok(Outcome::Stopped(_)) => Ok(PointOutcome::Stopped),
        Err(TrainError::Diverged { .. }) => Ok(PointOutcome::Diverged),
        Err(e) => {
            let log = log_path(out, index);
            let _ = std::fs::create_dir_all(log.parent().unwrap_or(out));
            if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(&log) {
                let _ = writeln!(f, "point {index} failed on {device_label}: {e}");
            }
            Err(e)
        }
    }
}

/// Runs point `index` (see [`points`]) unless it is finished or another worker holds it; a final
/// point needs the grid to be complete.
pub fn run_point<B: AutodiffBackend>(
    spec: &SweepSpec,
    out: &Path,
    index: usize,
    device: &B::Device,
    device_label: &str,
    monitor: &mut dyn Monitor,
) -> Result<(Point, PointOutcome), TrainError> {
    let pts = points(spec, out)?;
    let point = *pts.get(index).ok_or_else(|| {
        no_point(
            out,
            format!("no point {index}: this sweep has points 0..{}", pts.len()),
        )
    })?;
    let (cfg, dir) = plan(spec, out, index, point, &summarize(spec, out)?)?;
    if read_result(&dir)?.is_some() {
        return Ok((point, PointOutcome::Skipped));
    }
    // `vapt sweep status` probes locks for an instant: try for a few seconds before deciding
    // that another worker has the point.
    let mut claim = None;
    for _ in 0..20 {
        claim = try_claim(out, &point)?;
        if claim.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if claim.is_none() {
        let who = holder(out, &point)?.unwrap_or_else(|| "another worker".into());
        return Ok((point, PointOutcome::Busy(who)));
    }
    let outcome = train_claimed::<B>(&cfg, &dir, out, index, device, device_label, monitor)?;
    Ok((point, outcome))
}

/// Works on the sweep until nothing is left that this worker can do: claims the first point
/// that is neither finished nor held by another worker, trains it, writes the summary, and
/// starts over (a point finished before it came to it is reported once as skipped); waits
/// (`poll`) while the remaining points are held by others or need a stage they are finishing.
/// Any number of workers may run this on one folder at once.
pub fn work<B: AutodiffBackend>(
    spec: &SweepSpec,
    out: &Path,
    device: &B::Device,
    device_label: &str,
    monitor: &mut dyn FnMut() -> Box<dyn Monitor>,
    on_point: &mut dyn FnMut(usize, Point, &PointOutcome),
    poll: Duration,
) -> Result<Summary, TrainError> {
    let mut reported = std::collections::BTreeSet::new();
    loop {
        let pts = points(spec, out)?;
        let summary = summarize(spec, out)?;
        let mut blocked = false;
        let mut ran = None;
        for (index, &point) in pts.iter().enumerate() {
            let Some(dir) = point.dir(out) else {
                blocked = true;
                continue;
            };
            if read_result(&dir)?.is_some() {
                // Finished before this worker came to it (earlier, or by another worker).
                if reported.insert(index) {
                    on_point(index, point, &PointOutcome::Skipped);
                }
                continue;
            }
            if matches!(point, Point::Final { .. }) && summary.chosen.is_none() {
                blocked = true;
                continue;
            }
            let Some(_claim) = try_claim(out, &point)? else {
                blocked = true;
                continue;
            };
            let (cfg, dir) = plan(spec, out, index, point, &summary)?;
            let mut m = monitor();
            let outcome = train_claimed::<B>(&cfg, &dir, out, index, device, device_label, m.as_mut())?;
            drop(m);
            reported.insert(index);
            on_point(index, point, &outcome);
            ran = Some(outcome);
            break;
        }
        match ran {
            Some(PointOutcome::Stopped) => break,
            Some(_) => {
                write_summary(spec, out)?;
            }
            None if blocked => std::thread::sleep(poll),
            None => break,
        }
    }
    write_summary(spec, out)
}

/// Prepares the folder and runs [`work`] on it (polling every second while other workers hold
/// the remaining points): every point this process can get, then `summary.json`.
pub fn run_all<B: AutodiffBackend>(
    spec: &SweepSpec,
    out: &Path,
    device: &B::Device,
    device_label: &str,
    monitor: &mut dyn FnMut() -> Box<dyn Monitor>,
    on_point: &mut dyn FnMut(usize, Point, &PointOutcome),
) -> Result<Summary, TrainError> {
    prepare(spec, out)?;
    work::<B>(
        spec,
        out,
        device,
        device_label,
        monitor,
        on_point,
        Duration::from_secs(1),
    )
}
