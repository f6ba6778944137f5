//! Divergence and sweeps on a tiny ViT and a tiny VTAB-format task (CPU). Bit-exact resume is
//! tested through the CLI (`crates/vapt-cli/tests/cli.rs`): Burn's RNG is process-global, and
//! tests in this binary run in parallel threads.

use std::path::Path;

use burn::backend::{Autodiff, Flex};
use vapt_train::monitor::Quiet;
use vapt_train::run_dir::read_result;
use vapt_train::sweep::{self, PointOutcome, SweepSpec};
use vapt_train::{train, RunOptions, RunStatus, TrainConfig, TrainError};
use vapt_vit::BackboneKind;

type A = Autodiff<Flex>;

fn tiny_config(root: &Path) -> TrainConfig {
    let mut c = TrainConfig::default();
    c.data.root = root.to_path_buf();
    c.data.task = "patch_camelyon".into();
    c.backbone.variant = "D32-L2-H2-M64-P4".into();
    c.backbone.image_size = Some(16);
    c.experts.num_prompts = 4;
    c.experts.vapt.hidden_dim = 4;
    c.optim.epochs = 3;
    c.optim.warmup = 1;
    c.optim.batch_size = 8;
    c.optim.lr = 4.0;
    c.optim.wd = 0.001;
    c
}

fn opts(out: &Path, resume: bool, stop_after: Option<usize>) -> RunOptions {
    RunOptions {
        out: out.to_path_buf(),
        resume,
        stop_after,
        device_label: "cpu".into(),
        allow_changed: Vec::new(),
    }
}

/// Runs a whole sweep on the CPU, quietly, reporting each point's outcome to `on_point`.
fn quiet_sweep(
    spec: &SweepSpec,
    out: &Path,
    on_point: &mut dyn FnMut(usize, &PointOutcome),
) -> sweep::Summary {
    sweep::run_all::<A>(
        spec,
        out,
        &Default::default(),
        "cpu",
        &mut || Box::new(Quiet),
        &mut |i, _, o| on_point(i, o),
    )
    .unwrap()
}

#[test]
fn a_nan_loss_stops_the_run_and_is_recorded_as_diverged() {
    let tmp = tempfile::tempdir().unwrap();
    vapt_tests::write_tiny_vtab(tmp.path(), 4);
    let mut cfg = tiny_config(tmp.path());
    cfg.optim.lr = 1e30;
    cfg.optim.warmup = 0;
    let out = tmp.path().join("run");
    let err = train::<A>(&cfg, &opts(&out, false, None), &Default::default(), &mut Quiet).unwrap_err();
    let TrainError::Diverged { epoch, .. } = err else {
        panic!("expected divergence, got {err}")
    };
    assert!(epoch < 3);
    let r = read_result(&out).unwrap().expect("result.json written");
    assert_eq!(r.status, RunStatus::Diverged);
    assert_eq!(r.eval_top1, 0.0, "a diverged run scores 0");
    assert!(r.failure.unwrap().contains("loss"));
}

#[test]
fn a_two_by_two_sweep_completes_then_skips_every_point() {
    let tmp = tempfile::tempdir().unwrap();
    vapt_tests::write_tiny_vtab(tmp.path(), 4);
    let mut base = tiny_config(tmp.path());
    base.optim.epochs = 2;
    let mut spec = SweepSpec::paper(base);
    spec.lrs = vec![4.0, 0.0];
    spec.wds = vec![0.001, 0.0];
    spec.seeds = vec![42];
    let out = tmp.path().join("sweep");
    let mut outcomes = Vec::new();
    let summary = quiet_sweep(&spec, &out, &mut |i, o| outcomes.push((i, o.clone())));
    assert_eq!(outcomes.len(), 5, "4 grid points + 1 seed");
    assert!(
        outcomes.iter().all(|(_, o)| *o == PointOutcome::Trained),
        "{outcomes:?}"
    );
    let (lr, wd) = summary.chosen.expect("a chosen cell");
    // lr 0 never moves the head from its init; the chosen cell is the one with the best val top-1.
    let best = summary
        .grid
        .iter()
        .map(|c| c.val_top1.unwrap())
        .fold(f64::MIN, f64::max);
    let chosen = summary.grid.iter().find(|c| (c.lr, c.wd) == (lr, wd)).unwrap();
    assert_eq!(chosen.val_top1, Some(best));
    assert!(summary.mean.is_some() && summary.std == Some(0.0));
    let final_cfg: TrainConfig = serde_json::from_str(
        &std::fs::read_to_string(sweep::final_dir(&out, 42).join("config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!((final_cfg.optim.lr, final_cfg.optim.wd), (lr, wd));
    assert_eq!(final_cfg.data.train_split, "train800val200");

    let mut again = Vec::new();
    quiet_sweep(&spec, &out, &mut |i, o| again.push((i, o.clone())));
    assert_eq!(again.len(), 5);
    assert!(
        again.iter().all(|(_, o)| *o == PointOutcome::Skipped),
        "{again:?}"
    );
    let md = sweep::markdown(&spec, &summary);
    assert!(md.contains(&format!("chosen: lr {lr}, wd {wd}")), "{md}");
}

/// What `examples/classify.rs` shows: a finished run, loaded from a program, scores its split as
/// the run did and ranks the classes of an image.
#[test]
fn a_finished_run_scores_and_predicts_from_a_program() {
    let tmp = tempfile::tempdir().unwrap();
    vapt_tests::write_tiny_vtab(tmp.path(), 4);
    let dev = Default::default();
    // A weights file, so that loading does not depend on Burn's (process-global) generator.
    let weights = tmp.path().join("vit.safetensors");
    vapt_vit::VitConfig::from_variant("D32-L2-H2-M64-P4")
        .unwrap()
        .with_image_size(16)
        .init::<Flex>(&dev)
        .save_safetensors(&weights, None)
        .unwrap();
    let mut cfg = tiny_config(tmp.path());
    cfg.backbone.weights = Some(weights);
    cfg.backbone.variant = "auto".into();
    cfg.backbone.image_size = None;
    cfg.optim.epochs = 2;
    let out = tmp.path().join("run");
    train::<A>(&cfg, &opts(&out, false, None), &dev, &mut Quiet).unwrap();
    let result = read_result(&out).unwrap().expect("finished");

    let model = vapt_train::Predictor::<Flex>::load(&out, None, &dev).unwrap();
    let score = model.evaluate(&cfg.data, 3, &dev).unwrap();
    assert_eq!((score.split.as_str(), score.images), ("test", 8));
    assert_eq!(score.top1, result.eval_top1, "the run's own last-epoch score");
    let image = tmp.path().join("patch_camelyon/images/test_17.png");
    let top = model.predict_file(&image, 5, &dev).unwrap();
    assert_eq!(top.len(), 2, "two classes");
    assert!(top[0].probability >= top[1].probability);
    assert!((top[0].probability + top[1].probability - 1.0).abs() < 1e-5);

    let err = vapt_train::Predictor::<Flex>::load(&tmp.path().join("nowhere"), None, &dev)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("nowhere") && err.contains("prompts artifact"),
        "{err}"
    );
}

/// Sweeps on a supervised and an MAE backbone (tiny, random; 2 × 1 grids, one seed) report
/// side by side, with the paper's Table 2 block; the MAE runs record their kind.
#[test]
fn sweeps_on_two_backbones_report_the_table_2_block() {
    let tmp = tempfile::tempdir().unwrap();
    vapt_tests::write_tiny_vtab(tmp.path(), 2);
    for kind in [BackboneKind::Supervised, BackboneKind::Mae] {
        let mut base = tiny_config(tmp.path());
        base.optim.epochs = 1;
        base.optim.warmup = 0;
        base.backbone.kind = Some(kind);
        let mut spec = SweepSpec::paper(base);
        spec.lrs = vec![4.0, 1.0];
        spec.wds = vec![0.0];
        spec.seeds = vec![42];
        let out = tmp.path().join("sweeps").join(kind.name());
        let summary = quiet_sweep(&spec, &out, &mut |_, _| {});
        assert_eq!(summary.backbone, kind);
        let run = read_result(&sweep::final_dir(&out, 42)).unwrap().unwrap();
        assert_eq!(run.backbone_kind, kind);
    }
    let summaries: Vec<_> = vapt_train::report::find_summaries(&tmp.path().join("sweeps"))
        .unwrap()
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    let table = vapt_train::report::Table::new(&summaries);
    let md = table.markdown();
    assert!(md.contains("Table 2"), "{md}");
    for row in ["| supervised | vapt |", "| mae | vapt |"] {
        assert_eq!(md.matches(row).count(), 2, "{row} in both tables:\n{md}");
    }
    assert!(table.csv().contains("\nmae,vapt,"), "{}", table.csv());
}
