//! The pictures of vapt's results, as [`vapt_plot`] charts: a run's curves, the MoE view, a
//! sweep's lr × wd grid and its seeds. Each names where its numbers come from.

use std::path::Path;

use vapt_experts::MoeView;
use vapt_plot::{Heatmap, Heatmaps, LineChart, LinePanel, SeedGroup, SeedPoints, Series};

use crate::error::TrainError;
use crate::run_dir::EpochRow;
use crate::sweep::Summary;

/// The file a finished run's curves are written to, in its folder.
pub const CURVES_FILE: &str = "curves.svg";

/// Loss, top-1 (train and evaluation) and the learning rate against the epoch (1 = after the
/// first epoch).
pub fn curves(history: &[EpochRow], title: &str, source: &str) -> LineChart {
    let line = |label: &str, f: &dyn Fn(&EpochRow) -> Option<f64>| Series {
        label: label.into(),
        points: history
            .iter()
            .filter_map(|r| Some(((r.epoch + 1) as f64, f(r)?)))
            .collect(),
    };
    LineChart {
        title: title.into(),
        source: source.into(),
        x_label: "epoch".into(),
        x_integers: true,
        panels: vec![
            LinePanel {
                y_label: "cross-entropy loss".into(),
                series: vec![
                    line("train", &|r| Some(r.train_loss)),
                    line("eval", &|r| r.eval_loss),
                ],
            },
            LinePanel {
                y_label: "top-1 (%)".into(),
                series: vec![
                    line("train", &|r| Some(r.train_top1)),
                    line("eval", &|r| r.eval_top1),
                ],
            },
            LinePanel {
                y_label: "learning rate".into(),
                series: vec![line("lr", &|r| Some(r.lr))],
            },
        ],
    }
}

/// Writes `curves.svg` of a run into `dir`.
pub fn write_curves(dir: &Path, history: &[EpochRow], label: &str) -> Result<(), TrainError> {
    let path = dir.join(CURVES_FILE);
    let chart = curves(history, label, &dir.display().to_string());
    let svg = vapt_plot::svg(&chart).map_err(|e| TrainError::Config {
        path: path.clone(),
        message: e.to_string(),
    })?;
    crate::files::write_atomic(&path, svg.as_bytes())
}

/// The MoE view: per block (rows) and head (columns), the gate mass on the prompt experts, for
/// the CLS query and for the patch queries, on one colour scale.
pub fn moe(view: &MoeView, source: &str) -> Heatmaps {
    let heads = view.blocks.iter().map(Vec::len).max().unwrap_or(0);
    let max = view
        .blocks
        .iter()
        .flatten()
        .flat_map(|g| [g.cls_query.prompt, g.patch_query.prompt])
        .fold(1e-9f64, f64::max);
    let panel = |title: &str, pick: fn(&vapt_experts::HeadGates) -> f64| Heatmap {
        title: title.into(),
        source: String::new(),
        x_label: "head".into(),
        y_label: "block".into(),
        x_ticks: (0..heads).map(|h| h.to_string()).collect(),
        y_ticks: (0..view.blocks.len()).map(|b| b.to_string()).collect(),
        cells: view
            .blocks
            .iter()
            .map(|hs| hs.iter().map(|g| Some(pick(g))).collect())
            .collect(),
        decimals: 2,
        marked: None,
        colour_label: "gate mass on prompts".into(),
        range: Some((0.0, max)),
    };
    Heatmaps {
        title: format!(
            "Attention on the {} prompt experts, per block and head",
            view.num_prompts
        ),
        source: source.into(),
        panels: vec![
            panel("CLS query", |g| g.cls_query.prompt),
            panel("patch queries (mean)", |g| g.patch_query.prompt),
        ],
    }
}

/// A sweep's grid: validation top-1 per lr (rows, largest first) and weight decay (columns,
/// largest first), the chosen cell framed. `None` before any grid cell ran.
pub fn sweep_grid(s: &Summary, source: &str) -> Option<Heatmap> {
    let mut lrs: Vec<f64> = s.grid.iter().map(|c| c.lr).collect();
    let mut wds: Vec<f64> = s.grid.iter().map(|c| c.wd).collect();
    for v in [&mut lrs, &mut wds] {
        v.sort_by(|a, b| b.total_cmp(a));
        v.dedup();
    }
    if lrs.is_empty() {
        return None;
    }
    let at = |lr: f64, wd: f64| s.grid.iter().find(|c| c.lr == lr && c.wd == wd);
    let cells = lrs
        .iter()
        .map(|&lr| {
            wds.iter()
                .map(|&wd| at(lr, wd).and_then(|c| c.val_top1))
                .collect()
        })
        .collect();
    let marked = s.chosen.and_then(|(lr, wd)| {
        let r = lrs.iter().position(|&v| v == lr)?;
        let c = wds.iter().position(|&v| v == wd)?;
        Some((
            (r, c),
            format!(
                "chosen (lr {}, wd {})",
                vapt_plot::short(lr),
                vapt_plot::short(wd)
            ),
        ))
    });
    Some(Heatmap {
        title: format!(
            "{} · {}: validation top-1 over lr × weight decay",
            s.task, s.method
        ),
        source: source.into(),
        x_label: "weight decay".into(),
        y_label: "base learning rate".into(),
        x_ticks: wds.iter().map(|&v| vapt_plot::short(v)).collect(),
        y_ticks: lrs.iter().map(|&v| vapt_plot::short(v)).collect(),
        cells,
        decimals: 1,
        marked,
        colour_label: "val top-1 (%)".into(),
        range: None,
    })
}

/// Test top-1 of each finished seed, per sweep (one group each, labelled by method, in the order
/// of the method table: linear before VPT before VAPT), with the summary's mean ± std once every
/// seed is done. Sweeps without a finished seed are left out.
pub fn seeds(summaries: &[&Summary], title: &str, source: &str) -> SeedPoints {
    let rank = |s: &&&Summary| {
        let method = s.method.parse::<vapt_experts::MethodSpec>().ok();
        let at = method.and_then(|m| vapt_experts::Method::all().position(|x| x == m.method));
        (
            at.unwrap_or(usize::MAX),
            method.and_then(|m| m.k),
            s.method.clone(),
        )
    };
    let mut ordered: Vec<&&Summary> = summaries.iter().collect();
    ordered.sort_by_key(rank);
    SeedPoints {
        title: title.into(),
        source: source.into(),
        y_label: "test top-1 (%)".into(),
        groups: ordered
            .into_iter()
            .map(|s| SeedGroup {
                label: s.method.clone(),
                values: s.finals.iter().flatten().copied().collect(),
                mean_std: s.mean.zip(s.std),
            })
            .filter(|g| !g.values.is_empty())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_groups_follow_the_method_table() {
        let summary = |method: &str| Summary {
            task: "dtd".into(),
            method: method.into(),
            grid: vec![],
            chosen: Some((1.0, 0.0)),
            seeds: vec![42],
            finals: vec![Some(50.0)],
            mean: Some(50.0),
            std: Some(0.0),
            trainable_params: None,
            total_params: None,
            backbone_params: None,
            backbone: vapt_vit::BackboneKind::Supervised,
        };
        let sweeps: Vec<Summary> = ["vapt", "mine", "partial-2", "linear", "vpt-deep", "partial-1"]
            .map(summary)
            .to_vec();
        let refs: Vec<&Summary> = sweeps.iter().collect();
        let labels: Vec<String> = seeds(&refs, "t", "s")
            .groups
            .into_iter()
            .map(|g| g.label)
            .collect();
        assert_eq!(
            labels,
            ["linear", "vpt-deep", "vapt", "partial-1", "partial-2", "mine"],
            "the method table's order, sizes ascending, unknown names last"
        );
    }
}
