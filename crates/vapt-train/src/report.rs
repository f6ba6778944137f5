//! The paper-layout table over tasks: one row per backbone and method, one column per task (VTAB
//! order, then FGVC and others), the Natural / Specialized / Structured group means, the VTAB mean
//! over the tasks present, and the tuned % of parameters; and, when there are several backbones
//! or a self-supervised one, the paper's Table 2 block (group means per backbone × method).
//! Markdown and CSV.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use vapt_data::vtab::{Group, TASKS};
use vapt_vit::BackboneKind;

use crate::error::TrainError;
use crate::sweep::{Summary, SUMMARY_FILE};

/// Finds every `summary.json` at or below `root` (at most 4 folders deep).
pub fn find_summaries(root: &Path) -> Result<Vec<(PathBuf, Summary)>, TrainError> {
    fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
        let file = dir.join(SUMMARY_FILE);
        if file.is_file() {
            out.push(file);
            return;
        }
        if depth == 0 {
            return;
        }
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut dirs: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        for d in dirs {
            walk(&d, depth - 1, out);
        }
    }
    if !root.is_dir() {
        return Err(TrainError::io(
            root,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such folder"),
        ));
    }
    let mut files = Vec::new();
    walk(root, 4, &mut files);
    files
        .into_iter()
        .map(|f| {
            let s: Summary = crate::files::read_json(&f, "vapt sweep summary")?;
            Ok((f, s))
        })
        .collect()
}

/// The group-mean columns, in the paper's order.
const GROUPS: [&str; 4] = ["Natural", "Specialized", "Structured", "VTAB mean"];

/// What introduces the Table 2 block.
const TABLE_2: &str = "By backbone (the paper's Table 2 layout: group means over the tasks present)";

/// A table as text: its header and its rows.
type Cells = (Vec<String>, Vec<Vec<String>>);

/// One method's row: task → (mean, std), and the tuned % of parameters.
pub type Row = (BTreeMap<String, (f64, f64)>, Option<f64>);

/// The table: methods × tasks.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// Task columns, in VTAB order then alphabetical.
    pub tasks: Vec<String>,
    /// Per (backbone, method): task → (mean, std), and the tuned % of parameters.
    pub rows: BTreeMap<(BackboneKind, String), Row>,
}

fn order(task: &str) -> (usize, String) {
    let i = TASKS.iter().position(|t| t.name == task).unwrap_or(TASKS.len());
    (i, task.to_string())
}

/// A mean to two decimals, or `—`.
fn fmt(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "—".into())
}

fn group_of(task: &str) -> Option<Group> {
    TASKS.iter().find(|t| t.name == task).map(|t| t.group)
}

impl Table {
    /// Builds the table from finished sweeps (pending ones are left out).
    pub fn new(summaries: &[Summary]) -> Self {
        let mut rows: BTreeMap<(BackboneKind, String), Row> = BTreeMap::new();
        let mut tasks = Vec::new();
        for s in summaries {
            let (Some(m), Some(sd)) = (s.mean, s.std) else {
                continue;
            };
            let row = rows.entry((s.backbone, s.method.clone())).or_default();
            row.0.insert(s.task.clone(), (m, sd));
            if let (Some(t), Some(total)) = (s.trainable_params, s.total_params) {
                // Without the recorded backbone size, the frozen part stands for it (exact for
                // methods that freeze the backbone).
                let backbone = s.backbone_params.unwrap_or(total.saturating_sub(t)).max(1);
                row.1 = Some(100.0 * t as f64 / backbone as f64);
            }
            if !tasks.contains(&s.task) {
                tasks.push(s.task.clone());
            }
        }
        tasks.sort_by_key(|t| order(t));
        Self { tasks, rows }
    }

    /// The means of [`GROUPS`] over the tasks present.
    fn group_means(&self, cells: &BTreeMap<String, (f64, f64)>) -> [Option<f64>; 4] {
        let mean = |g: Option<Group>| {
            let v: Vec<f64> = cells
                .iter()
                .filter(|(t, _)| match g {
                    Some(g) => group_of(t) == Some(g),
                    None => matches!(
                        group_of(t),
                        Some(Group::Natural | Group::Specialized | Group::Structured)
                    ),
                })
                .map(|(_, (m, _))| *m)
                .collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        };
        [
            mean(Some(Group::Natural)),
            mean(Some(Group::Specialized)),
            mean(Some(Group::Structured)),
            mean(None),
        ]
    }

    /// Whether the table needs the per-backbone block: several backbones, or a self-supervised one.
    fn by_backbone(&self) -> bool {
        let mut kinds = self.rows.keys().map(|(k, _)| *k);
        let first = kinds.next();
        first.is_some_and(|f| f.self_supervised() || kinds.any(|k| k != f))
    }

    /// The first table as text: its header, then one row per backbone and method (tuned %,
    /// `mean ± std` per task, the group means), as Markdown and HTML both print it.
    fn cells(&self) -> Cells {
        let mut header: Vec<String> = ["Backbone", "Method", "Tuned %"].map(String::from).to_vec();
        header.extend(self.tasks.iter().cloned());
        header.extend(GROUPS.map(String::from));
        let rows = self
            .rows
            .iter()
            .map(|((backbone, method), (cells, pct))| {
                let mut row = vec![backbone.to_string(), method.clone(), fmt(*pct)];
                row.extend(self.tasks.iter().map(|t| match cells.get(t) {
                    Some((m, s)) => format!("{m:.2} ± {s:.2}"),
                    None => "—".into(),
                }));
                row.extend(self.group_means(cells).map(fmt));
                row
            })
            .collect();
        (header, rows)
    }

    /// The Table 2 block as text when [`Self::by_backbone`]: one row per backbone and method, the
    /// group means only.
    fn table_2(&self) -> Option<Cells> {
        if !self.by_backbone() {
            return None;
        }
        let mut header: Vec<String> = ["Backbone", "Method"].map(String::from).to_vec();
        header.extend(GROUPS.map(String::from));
        let rows = self
            .rows
            .iter()
            .map(|((backbone, method), (cells, _))| {
                let mut row = vec![backbone.to_string(), method.clone()];
                row.extend(self.group_means(cells).map(fmt));
                row
            })
            .collect();
        Some((header, rows))
    }

    /// Markdown, cells `mean ± std`; then the Table 2 block when [`Self::by_backbone`].
    pub fn markdown(&self) -> String {
        let table = |(header, rows): Cells| {
            let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
            let mut out = line(&header);
            out.push_str(&format!("|{}\n", "---|".repeat(header.len())));
            for row in &rows {
                out.push_str(&line(row));
            }
            out
        };
        let mut out = table(self.cells());
        if let Some(block) = self.table_2() {
            out.push_str(&format!("\n{TABLE_2}\n\n{}", table(block)));
        }
        out
    }

    /// The same tables as [`Self::markdown`] in HTML (`<table>`s, text escaped).
    pub fn html(&self) -> String {
        let esc = crate::html::escape;
        let table = |class: &str, (header, rows): Cells| {
            let line = |tag: &str, cells: &[String]| {
                let cells: String = cells
                    .iter()
                    .map(|c| format!("<{tag}>{}</{tag}>", esc(c)))
                    .collect();
                format!("<tr>{cells}</tr>\n")
            };
            let mut out = format!(
                "<table class=\"{class}\">\n<thead>{}</thead>\n<tbody>\n",
                line("th", &header).trim_end()
            );
            for row in &rows {
                out.push_str(&line("td", row));
            }
            out.push_str("</tbody>\n</table>\n");
            out
        };
        let mut out = table("results", self.cells());
        if let Some(block) = self.table_2() {
            out.push_str(&format!(
                "<p>{}</p>\n{}",
                esc(TABLE_2),
                table("by-backbone", block)
            ));
        }
        out
    }

    /// CSV: one line per backbone and method, `<task>_mean,<task>_std` pairs, then the group means.
    pub fn csv(&self) -> String {
        let mut out = String::from("backbone,method,tuned_percent");
        for t in &self.tasks {
            out.push_str(&format!(",{t}_mean,{t}_std"));
        }
        out.push_str(",natural,specialized,structured,vtab_mean\n");
        for ((backbone, method), (cells, pct)) in &self.rows {
            out.push_str(&format!(
                "{backbone},{method},{}",
                pct.map(|p| p.to_string()).unwrap_or_default()
            ));
            for t in &self.tasks {
                match cells.get(t) {
                    Some((m, s)) => out.push_str(&format!(",{m},{s}")),
                    None => out.push_str(",,"),
                }
            }
            for v in self.group_means(cells) {
                out.push_str(&format!(",{}", v.map(|v| v.to_string()).unwrap_or_default()));
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(task: &str, method: &str, mean: f64) -> Summary {
        Summary {
            task: task.into(),
            method: method.into(),
            grid: vec![],
            chosen: Some((1.0, 0.0)),
            seeds: vec![42],
            finals: vec![Some(mean)],
            mean: Some(mean),
            std: Some(0.5),
            trainable_params: Some(10),
            total_params: Some(1010),
            backbone_params: None,
            backbone: BackboneKind::Supervised,
        }
    }

    #[test]
    fn group_means_follow_the_vtab_groups() {
        let t = Table::new(&[
            s("dtd", "vapt", 60.0),
            s("cifar", "vapt", 80.0),
            s("eurosat", "vapt", 90.0),
            s("kitti", "vapt", 70.0),
        ]);
        assert_eq!(t.tasks, ["cifar", "dtd", "eurosat", "kitti"], "VTAB order");
        let md = t.markdown();
        // Natural (80+60)/2 = 70, Specialized 90, Structured 70, mean of 4 tasks = 75.
        assert!(md.contains("| supervised | vapt | 1.00 | 80.00 ± 0.50 | 60.00 ± 0.50 | 90.00 ± 0.50 | 70.00 ± 0.50 | 70.00 | 90.00 | 70.00 | 75.00 |"), "{md}");
        assert!(
            !md.contains("Table 2") && !t.html().contains("Table 2"),
            "one supervised backbone: no per-backbone block"
        );
        assert!(t
            .csv()
            .starts_with("backbone,method,tuned_percent,cifar_mean,cifar_std"));
    }

    #[test]
    fn several_backbones_give_the_table_2_block() {
        let mae = |task: &str, method: &str, mean: f64| Summary {
            backbone: BackboneKind::Mae,
            ..s(task, method, mean)
        };
        let t = Table::new(&[
            s("cifar", "vapt", 80.0),
            mae("cifar", "vapt", 60.0),
            mae("eurosat", "vapt", 70.0),
            mae("cifar", "vpt-deep", 40.0),
        ]);
        let md = t.markdown();
        assert!(md.contains("Table 2"), "{md}");
        assert!(md.contains("| mae | vapt | 60.00 | 70.00 | — | 65.00 |"), "{md}");
        assert!(md.contains("| mae | vpt-deep | 40.00 | — | — | 40.00 |"), "{md}");
        assert!(
            md.contains("| supervised | vapt | 80.00 | — | — | 80.00 |"),
            "{md}"
        );
        let html = t.html();
        assert!(
            html.contains("<table class=\"by-backbone\">")
                && html.contains(
                    "<tr><td>mae</td><td>vapt</td><td>60.00</td><td>70.00</td><td>—</td><td>65.00</td></tr>"
                ),
            "the page has the block too: {html}"
        );
        let csv = t.csv();
        assert!(csv.contains("\nmae,vapt,"), "{csv}");
        assert_eq!(csv.lines().count(), 4, "a header and three rows: {csv}");
    }
}
