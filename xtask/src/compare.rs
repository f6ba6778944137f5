//! `cargo xtask compare`: every method on the shipped task, with the same data pipeline, protocol
//! and backbone — the paper's comparison in miniature — written to
//! `docs/results/fashion-mnist-1k.md`.
//!
//! Each method first gets its lr: the best val200 top-1 of its candidates (its family's grid,
//! thinned to four, grown past an edge where the best lies on it) after 8 epochs on train800,
//! seed 42, ties to the smaller lr (SPEC §7.2). Then
//! every seed trains on train800val200 and is scored on test. Runs are kept under
//! `target/compare/` and reused, so an interrupted comparison continues where it stopped.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::{fashion_recipe, repo_root, vapt, vapt_command, vapt_output, RECIPE_WD, SHIPPED_WEIGHTS};

/// Candidate base lrs of prompt, head, bias and adapter methods (the paper's grid, thinned).
const PROMPT_LRS: &[&str] = &["2.5", "1", "0.5", "0.1"];
/// Candidates of full fine-tuning and partial-k (the fine-tuning grid, shifted up for a tiny
/// backbone trained from scratch on MNIST).
const FINETUNE_LRS: &[&str] = &["0.05", "0.01", "0.005", "0.001"];
/// Candidates of LoRA (vapt's LoRA grid, thinned).
const LORA_LRS: &[&str] = &["1", "0.5", "0.1", "0.05"];

/// Every method in the comparison with its lr candidates, in table order.
const METHODS: &[(&str, &[&str])] = &[
    ("linear", PROMPT_LRS),
    ("mlp-3", PROMPT_LRS),
    ("partial-1", FINETUNE_LRS),
    ("bias", PROMPT_LRS),
    ("adapter", PROMPT_LRS),
    ("lora", LORA_LRS),
    ("vpt-deep", PROMPT_LRS),
    ("vpt-deep+bias", PROMPT_LRS),
    ("vapt", PROMPT_LRS),
    ("full", FINETUNE_LRS),
];

/// Epochs of the lr selection.
const SELECT_EPOCHS: &str = "8";

/// A finished run's `result.json`, training it first unless it exists.
fn run(
    root: &Path,
    out: &Path,
    method: &str,
    lr: &str,
    seed: &str,
    epochs: &str,
    select: bool,
) -> Result<serde_json::Value> {
    if !out.join("result.json").is_file() {
        let mut a = fashion_recipe(root, epochs, lr);
        a.extend(["--plain", "--weights"].map(String::from));
        a.push(root.join(SHIPPED_WEIGHTS).display().to_string());
        a.extend(["--method", method, "--seed", seed, "--resume"].map(String::from));
        if select {
            a.extend(["--train-split", "train800", "--eval-split", "val200"].map(String::from));
        }
        a.extend(["--out".into(), out.display().to_string()]);
        vapt("train", &a)?;
    }
    let text = std::fs::read_to_string(out.join("result.json"))?;
    Ok(serde_json::from_str(&text)?)
}

/// The lr of `method`: its best candidate on train800 → val200, and every candidate's score. A
/// best lr on the edge of the candidates is not an optimum: the grid then grows past that edge
/// (÷5 below, ×2 above, at most twice per side) until the best lies inside it.
fn select(root: &Path, method: &str, candidates: &[&str]) -> Result<(String, Vec<(String, f64)>)> {
    let mut scores: Vec<(String, f64)> = Vec::new();
    let mut todo: Vec<String> = candidates.iter().map(|s| s.to_string()).collect();
    let (mut below, mut above) = (0, 0);
    loop {
        for lr in todo.drain(..) {
            let out = root.join(format!("target/compare/select/{method}-lr{lr}"));
            let r = run(root, &out, method, &lr, "42", SELECT_EPOCHS, true)?;
            scores.push((lr, r["eval_top1"].as_f64().unwrap_or(0.0)));
        }
        let lr = |s: &str| s.parse::<f64>().unwrap_or(f64::MAX);
        scores.sort_by(|a, b| lr(&b.0).total_cmp(&lr(&a.0)));
        // Best val top-1; ties go to the smaller lr.
        let best = scores
            .iter()
            .max_by(|a, b| a.1.total_cmp(&b.1).then(lr(&b.0).total_cmp(&lr(&a.0))))
            .map(|s| s.0.clone())
            .context("no lr candidates")?;
        let (Some(low), Some(high)) = (scores.last(), scores.first()) else {
            bail!("no lr candidates");
        };
        if best == low.0 && below < 2 {
            below += 1;
            todo.push(short(lr(&best) / 5.0));
        } else if best == high.0 && above < 2 {
            above += 1;
            todo.push(short(lr(&best) * 2.0));
        } else {
            return Ok((best, scores));
        }
    }
}

/// An lr as a short decimal (`0.02`, not `0.020000000000000004`).
fn short(x: f64) -> String {
    let s = format!("{x:.6}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// One row of the table.
struct Row {
    method: String,
    lr: String,
    candidates: Vec<(String, f64)>,
    params: u64,
    tops: Vec<f64>,
    wall: f64,
}

pub fn compare(args: &[String]) -> Result<()> {
    let root = repo_root();
    let mut epochs = "20".to_string();
    let mut seeds = vec!["42".to_string(), "44".into(), "82".into()];
    let mut only: Option<Vec<String>> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let list = |v: Option<&String>, what: &str| -> Result<Vec<String>> {
            Ok(v.with_context(|| format!("{what} needs a comma-separated list"))?
                .split(',')
                .map(String::from)
                .collect())
        };
        match a.as_str() {
            "--epochs" => epochs = it.next().context("--epochs needs a number")?.clone(),
            "--seeds" => seeds = list(it.next(), "--seeds")?,
            "--methods" => only = Some(list(it.next(), "--methods")?),
            other => bail!("compare: unknown argument `{other}`"),
        }
    }
    let mut rows = Vec::new();
    for (method, candidates) in METHODS {
        if only.as_ref().is_some_and(|o| !o.iter().any(|m| m == method)) {
            continue;
        }
        let (lr, scores) = select(&root, method, candidates)?;
        let mut row = Row {
            method: method.to_string(),
            lr: lr.clone(),
            candidates: scores,
            params: 0,
            tops: Vec::new(),
            wall: 0.0,
        };
        for seed in &seeds {
            let out = root.join(format!("target/compare/e{epochs}/{method}-lr{lr}-seed{seed}"));
            let r = run(&root, &out, method, &lr, seed, &epochs, false)?;
            row.tops.push(r["eval_top1"].as_f64().context("no eval_top1")?);
            row.params = r["trainable_params"].as_u64().unwrap_or(0);
            row.wall += r["wall_seconds"].as_f64().unwrap_or(0.0);
        }
        rows.push(row);
    }
    let view = if rows.iter().any(|r| r.method == "vapt") {
        let lr = rows
            .iter()
            .find(|r| r.method == "vapt")
            .map(|r| r.lr.clone())
            .unwrap_or_default();
        Some(moe_view(&root, &epochs, &lr, &seeds[0])?)
    } else {
        None
    };
    report(&root, &rows, &epochs, &seeds)?;
    let doc = document(&rows, &epochs, &seeds, view.as_deref());
    let path = root.join("docs/results/fashion-mnist-1k.md");
    std::fs::create_dir_all(path.parent().context("no parent")?)?;
    std::fs::write(&path, &doc)?;
    println!("{doc}");
    eprintln!("xtask: wrote {}", path.display());
    Ok(())
}

/// Where `vapt report --html` puts the comparison's page and its PNGs.
const REPORT_DIR: &str = "docs/results/fashion-mnist-1k";

/// The comparison as sweep folders (`target/compare/report/<method>/`: a `summary.json` in vapt's
/// sweep layout — the lr candidates as a one-column grid at the recipe's wd — and the final runs
/// linked as `final/seed<N>`), rendered by `vapt report --html` into [`REPORT_DIR`]: the page of
/// the committed results is the report any sweep gets.
fn report(root: &Path, rows: &[Row], epochs: &str, seeds: &[String]) -> Result<()> {
    let base = root.join("target/compare/report");
    let _ = std::fs::remove_dir_all(&base);
    let result = |r: &Row, seed: &str| -> Result<serde_json::Value> {
        let run = root.join(format!(
            "target/compare/e{epochs}/{}-lr{}-seed{seed}",
            r.method, r.lr
        ));
        Ok(serde_json::from_str(&std::fs::read_to_string(
            run.join("result.json"),
        )?)?)
    };
    // The backbone's size, for runs from before vapt recorded it: what linear probing freezes.
    let frozen = match rows.iter().find(|r| r.method == "linear") {
        Some(r) => {
            let v = result(r, &seeds[0])?;
            let n = |k: &str| v[k].as_u64().unwrap_or(0);
            serde_json::json!(n("total_params") - n("trainable_params"))
        }
        None => serde_json::Value::Null,
    };
    for r in rows {
        let dir = base.join(&r.method);
        std::fs::create_dir_all(dir.join("final"))?;
        let mut first: Option<serde_json::Value> = None;
        for seed in seeds {
            let run = root.join(format!(
                "target/compare/e{epochs}/{}-lr{}-seed{seed}",
                r.method, r.lr
            ));
            std::os::unix::fs::symlink(&run, dir.join("final").join(format!("seed{seed}")))?;
            if first.is_none() {
                first = Some(result(r, seed)?);
            }
        }
        let first = first.context("no seeds")?;
        let lr = |s: &str| s.parse::<f64>().unwrap_or(f64::NAN);
        let (mean, std) = mean_std(&r.tops);
        let summary = serde_json::json!({
            "task": first["task"],
            "method": r.method,
            "grid": r.candidates.iter().map(|(c, top1)| serde_json::json!({
                "lr": lr(c), "wd": RECIPE_WD, "val_top1": top1, "status": "ok"
            })).collect::<Vec<_>>(),
            "chosen": [lr(&r.lr), RECIPE_WD],
            "seeds": seeds.iter().map(|s| s.parse::<u64>().unwrap_or(0)).collect::<Vec<_>>(),
            "finals": r.tops,
            "mean": mean,
            "std": std,
            "trainable_params": first["trainable_params"],
            "total_params": first["total_params"],
            "backbone_params": if first["backbone_params"].is_null() { frozen.clone() } else { first["backbone_params"].clone() },
            "backbone": first["backbone_kind"],
        });
        std::fs::write(dir.join("summary.json"), serde_json::to_string_pretty(&summary)?)?;
    }
    // From the repository root with relative paths: the committed page names no machine's folders.
    crate::run(vapt_command().current_dir(root).args([
        "report",
        "target/compare/report",
        "--html",
        REPORT_DIR,
        "--moe-images",
        "64",
    ]))
}

/// `vapt analyze` of the first VAPT run (its table; the figure is in the report).
fn moe_view(root: &Path, epochs: &str, lr: &str, seed: &str) -> Result<String> {
    let first: PathBuf = root.join(format!("target/compare/e{epochs}/vapt-lr{lr}-seed{seed}"));
    vapt_output(&[
        "analyze".into(),
        first.display().to_string(),
        "--images".into(),
        "64".into(),
    ])
}

/// Population mean and std.
fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    (
        mean,
        (v.iter().map(|t| (t - mean) * (t - mean)).sum::<f64>() / n).sqrt(),
    )
}

fn document(rows: &[Row], epochs: &str, seeds: &[String], view: Option<&str>) -> String {
    let mut table = String::from(
        "| Method | Trainable params | lr | Test top-1 (mean ± std) | Seeds | Wall time per run |\n\
         |---|---|---|---|---|---|\n",
    );
    for r in rows {
        let (mean, std) = mean_std(&r.tops);
        let vals: Vec<String> = r.tops.iter().map(|t| format!("{t:.2}")).collect();
        table.push_str(&format!(
            "| {} | {} | {} | {mean:.2} ± {std:.2} | {} | {:.0} s |\n",
            r.method,
            r.params,
            r.lr,
            vals.join(", "),
            r.wall / r.tops.len().max(1) as f64
        ));
    }
    let mut selection =
        String::from("| Method | val200 top-1 per candidate lr (8 epochs, seed 42) |\n|---|---|\n");
    for r in rows {
        let c: Vec<String> = r
            .candidates
            .iter()
            .map(|(lr, t)| format!("{lr}: {t:.1}"))
            .collect();
        selection.push_str(&format!("| {} | {} |\n", r.method, c.join(" · ")));
    }
    let mut doc = format!(
        "# fashion-mnist-1k: VAPT against the parameter-efficient baselines\n\n\
         Frozen backbone: `datasets/weights/vit-mnist.safetensors` (ViT D64-L4-H4-M128-P4 pre-trained \
         on MNIST by `cargo xtask pretrain`). Task: `datasets/fashion-mnist-1k` (train800val200 → test, \
         2,000 test images). Every method: the paper's protocol (SGD momentum 0.9, lr × batch/256 at batch 64, \
         wd 1e-4, {epochs} epochs with 2 warm-up epochs, last-epoch top-1), vapt's defaults for its knobs \
         (10 prompts; VAPT K 2, r 8; adapter reduction 8 with the trainable init; LoRA rank 8, α 8 on q and v; \
         MLP head of 3 layers), its lr chosen on train800 → val200 (below). Std is the population std \
         over seeds {}.\n\n{table}\n\
         Reproduce: `cargo xtask compare --epochs {epochs} --seeds {}` (CPU; runs are kept in \
         `target/compare/` and reused). Wall time is per run, on the machine that ran the command.\n\n\
         ![Test top-1 of every seed of every method](fashion-mnist-1k/seeds-fashion-mnist-1k.png)\n\n\
         The full report — every method's lr selection as a grid, the curves of every final run, the MoE \
         view of each prompt method, the provenance — is [`fashion-mnist-1k/index.html`](fashion-mnist-1k/index.html) \
         (one offline page, made by `vapt report --html`).\n\n\
         ## lr selection\n\n\
         Candidates: the method family's grid thinned to four; where the best lies on an edge of \
         them, the grid grows past it (÷5 below, ×2 above, at most twice per side).\n\n{selection}",
        seeds.join(", "),
        seeds.join(","),
    );
    if let Some(view) = view {
        doc.push_str(&format!(
            "\n## Where VAPT's attention goes (seed {}, 64 test images)\n\n\
             `vapt analyze` on the first VAPT run; the figure shows the same numbers per block and head \
             (left: CLS query, right: patch queries; brighter = more gate mass on the prompt experts).\n\n\
             ![VAPT's gate mass on its prompt experts](fashion-mnist-1k/moe-vapt.png)\n\n```text\n{view}```\n",
            seeds[0]
        ));
    }
    doc
}
