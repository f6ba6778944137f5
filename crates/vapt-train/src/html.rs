//! `vapt report --html`: one self-contained, offline page over finished sweeps — the paper-layout
//! table, each task's seeds per method, each sweep's lr × wd grid with the chosen cell and the
//! curves of its final runs, the MoE view of one run per method, and where every number comes
//! from (vapt revision, weights and data-manifest SHA-256, device). Figures are inline SVG, so
//! the page needs no other file and no network; PNG copies of the summary figures (seeds, grids,
//! MoE views) are written beside it for slides and READMEs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use vapt_experts::MoeView;
use vapt_plot::{Chart, PlotError};

use crate::error::TrainError;
use crate::figures;
use crate::report::Table;
use crate::run_dir::{read_metrics, read_result};
use crate::sweep::{final_dir, Summary};

/// The MoE view of one run, for the page's MoE section.
#[derive(Debug, Clone)]
pub struct MoeEntry {
    /// The method.
    pub method: String,
    /// The run folder it was computed from.
    pub run: PathBuf,
    /// The view.
    pub view: MoeView,
}

/// `text` with `&`, `<`, `>` and `"` escaped.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The page and PNG copies of its summary figures (seeds, grids, MoE views) to put beside it.
#[derive(Debug, Clone)]
pub struct Report {
    /// The HTML document (figures inline as SVG).
    pub html: String,
    /// `(file name, PNG bytes)`.
    pub pngs: Vec<(String, Vec<u8>)>,
}

/// A file name from `parts`: lower-case letters, digits and dashes.
fn slug(parts: &[&str]) -> String {
    let joined = parts.join("-").to_lowercase();
    let s: String = joined
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    s.split('-')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

/// The chart as an inline `<figure>`; with `png`, its PNG copy is kept under that name.
fn figure(
    chart: &impl Chart,
    caption: &str,
    png: Option<String>,
    pngs: &mut Vec<(String, Vec<u8>)>,
) -> Result<String, TrainError> {
    let plot_error = |e: PlotError| TrainError::Config {
        path: PathBuf::from(chart.title()),
        message: e.to_string(),
    };
    if let Some(name) = png {
        pngs.push((format!("{name}.png"), vapt_plot::png(chart).map_err(plot_error)?));
    }
    let svg = vapt_plot::svg(chart).map_err(plot_error)?;
    Ok(format!(
        "<figure>{svg}<figcaption>{}</figcaption></figure>\n",
        escape(caption)
    ))
}

const STYLE: &str = "body{font-family:'DejaVu Sans',Verdana,sans-serif;max-width:1280px;margin:1.5em auto;\
padding:0 1em;color:#222;line-height:1.4}h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ccc}\
table{border-collapse:collapse;margin:1em 0;font-size:.92em}th,td{border:1px solid #ccc;padding:.3em .6em;\
text-align:right}th{background:#f3f3f3}td:nth-child(-n+2),th:nth-child(-n+2){text-align:left}\
figure{margin:1em 0;display:inline-block;vertical-align:top;max-width:100%}\
figure svg{max-width:100%;height:auto}figcaption{font-size:.85em;color:#555}\
code{font-size:.9em;background:#f5f5f5;padding:0 .2em}";

/// Marks the page once every figure has a size on screen (`data-figures="N of M"` on the body):
/// what a headless browser's DOM dump shows.
const SCRIPT: &str =
    "window.addEventListener('load',function(){var f=document.querySelectorAll('figure svg');\
var n=0;f.forEach(function(s){var r=s.getBoundingClientRect();if(r.width>0&&r.height>0)n++;});\
document.body.setAttribute('data-figures',n+' of '+f.length);});";

/// The page over `sweeps` (`(sweep folder, summary)`) with the MoE views given.
pub fn page(title: &str, sweeps: &[(PathBuf, Summary)], moe: &[MoeEntry]) -> Result<Report, TrainError> {
    let mut pngs = Vec::new();
    let mut body = format!("<h1>{}</h1>\n", escape(title));
    body.push_str(&provenance(sweeps));

    let summaries: Vec<Summary> = sweeps.iter().map(|(_, s)| s.clone()).collect();
    body.push_str("<h2>Results</h2>\n<p>Test top-1 (%), mean ± std over the final seeds; tuned % = trainable parameters over the backbone's.</p>\n");
    body.push_str(&Table::new(&summaries).html());

    let mut by_task: BTreeMap<&str, Vec<&Summary>> = BTreeMap::new();
    for s in &summaries {
        by_task.entry(s.task.as_str()).or_default().push(s);
    }
    for (task, group) in &by_task {
        let chart = figures::seeds(
            group,
            &format!("{task}: test top-1 per seed"),
            "final runs of each sweep",
        );
        if !chart.groups.is_empty() {
            let caption = format!("{task}: every seed of every method, with mean ± std.");
            body.push_str(&figure(
                &chart,
                &caption,
                Some(slug(&["seeds", task])),
                &mut pngs,
            )?);
        }
    }

    body.push_str("<h2>Sweeps</h2>\n");
    for (dir, s) in sweeps {
        body.push_str(&format!(
            "<h3>{} · {}</h3>\n<p>Folder <code>{}</code>; chosen lr × wd: {}.</p>\n",
            escape(&s.task),
            escape(&s.method),
            escape(&dir.display().to_string()),
            s.chosen
                .map(|(lr, wd)| format!("{} × {}", vapt_plot::short(lr), vapt_plot::short(wd)))
                .unwrap_or_else(|| "not yet".into())
        ));
        if let Some(grid) = figures::sweep_grid(s, &dir.display().to_string()) {
            let caption = "Validation top-1 of every grid cell; the framed cell was chosen.";
            body.push_str(&figure(
                &grid,
                caption,
                Some(slug(&["grid", &s.task, &s.method])),
                &mut pngs,
            )?);
        }
        for seed in &s.seeds {
            let run = final_dir(dir, *seed);
            let Ok(history) = read_metrics(&run) else { continue };
            let chart = figures::curves(
                &history,
                &format!("{} · {} · seed {seed}", s.task, s.method),
                &run.display().to_string(),
            );
            body.push_str(&figure(
                &chart,
                &format!("Final run, seed {seed}."),
                None,
                &mut pngs,
            )?);
        }
    }

    if !moe.is_empty() {
        body.push_str("<h2>Mixture of experts</h2>\n<p>Attention gate mass on the prompt experts per block and head (the paper's MoE view), one run per method.</p>\n");
        for m in moe {
            let chart = figures::moe(&m.view, &m.run.display().to_string());
            let caption = format!("{}: {}", m.method, m.run.display());
            body.push_str(&figure(
                &chart,
                &caption,
                Some(slug(&["moe", &m.method])),
                &mut pngs,
            )?);
        }
    }
    let html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{}</title>\n<style>{STYLE}</style>\n<script>{SCRIPT}</script>\n</head>\n<body>\n{body}</body>\n</html>\n",
        escape(title)
    );
    Ok(Report { html, pngs })
}

/// Where the numbers come from: per distinct (revision, weights, data, device) of the final runs.
fn provenance(sweeps: &[(PathBuf, Summary)]) -> String {
    let mut rows: BTreeMap<(String, String, String, String), Vec<String>> = BTreeMap::new();
    for (dir, s) in sweeps {
        for seed in &s.seeds {
            if let Ok(Some(r)) = read_result(&final_dir(dir, *seed)) {
                let none = || "—".to_string();
                rows.entry((
                    r.git_revision.clone(),
                    r.weights_sha256.clone().unwrap_or_else(none),
                    r.data_manifest_sha256.clone().unwrap_or_else(none),
                    r.device.clone(),
                ))
                .or_default()
                .push(format!("{} · {}", s.task, s.method));
                break;
            }
        }
    }
    let mut out = format!(
        "<p>Made by vapt <code>{}</code> from {} sweep folder(s).</p>\n<table class=\"provenance\"><thead><tr><th>vapt revision</th><th>weights SHA-256</th><th>data manifest SHA-256</th><th>device</th><th>sweeps</th></tr></thead><tbody>\n",
        escape(crate::run_dir::git_revision()),
        sweeps.len()
    );
    for ((rev, w, d, dev), which) in rows {
        out.push_str(&format!(
            "<tr><td><code>{}</code></td><td><code>{}</code></td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>\n",
            escape(&rev),
            escape(&w),
            escape(&d),
            escape(&dev),
            escape(&which.join(", "))
        ));
    }
    out.push_str("</tbody></table>\n");
    out
}

/// Writes the page to `out/index.html` and its PNGs beside it (creating `out`); returns the page.
pub fn write(out: &Path, report: &Report) -> Result<PathBuf, TrainError> {
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    for (name, bytes) in &report.pngs {
        crate::files::write_atomic(&out.join(name), bytes)?;
    }
    let path = out.join("index.html");
    crate::files::write_atomic(&path, report.html.as_bytes())?;
    Ok(path)
}
