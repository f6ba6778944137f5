//! A sweep's state read off its folder: the grid cells, the chosen cell, the final seeds'
//! mean ± std (`summary.json`), and its Markdown view. Only finished points count.

use std::path::Path;

use serde::{Deserialize, Serialize};

use vapt_vit::BackboneKind;

use super::{claim, final_dir, grid_dir, grid_points, Point, SweepSpec, SUMMARY_FILE};
use crate::error::TrainError;
use crate::files::write_json;
use crate::run_dir::{read_result, RunStatus};

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
    /// Parameters of the pre-trained backbone (from a final run; older results lack it).
    #[serde(default)]
    pub backbone_params: Option<usize>,
    /// The backbone's pre-training kind (from the finished runs).
    #[serde(default)]
    pub backbone: BackboneKind,
}

pub(super) fn cell(out: &Path, lr: f64, wd: f64) -> Result<Cell, TrainError> {
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

/// Reads the sweep's state from its folder.
pub fn summarize(spec: &SweepSpec, out: &Path) -> Result<Summary, TrainError> {
    let grid = grid_points(spec, out)?;
    let complete = grid.iter().all(|p| matches!(p, Point::Grid { .. }));
    let cells: Vec<Cell> = grid
        .iter()
        .filter_map(|p| match *p {
            Point::Grid { lr, wd } => Some(cell(out, lr, wd)),
            _ => None,
        })
        .collect::<Result<_, _>>()?;
    let chosen = if complete { choose(&cells) } else { None };
    let mut finals = Vec::new();
    let mut params = (None, None, None);
    // The kind the runs read off the weights (the configuration's, until one has finished).
    let mut backbone = spec.base.backbone.kind.unwrap_or_default();
    for &seed in &spec.seeds {
        let r = read_result(&final_dir(out, seed))?;
        if let Some(r) = &r {
            params = (Some(r.trainable_params), Some(r.total_params), r.backbone_params);
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
        method: spec.base.experts.label(),
        grid: cells,
        chosen,
        seeds: spec.seeds.clone(),
        finals,
        mean,
        std,
        trainable_params: params.0,
        total_params: params.1,
        backbone_params: params.2,
        backbone,
    })
}

/// Writes `summary.json` and returns the summary. Workers sharing the folder take turns (a
/// lock), each reading the folder after its own result landed, so the last one to finish writes
/// the complete state.
pub fn write_summary(spec: &SweepSpec, out: &Path) -> Result<Summary, TrainError> {
    let _turn = claim::summary_turn(out)?;
    let s = summarize(spec, out)?;
    write_json(&out.join(SUMMARY_FILE), &s)?;
    Ok(s)
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
}
