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
//! locks/<point>.lock            the claim of the worker training a point (an OS file lock)
//! logs/point-<N>.log            a point's log (Slurm's output; a local worker's error)
//! summary.json                  the chosen point, the grid table, final mean ± std
//! ```
//! Every point is a run folder: a finished point is skipped (never overwritten), an unfinished
//! one resumes from its checkpoint. Points are numbered (grid first, then seeds; the numbers
//! never change, also in fast mode) so that a job array can run `--point N`. Any number of
//! workers may share one folder ([`work`]): a point is trained by the worker holding its lock,
//! the lock dies with its process, and the summary is computed from finished points only.

mod claim;
mod status;
mod summary;
mod work;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use vapt_experts::Method;

use crate::config::{DataFormat, TrainConfig};
use crate::error::TrainError;
use crate::files::{read_json, write_json};
use crate::run_dir::differences;

pub use claim::{try_claim, Claim};
pub use status::{point_states, tail, PointState, PointStatus};
pub use summary::{choose, markdown, mean_std, summarize, write_summary, Cell, Summary};
pub use work::{run_all, run_point, work, PointOutcome};

/// The paper's VTAB lr grid.
pub const VTAB_LRS: [f64; 10] = [50.0, 25.0, 10.0, 5.0, 2.5, 1.0, 0.5, 0.25, 0.1, 0.05];
/// The paper's FGVC lr grid (no 0.05).
pub const FGVC_LRS: [f64; 9] = [50.0, 25.0, 10.0, 5.0, 2.5, 1.0, 0.5, 0.25, 0.1];
/// The authors' fine-tuning lr grid (VPT's `tune_vtab.py` / `tune_fgvc.py`, `finetune`), for full
/// fine-tuning and partial-k on both data families.
pub const FINETUNE_LRS: [f64; 4] = [0.005, 0.001, 0.0005, 0.0001];
/// vapt's LoRA lr grid (the authors have none): under the protocol's SGD, between the fine-tuning
/// grid (which moves the same weights, all of them) and the prompt grid (which moves inputs).
pub const LORA_LRS: [f64; 8] = [1.0, 0.5, 0.25, 0.1, 0.05, 0.025, 0.01, 0.005];
/// The weight-decay grid.
pub const WDS: [f64; 4] = [0.01, 0.001, 0.0001, 0.0];
/// The final-run seeds.
pub const SEEDS: [u64; 5] = [42, 44, 82, 100, 800];

/// The sweep file inside a sweep folder.
pub const SWEEP_FILE: &str = "sweep.json";
/// The summary file inside a sweep folder.
pub const SUMMARY_FILE: &str = "summary.json";
/// The folder of per-point logs inside a sweep folder.
pub const LOG_DIR: &str = "logs";

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

/// The lr grid of `method` on a data family: the authors' fine-tuning grid for full fine-tuning
/// and partial-k, vapt's documented LoRA grid, and the paper's VTAB / FGVC grid (SPEC §7.2–7.3)
/// for every other method (the authors tune linear, MLP, bias, adapter and prompt methods on it).
pub fn paper_lrs(format: DataFormat, method: Method) -> Vec<f64> {
    match (method, format) {
        (Method::Full | Method::Partial, _) => FINETUNE_LRS.to_vec(),
        (Method::Lora, _) => LORA_LRS.to_vec(),
        (_, DataFormat::Vtab | DataFormat::Folder) => VTAB_LRS.to_vec(),
        (_, DataFormat::Fgvc) => FGVC_LRS.to_vec(),
    }
}

impl SweepSpec {
    /// The paper's grid and seeds for `base`'s data format and method ([`paper_lrs`]). The
    /// backbone kind (supervised, MAE, MoCo v3) does not change it — the authors' tuning scripts
    /// use the same grids on every backbone — and travels in `base` into every run and the
    /// summary.
    pub fn paper(base: TrainConfig) -> Self {
        let lrs = paper_lrs(base.data.format, base.experts.method);
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

    /// The points' stages, as ranges of point numbers: the grid (fast mode: the wd stage, then
    /// the lr stage), then the final seeds. A stage needs the ones before it finished.
    pub fn stages(&self) -> Vec<(&'static str, std::ops::Range<usize>)> {
        let grid = if self.fast {
            let lr0 = self.fast_lr();
            let wd_stage = self.wds.len();
            let lr_stage = self.lrs.iter().filter(|&&lr| lr != lr0).count();
            vec![
                ("wd-stage", 0..wd_stage),
                ("lr-stage", wd_stage..wd_stage + lr_stage),
            ]
        } else {
            vec![("grid", 0..self.lrs.len() * self.wds.len())]
        };
        let end = grid.last().map_or(0, |(_, r)| r.end);
        let mut stages: Vec<_> = grid.into_iter().filter(|(_, r)| !r.is_empty()).collect();
        stages.push(("seeds", end..end + self.seeds.len()));
        stages
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
    /// A cell of the fast mode's lr stage whose wd the wd stage has not chosen yet.
    LrStage {
        /// Base lr.
        lr: f64,
    },
    /// A final run with the chosen cell.
    Final {
        /// Seed.
        seed: u64,
    },
}

impl Point {
    /// `grid lr 0.5 wd 0.001`, `final seed 42`.
    pub fn describe(&self) -> String {
        match self {
            Point::Grid { lr, wd } => format!("grid lr {lr} wd {wd}"),
            Point::LrStage { lr } => format!("grid lr {lr} wd (wd stage)"),
            Point::Final { seed } => format!("final seed {seed}"),
        }
    }

    /// The point's run folder (`None` for an lr-stage cell whose wd is not known yet).
    pub fn dir(&self, out: &Path) -> Option<PathBuf> {
        match *self {
            Point::Grid { lr, wd } => Some(grid_dir(out, lr, wd)),
            Point::LrStage { .. } => None,
            Point::Final { seed } => Some(final_dir(out, seed)),
        }
    }
}

/// Folder of a grid point.
pub fn grid_dir(out: &Path, lr: f64, wd: f64) -> PathBuf {
    out.join("grid").join(format!("lr{lr}-wd{wd}"))
}

/// Folder of a final run.
pub fn final_dir(out: &Path, seed: u64) -> PathBuf {
    out.join("final").join(format!("seed{seed}"))
}

/// The log file of point `index`.
pub fn log_path(out: &Path, index: usize) -> PathBuf {
    out.join(LOG_DIR).join(format!("point-{index}.log"))
}

/// The grid cells the sweep visits, given what has finished: every cell, or in fast mode the
/// wd stage and then the lr stage at the wd the first stage chose ([`Point::LrStage`] until
/// then).
fn grid_points(spec: &SweepSpec, out: &Path) -> Result<Vec<Point>, TrainError> {
    if !spec.fast {
        return Ok(spec
            .lrs
            .iter()
            .flat_map(|&lr| spec.wds.iter().map(move |&wd| Point::Grid { lr, wd }))
            .collect());
    }
    let lr0 = spec.fast_lr();
    let mut pts: Vec<Point> = spec.wds.iter().map(|&wd| Point::Grid { lr: lr0, wd }).collect();
    let stage1: Vec<Cell> = spec
        .wds
        .iter()
        .map(|&wd| summary::cell(out, lr0, wd))
        .collect::<Result<_, _>>()?;
    let wd = choose(&stage1).map(|(_, wd)| wd);
    pts.extend(spec.lrs.iter().filter(|&&lr| lr != lr0).map(|&lr| match wd {
        Some(wd) => Point::Grid { lr, wd },
        None => Point::LrStage { lr },
    }));
    Ok(pts)
}

/// Every point, in the numbering `--point N` uses: grid cells, then final seeds.
pub fn points(spec: &SweepSpec, out: &Path) -> Result<Vec<Point>, TrainError> {
    let mut pts = grid_points(spec, out)?;
    pts.extend(spec.seeds.iter().map(|&seed| Point::Final { seed }));
    Ok(pts)
}

/// Writes `sweep.json` for a new sweep, or checks that an existing sweep has the same base
/// configuration (the grid and seeds may grow); a different one is refused with the list of
/// differences.
pub fn prepare(spec: &SweepSpec, out: &Path) -> Result<(), TrainError> {
    check(spec, out)?;
    let path = out.join(SWEEP_FILE);
    if path.is_file() {
        return Ok(());
    }
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    write_json(&path, spec)
}

/// Checks `spec` against the sweep folder's `sweep.json`, if there is one (writes nothing).
pub fn check(spec: &SweepSpec, out: &Path) -> Result<(), TrainError> {
    let path = out.join(SWEEP_FILE);
    if !path.is_file() {
        return Ok(());
    }
    let old = read_spec(out)?;
    let value = |s: &SweepSpec| serde_json::to_value(&s.base).unwrap_or_default();
    let mut diffs = differences(&value(&old), &value(spec));
    if old.fast != spec.fast {
        diffs.push(format!("fast: {} → {}", old.fast, spec.fast));
    }
    if diffs.is_empty() {
        return Ok(());
    }
    Err(TrainError::Config {
        path,
        message: format!(
            "this sweep folder holds a sweep of another configuration; choose another --out, \
             or run the same command as before. Differences (folder → now): {}",
            diffs.join("; ")
        ),
    })
}

/// Reads `sweep.json` of a sweep folder.
pub fn read_spec(out: &Path) -> Result<SweepSpec, TrainError> {
    read_json(&out.join(SWEEP_FILE), "vapt sweep")
}

#[cfg(test)]
mod tests {
    use super::*;
    use vapt_vit::BackboneKind;

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

    /// The authors' fine-tuning grid for full and partial-k, vapt's LoRA grid, the paper's grid
    /// (per data family) for every other method — on every backbone.
    #[test]
    fn each_method_gets_its_grid() {
        let lrs = |f: DataFormat, m: Method| paper_lrs(f, m);
        for f in [DataFormat::Vtab, DataFormat::Fgvc] {
            assert_eq!(lrs(f, Method::Full), FINETUNE_LRS.to_vec());
            assert_eq!(lrs(f, Method::Partial), FINETUNE_LRS.to_vec());
            assert_eq!(lrs(f, Method::Lora), LORA_LRS.to_vec());
        }
        for m in [
            Method::Vapt,
            Method::Linear,
            Method::Mlp,
            Method::Bias,
            Method::Adapter,
            Method::VptDeepBias,
        ] {
            assert_eq!(lrs(DataFormat::Vtab, m), VTAB_LRS.to_vec(), "{m}");
            assert_eq!(lrs(DataFormat::Fgvc, m), FGVC_LRS.to_vec(), "{m}");
        }
        let mut base = TrainConfig::default();
        base.experts.set_method("partial-2".parse().unwrap());
        base.backbone.kind = Some(BackboneKind::Mae);
        assert_eq!(SweepSpec::paper(base).lrs, FINETUNE_LRS.to_vec());
    }

    /// Point numbers never move: in fast mode the lr stage is listed (waiting) before the wd
    /// stage has chosen, so the seeds keep their numbers, which are the stages' ranges.
    #[test]
    fn point_numbers_are_stable_and_match_the_stages() {
        let tmp = tempfile::tempdir().unwrap();
        let mut spec = SweepSpec::paper(TrainConfig::default());
        spec.seeds = vec![1, 2];
        let full = points(&spec, tmp.path()).unwrap();
        assert_eq!(full.len(), 42);
        assert_eq!(spec.stages(), vec![("grid", 0..40), ("seeds", 40..42)]);
        spec.fast = true;
        let fast = points(&spec, tmp.path()).unwrap();
        assert_eq!(fast.len(), 4 + 9 + 2);
        assert!(matches!(fast[4], Point::LrStage { .. }));
        assert_eq!(fast[13], Point::Final { seed: 1 });
        assert_eq!(
            spec.stages(),
            vec![("wd-stage", 0..4), ("lr-stage", 4..13), ("seeds", 13..15)]
        );
    }

    #[test]
    fn a_folder_of_another_configuration_is_refused_with_the_differences() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = SweepSpec::paper(TrainConfig::default());
        prepare(&spec, tmp.path()).unwrap();
        let mut more = spec.clone();
        more.seeds.push(7);
        prepare(&more, tmp.path()).unwrap();
        let mut other = spec.clone();
        other.base.optim.epochs = 3;
        other.base.experts.set_method("vpt-deep".parse().unwrap());
        let msg = prepare(&other, tmp.path()).unwrap_err().to_string();
        assert!(msg.contains("sweep.json"), "{msg}");
        assert!(msg.contains("optim.epochs: 100 → 3"), "{msg}");
        assert!(msg.contains("experts.method: \"vapt\" → \"vpt-deep\""), "{msg}");
    }
}
