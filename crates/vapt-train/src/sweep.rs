//! The VTAB-1k / FGVC protocol for one task (SPEC §7.2–7.3): an lr × wd grid trained on the
//! sweep split (train800 / FGVC train) and scored on the validation split (val200 / FGVC val) at
//! the last epoch; the best cell (ties → smaller lr, then larger wd; a diverged cell scores 0)
//! is retrained with 5 seeds on the final split (train800val200 / FGVC train) and scored on test.
//!
//! Folder layout (`--out`):
//! ```text
//! sweep.json                    the base configuration, grid and seeds (written first)
//! grid/lr<lr>-wd<wd>/           one run folder per grid point
//! final/seed<seed>/             one run folder per final seed
//! summary.json                  the chosen point, the grid table, final mean ± std
//! ```
//! Every point is a run folder: a finished point is skipped (never overwritten), an unfinished
//! one resumes from its checkpoint. Points are numbered (grid first, then seeds) so that a job
//! array can run `--point N` in parallel; `vapt sweep report` aggregates.

use std::path::{Path, PathBuf};

use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use vapt_vit::BackboneKind;

use crate::config::{DataFormat, TrainConfig};
use crate::error::TrainError;
use crate::files::{read_json, write_json};
use crate::monitor::Monitor;
use crate::run_dir::{read_result, Outcome, RunOptions, RunStatus};
use crate::trainer::train;

/// The paper's VTAB lr grid.
pub const VTAB_LRS: [f64; 10] = [50.0, 25.0, 10.0, 5.0, 2.5, 1.0, 0.5, 0.25, 0.1, 0.05];
/// The paper's FGVC lr grid (no 0.05).
pub const FGVC_LRS: [f64; 9] = [50.0, 25.0, 10.0, 5.0, 2.5, 1.0, 0.5, 0.25, 0.1];
/// The weight-decay grid.
pub const WDS: [f64; 4] = [0.01, 0.001, 0.0001, 0.0];
/// The final-run seeds.
pub const SEEDS: [u64; 5] = [42, 44, 82, 100, 800];

/// A sweep: base configuration, grid, seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepSpec {
    /// Everything but lr, wd, seed and splits.
    pub base: TrainConfig,
    /// Learning rates (base values, scaled by batch/256).
    pub lrs: Vec<f64>,
    /// Weight decays.
    pub wds: Vec<f64>,
    /// Seeds of the final runs.
    pub seeds: Vec<u64>,
    /// Coordinate mode: wd at lr `fast_lr` first, then lr at the best wd.
    pub fast: bool,
}

impl SweepSpec {
    /// The paper's grid and seeds for `base`'s data format. The authors' tuning scripts use one
    /// grid per data family (SPEC §7.2–7.3) for every backbone kind (supervised, MAE, MoCo v3) and
    /// every method, so neither changes it; the backbone kind travels in `base` into every run and
    /// the summary.
    pub fn paper(base: TrainConfig) -> Self {
        let lrs = match base.data.format {
            DataFormat::Vtab | DataFormat::Folder => VTAB_LRS.to_vec(),
            DataFormat::Fgvc => FGVC_LRS.to_vec(),
        };
        Self {
            base,
            lrs,
            wds: WDS.to_vec(),
            seeds: SEEDS.to_vec(),
            fast: false,
        }
    }

    /// The (train, eval) splits of grid points and of final runs.
    pub fn splits(&self) -> ((&'static str, &'static str), (&'static str, &'static str)) {
        match self.base.data.format {
            DataFormat::Vtab => (("train800", "val200"), ("train800val200", "test")),
            DataFormat::Fgvc | DataFormat::Folder => (("train", "val"), ("train", "test")),
        }
    }

    /// The configuration of grid point (lr, wd).
    pub fn grid_config(&self, lr: f64, wd: f64) -> TrainConfig {
        let mut c = self.base.clone();
        let ((tr, ev), _) = self.splits();
        c.data.train_split = tr.into();
        c.data.eval_split = ev.into();
        c.optim.lr = lr;
        c.optim.wd = wd;
        c.seed = self.seeds.first().copied().unwrap_or(42);
        c
    }

    /// The configuration of a final run.
    pub fn final_config(&self, lr: f64, wd: f64, seed: u64) -> TrainConfig {
        let mut c = self.grid_config(lr, wd);
        let (_, (tr, ev)) = self.splits();
        c.data.train_split = tr.into();
        c.data.eval_split = ev.into();
        c.seed = seed;
        c
    }

    /// The lr the fast mode sweeps wd at: 5 when the grid has it, else the middle lr.
    pub fn fast_lr(&self) -> f64 {
        if self.lrs.contains(&5.0) {
            5.0
        } else {
            self.lrs.get(self.lrs.len() / 2).copied().unwrap_or(5.0)
        }
    }
}

/// One addressable unit of work.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Point {
    /// A grid cell.
    Grid {
        /// Base lr.
        lr: f64,
        /// Weight decay.
        wd: f64,
    },
    /// A final run with the chosen cell.
    Final {
        /// Seed.
        seed: u64,
    },
}

/// Folder of a grid point.
pub fn grid_dir(out: &Path, lr: f64, wd: f64) -> PathBuf {
    out.join("grid").join(format!("lr{lr}-wd{wd}"))
}

/// Folder of a final run.
pub fn final_dir(out: &Path, seed: u64) -> PathBuf {
    out.join("final").join(format!("seed{seed}"))
}

/// One grid cell's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// Base lr.
    pub lr: f64,
    /// Weight decay.
    pub wd: f64,
    /// Last-epoch validation top-1 (0 when diverged), `None` while not finished.
    pub val_top1: Option<f64>,
    /// ok / diverged / pending.
    pub status: String,
}

/// `summary.json`: the state of a sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Task.
    pub task: String,
    /// Method.
    pub method: String,
    /// Every grid cell run so far (fast mode: only the cells it visits).
    pub grid: Vec<Cell>,
    /// The chosen (lr, wd), once the grid is complete.
    pub chosen: Option<(f64, f64)>,
    /// Final-run seeds.
    pub seeds: Vec<u64>,
    /// Final test top-1 per seed (`None` while pending).
    pub finals: Vec<Option<f64>>,
    /// Mean of the final test top-1 (all seeds done).
    pub mean: Option<f64>,
    /// Population standard deviation (ddof 0), as the official code.
    pub std: Option<f64>,
    /// Trainable parameters of a final run.
    pub trainable_params: Option<usize>,
    /// All parameters of a final run.
    pub total_params: Option<usize>,
    /// The backbone's pre-training kind (from the finished runs).
    #[serde(default)]
    pub backbone: BackboneKind,
}

fn cell(out: &Path, lr: f64, wd: f64) -> Result<Cell, TrainError> {
    Ok(match read_result(&grid_dir(out, lr, wd))? {
        Some(r) => Cell {
            lr,
            wd,
            val_top1: Some(r.eval_top1),
            status: match r.status {
                RunStatus::Ok => "ok".into(),
                RunStatus::Diverged => "diverged".into(),
            },
        },
        None => Cell {
            lr,
            wd,
            val_top1: None,
            status: "pending".into(),
        },
    })
}

/// The best finished cell: highest top-1, ties → smaller lr, then larger wd. `None` if any cell
/// is still pending.
pub fn choose(cells: &[Cell]) -> Option<(f64, f64)> {
    let mut best: Option<(&Cell, f64)> = None;
    for c in cells {
        let v = c.val_top1?;
        let better = match best {
            None => true,
            Some((b, bv)) => v > bv || (v == bv && (c.lr < b.lr || (c.lr == b.lr && c.wd > b.wd))),
        };
        if better {
            best = Some((c, v));
        }
    }
    best.map(|(c, _)| (c.lr, c.wd))
}

/// The grid cells the sweep visits, given what has finished (fast mode's second stage depends
/// on its first). The second value says whether the list is final (no stage left to unlock).
pub fn grid_points(spec: &SweepSpec, out: &Path) -> Result<(Vec<(f64, f64)>, bool), TrainError> {
    if !spec.fast {
        let pts = spec
            .lrs
            .iter()
            .flat_map(|&lr| spec.wds.iter().map(move |&wd| (lr, wd)))
            .collect();
        return Ok((pts, true));
    }
    let lr0 = spec.fast_lr();
    let mut pts: Vec<(f64, f64)> = spec.wds.iter().map(|&wd| (lr0, wd)).collect();
    let stage1: Vec<Cell> = pts
        .iter()
        .map(|&(lr, wd)| cell(out, lr, wd))
        .collect::<Result<_, _>>()?;
    match choose(&stage1) {
        Some((_, wd)) => {
            pts.extend(spec.lrs.iter().filter(|&&lr| lr != lr0).map(|&lr| (lr, wd)));
            Ok((pts, true))
        }
        None => Ok((pts, false)),
    }
}

/// Every point, in the numbering `--point N` uses: grid cells, then final seeds.
pub fn points(spec: &SweepSpec, out: &Path) -> Result<(Vec<Point>, bool), TrainError> {
    let (grid, complete) = grid_points(spec, out)?;
    let mut pts: Vec<Point> = grid.into_iter().map(|(lr, wd)| Point::Grid { lr, wd }).collect();
    pts.extend(spec.seeds.iter().map(|&seed| Point::Final { seed }));
    Ok((pts, complete))
}

/// Reads the sweep's state from its folder.
pub fn summarize(spec: &SweepSpec, out: &Path) -> Result<Summary, TrainError> {
    let (grid, complete) = grid_points(spec, out)?;
    let cells: Vec<Cell> = grid
        .iter()
        .map(|&(lr, wd)| cell(out, lr, wd))
        .collect::<Result<_, _>>()?;
    let chosen = if complete { choose(&cells) } else { None };
    let mut finals = Vec::new();
    let mut params = (None, None);
    // The kind the runs read off the weights (the configuration's, until one has finished).
    let mut backbone = spec.base.backbone.kind.unwrap_or_default();
    for &seed in &spec.seeds {
        let r = read_result(&final_dir(out, seed))?;
        if let Some(r) = &r {
            params = (Some(r.trainable_params), Some(r.total_params));
            backbone = r.backbone_kind;
        }
        finals.push(r.map(|r| r.eval_top1));
    }
    let done: Vec<f64> = finals.iter().flatten().copied().collect();
    let (mean, std) = if !done.is_empty() && done.len() == finals.len() {
        let m = done.iter().sum::<f64>() / done.len() as f64;
        let v = done.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / done.len() as f64;
        (Some(m), Some(v.sqrt()))
    } else {
        (None, None)
    };
    Ok(Summary {
        task: spec.base.data.task.clone(),
        method: spec.base.experts.method.to_string(),
        grid: cells,
        chosen,
        seeds: spec.seeds.clone(),
        finals,
        mean,
        std,
        trainable_params: params.0,
        total_params: params.1,
        backbone,
    })
}

/// The sweep file inside a sweep folder.
pub const SWEEP_FILE: &str = "sweep.json";
/// The summary file inside a sweep folder.
pub const SUMMARY_FILE: &str = "summary.json";

/// Writes `sweep.json` for a new sweep, or checks that an existing sweep has the same base
/// configuration (the grid and seeds may grow).
pub fn prepare(spec: &SweepSpec, out: &Path) -> Result<(), TrainError> {
    let path = out.join(SWEEP_FILE);
    if path.is_file() {
        let old = read_spec(out)?;
        if old.base != spec.base {
            return Err(TrainError::ConfigMismatch {
                path,
                keys: "base configuration (method, experts, data, backbone or schedule)".into(),
            });
        }
        return Ok(());
    }
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    write_json(&path, spec)
}

/// Reads `sweep.json` of a sweep folder.
pub fn read_spec(out: &Path) -> Result<SweepSpec, TrainError> {
    read_json(&out.join(SWEEP_FILE), "vapt sweep")
}

/// Writes `summary.json` and returns the summary.
pub fn write_summary(spec: &SweepSpec, out: &Path) -> Result<Summary, TrainError> {
    let s = summarize(spec, out)?;
    write_json(&out.join(SUMMARY_FILE), &s)?;
    Ok(s)
}

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
}

/// Runs point `index` (see [`points`]); a final point needs the grid to be complete.
pub fn run_point<B: AutodiffBackend>(
    spec: &SweepSpec,
    out: &Path,
    index: usize,
    device: &B::Device,
    device_label: &str,
    monitor: &mut dyn Monitor,
) -> Result<(Point, PointOutcome), TrainError> {
    let (pts, complete) = points(spec, out)?;
    let point = *pts.get(index).ok_or_else(|| TrainError::Config {
        path: out.join(SWEEP_FILE),
        message: format!(
            "no point {index}: this sweep has points 0..{}{}",
            pts.len(),
            if complete {
                ""
            } else {
                " so far (the fast mode's second stage is not unlocked yet)"
            }
        ),
    })?;
    let (cfg, dir) = match point {
        Point::Grid { lr, wd } => (spec.grid_config(lr, wd), grid_dir(out, lr, wd)),
        Point::Final { seed } => {
            let summary = summarize(spec, out)?;
            let Some((lr, wd)) = summary.chosen else {
                let pending: Vec<String> = summary
                    .grid
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.val_top1.is_none())
                    .map(|(i, _)| i.to_string())
                    .collect();
                return Err(TrainError::Config {
                    path: out.join(SWEEP_FILE),
                    message: format!(
                        "final point {index} needs the whole grid; pending points: {}",
                        if pending.is_empty() {
                            "none yet listed (fast mode stage 1)".into()
                        } else {
                            pending.join(", ")
                        }
                    ),
                });
            };
            (spec.final_config(lr, wd, seed), final_dir(out, seed))
        }
    };
    if read_result(&dir)?.is_some() {
        return Ok((point, PointOutcome::Skipped));
    }
    let opts = RunOptions {
        out: dir,
        resume: true,
        stop_after: None,
        device_label: device_label.to_string(),
    };
    match train::<B>(&cfg, &opts, device, monitor) {
        Ok(Outcome::Finished(_)) => Ok((point, PointOutcome::Trained)),
        Ok(Outcome::Stopped(_)) => Ok((point, PointOutcome::Stopped)),
        Err(TrainError::Diverged { .. }) => Ok((point, PointOutcome::Diverged)),
        Err(e) => Err(e),
    }
}

/// Runs every point in order (skipping finished ones) and writes `summary.json`. `on_point`
/// hears about each point as it ends. Stops early if a point was stopped by the user.
pub fn run_all<B: AutodiffBackend>(
    spec: &SweepSpec,
    out: &Path,
    device: &B::Device,
    device_label: &str,
    monitor: &mut dyn FnMut() -> Box<dyn Monitor>,
    on_point: &mut dyn FnMut(usize, Point, &PointOutcome),
) -> Result<Summary, TrainError> {
    prepare(spec, out)?;
    let mut index = 0;
    loop {
        let (pts, _) = points(spec, out)?;
        if index >= pts.len() {
            break;
        }
        let mut m = monitor();
        let (point, outcome) = run_point::<B>(spec, out, index, device, device_label, m.as_mut())?;
        drop(m);
        on_point(index, point, &outcome);
        if outcome == PointOutcome::Stopped {
            break;
        }
        index += 1;
    }
    write_summary(spec, out)
}

/// Mean ± std as the report prints it.
pub fn mean_std(s: &Summary) -> String {
    match (s.mean, s.std) {
        (Some(m), Some(sd)) => format!("{m:.2} ± {sd:.2}"),
        _ => "pending".into(),
    }
}

/// A Markdown view of a sweep: the grid (validation top-1), the chosen cell, the final runs.
pub fn markdown(spec: &SweepSpec, s: &Summary) -> String {
    let mut out = format!("## {} — {}\n\n", s.task, s.method);
    out.push_str("| lr \\ wd |");
    for wd in &spec.wds {
        out.push_str(&format!(" {wd} |"));
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(spec.wds.len()));
    out.push('\n');
    for lr in &spec.lrs {
        out.push_str(&format!("| {lr} |"));
        for wd in &spec.wds {
            let c = s.grid.iter().find(|c| c.lr == *lr && c.wd == *wd);
            let txt = match c {
                Some(c) if c.status == "diverged" => "diverged".to_string(),
                Some(Cell {
                    val_top1: Some(v), ..
                }) => {
                    if s.chosen == Some((*lr, *wd)) {
                        format!("**{v:.2}**")
                    } else {
                        format!("{v:.2}")
                    }
                }
                Some(_) => "pending".into(),
                None => "—".into(),
            };
            out.push_str(&format!(" {txt} |"));
        }
        out.push('\n');
    }
    match s.chosen {
        Some((lr, wd)) => out.push_str(&format!(
            "\nchosen: lr {lr}, wd {wd} (validation top-1, last epoch)\n"
        )),
        None => out.push_str("\nchosen: pending (grid incomplete)\n"),
    }
    let vals: Vec<String> = s
        .seeds
        .iter()
        .zip(&s.finals)
        .map(|(seed, v)| match v {
            Some(v) => format!("{seed}: {v:.2}"),
            None => format!("{seed}: pending"),
        })
        .collect();
    out.push_str(&format!(
        "final test top-1: {} ({})\n",
        mean_std(s),
        vals.join(", ")
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(lr: f64, wd: f64, v: f64) -> Cell {
        Cell {
            lr,
            wd,
            val_top1: Some(v),
            status: "ok".into(),
        }
    }

    #[test]
    fn ties_go_to_the_smaller_lr_then_the_larger_wd() {
        let cells = [
            c(10.0, 0.0, 80.0),
            c(5.0, 0.0, 80.0),
            c(5.0, 0.001, 80.0),
            c(50.0, 0.01, 79.0),
        ];
        assert_eq!(choose(&cells), Some((5.0, 0.001)));
        let mut pending = cells.to_vec();
        pending[0].val_top1 = None;
        assert_eq!(choose(&pending), None, "an unfinished grid chooses nothing");
    }

    #[test]
    fn grid_and_final_configs_use_the_protocol_splits() {
        let spec = SweepSpec::paper(TrainConfig::default());
        assert_eq!(spec.lrs.len() * spec.wds.len(), 40);
        let g = spec.grid_config(2.5, 0.001);
        assert_eq!(
            (g.data.train_split.as_str(), g.data.eval_split.as_str()),
            ("train800", "val200")
        );
        assert_eq!((g.optim.lr, g.optim.wd), (2.5, 0.001));
        let f = spec.final_config(2.5, 0.001, 800);
        assert_eq!(
            (f.data.train_split.as_str(), f.data.eval_split.as_str()),
            ("train800val200", "test")
        );
        assert_eq!(f.seed, 800);
    }
}
