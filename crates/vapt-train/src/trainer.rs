//! One training run: data → backbone → prompt experts → the epoch loop → run folder.
//!
//! Determinism: the model is initialised from the seed; epoch `e` shuffles with (seed, e) and
//! reseeds the backend RNG (dropout) with (seed, e), so a run killed after epoch k and resumed
//! ends with the same metrics, bit for bit, as an uninterrupted one (same device and threads).
//!
//! Linear probing with a deterministic transform (VTAB recipe) never changes the backbone's
//! output, so the run computes the frozen features of every image once and trains the head on a
//! loader over those rows; the loop itself does not know the difference.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ElementConversion;
use vapt_data::loader::epoch_seed;
use vapt_data::{ImageSet, Loader, Task};
use vapt_experts::{save_artifact, Method, PromptedVit};
use vapt_vit::{BackboneKind, PretrainedCfg};

use crate::checkpoint::{self, CheckpointMeta};
use crate::config::{OptimizerKind, TrainConfig};
use crate::error::TrainError;
use crate::eval::{compute_features, evaluate, logits};
use crate::files::write_json;
use crate::loss::{count_correct, cross_entropy};
use crate::monitor::{Monitor, RunHeader, StepInfo};
use crate::protocol::{gradients, sgd};
use crate::run_dir::{
    self, git_revision, EpochRow, Outcome, RunOptions, RunResult, RunStatus, ARTIFACT_FILE, BACKBONE_FILE,
    CHECKPOINT_DIR, RESULT_FILE,
};

/// Trains one run as `cfg` describes into `opts.out`, reporting progress to `monitor`.
pub fn train<B: AutodiffBackend>(
    cfg: &TrainConfig,
    opts: &RunOptions,
    device: &B::Device,
    monitor: &mut dyn Monitor,
) -> Result<Outcome, TrainError> {
    cfg.validate("configuration")?;
    let task = Task::open(&cfg.data)?;
    let (train_split, eval_split) = task.splits(&cfg.data)?;
    run_dir::check(cfg, opts)?;
    B::seed(device, cfg.seed);
    let (backbone, pre) = cfg.backbone.load::<B>(device)?;
    let (size, kind) = (backbone.config.image_size, backbone.config.kind);
    let mut prompt = cfg.experts.clone();
    prompt.num_classes = train_split.num_classes;
    let model = checkpoint::renumber_params(PromptedVit::new(backbone, prompt, device)?);
    let transform = |train| cfg.data.format.transform(train, size, pre.mean, pre.std);
    let train = ImageSet::new(train_split, transform(true), cfg.seed);
    let eval = ImageSet::new(eval_split, transform(false), cfg.seed);
    monitor.message(&format!(
        "decoding {} training and {} evaluation images",
        train.len(),
        eval.len()
    ));
    train.preload()?;
    eval.preload()?;
    run_dir::start(cfg, opts)?;
    let mut run = Run {
        cfg,
        opts,
        device,
        pre,
        kind,
        data_sha: task.manifest_sha256(),
        monitor,
        history: Vec::new(),
        wall: 0.0,
        params: (0, 0),
        backbone_params: 0,
    };
    let sets = (Arc::new(train), Arc::new(eval));
    match cfg.optim.optimizer {
        OptimizerKind::Sgd => run.fit(model, sgd().init::<B, PromptedVit<B>>(), sets),
        OptimizerKind::Adamw => {
            let optim = AdamWConfig::new()
                .with_weight_decay(cfg.optim.wd as f32)
                .init::<B, PromptedVit<B>>();
            run.fit(model, optim, sets)
        }
    }
}

/// Everything a run needs besides the model and the optimiser, and what it has done so far.
struct Run<'a, B: AutodiffBackend> {
    cfg: &'a TrainConfig,
    opts: &'a RunOptions,
    device: &'a B::Device,
    pre: PretrainedCfg,
    kind: BackboneKind,
    data_sha: Option<String>,
    monitor: &'a mut dyn Monitor,
    history: Vec<EpochRow>,
    /// Wall seconds over all sessions.
    wall: f64,
    /// Trainable and total parameters.
    params: (usize, usize),
    /// Parameters of the pre-trained backbone (what "tuned %" is a share of).
    backbone_params: usize,
}

/// How the training part of an epoch ended.
enum EpochEnd {
    /// Every batch: summed loss, correct predictions, images.
    Done(f64, usize, usize),
    /// A NaN/inf loss at this step.
    Diverged(usize, f64),
    /// The user asked to stop.
    Stopped,
}

impl<B: AutodiffBackend> Run<'_, B> {
    fn fit<O: Optimizer<PromptedVit<B>, B>>(
        &mut self,
        model: PromptedVit<B>,
        mut optim: O,
        (train, eval): (Arc<ImageSet>, Arc<ImageSet>),
    ) -> Result<Outcome, TrainError> {
        let cfg = self.cfg;
        let ckpt_dir = self.opts.out.join(CHECKPOINT_DIR);
        let mut schedule = cfg.optim.schedule();
        // A new run folder has no checkpoint (`run_dir::check` refuses an unfinished one
        // without --resume).
        let identity = self.identity()?;
        let saved = if self.opts.resume {
            checkpoint::load::<B, _, O::Record>(
                &ckpt_dir,
                model.clone(),
                self.device,
                &identity,
                &self.opts.allow_changed,
            )?
        } else {
            None
        };
        let (mut model, start) = match saved {
            Some(loaded) => {
                optim = optim.load_record(loaded.record);
                let state = ckpt_dir.join(checkpoint::STATE_FILE);
                self.history = loaded.meta.rows(&state, schedule.epochs)?;
                let done = loaded.meta.epochs_done;
                if let Some(why) = &loaded.fell_back {
                    self.monitor.message(why);
                }
                self.wall = loaded.meta.wall_seconds;
                (loaded.module, done)
            }
            None => (model, 0),
        };
        self.params = checkpoint::count_params(&model);
        self.backbone_params = burn::module::Module::num_params(&model.backbone);
        let (train_loader, eval_loader) = self.loaders(&model, train, eval, start < schedule.epochs)?;
        self.monitor.start(&RunHeader {
            label: cfg.label(),
            out: self.opts.out.clone(),
            device: self.opts.device_label.clone(),
            trainable: self.params.0,
            total: self.params.1,
            epochs: schedule.epochs,
            start_epoch: start,
            steps_per_epoch: train_loader.steps(),
            train_images: train_loader.len(),
            eval_images: eval_loader.len(),
        });
        if train_loader.len() < schedule.batch_size {
            // Every step sees the whole training set: the lr scales with the batch it really is.
            schedule = schedule.with_images(train_loader.len());
            self.monitor.message(&format!(
                "batch {} is larger than the {} training images: every step takes all of them, \
                 and the lr is scaled by {}/256 (peak lr {})",
                cfg.optim.batch_size,
                train_loader.len(),
                schedule.batch_size,
                schedule.peak_lr()
            ));
        }
        for epoch in start..schedule.epochs {
            let t0 = Instant::now();
            let lr = schedule.lr(epoch);
            B::seed(self.device, epoch_seed(cfg.seed, epoch));
            let (loss_sum, correct, seen) =
                match self.train_epoch(&mut model, &mut optim, &train_loader, epoch, lr)? {
                    EpochEnd::Done(l, c, n) => (l, c, n),
                    EpochEnd::Diverged(step, loss) => {
                        self.wall += t0.elapsed().as_secs_f64();
                        return self.diverged(epoch, step, loss);
                    }
                    EpochEnd::Stopped => {
                        self.monitor.message(&format!(
                            "stopped during epoch {epoch}; --resume continues from the start of it"
                        ));
                        self.monitor.finish();
                        return Ok(Outcome::Stopped(self.history.len()));
                    }
                };
            let last = epoch + 1 == schedule.epochs;
            let every = cfg.eval_every > 0 && (epoch + 1) % cfg.eval_every == 0;
            let (eval_loss, eval_top1) = if last || every {
                let monitor = &mut *self.monitor;
                let (l, t) = evaluate(&model.valid(), &eval_loader, self.device, |done, total| {
                    monitor.eval_progress(epoch, done, total)
                })?;
                (Some(l), Some(t))
            } else {
                (None, None)
            };
            let seconds = t0.elapsed().as_secs_f64();
            self.wall += seconds;
            let n = seen.max(1) as f64;
            let row = EpochRow {
                epoch,
                lr,
                train_loss: loss_sum / n,
                train_top1: 100.0 * correct as f64 / n,
                eval_loss,
                eval_top1,
                seconds,
            };
            self.monitor.epoch_end(&row);
            self.history.push(row);
            run_dir::write_metrics(&self.opts.out, &self.history)?;
            let meta = CheckpointMeta {
                epochs_done: epoch + 1,
                history: serde_json::to_string(&self.history).unwrap_or_default(),
                wall_seconds: self.wall,
                identity: identity.clone(),
            };
            checkpoint::save(&ckpt_dir, &model, optim.to_record(), &meta)?;
            if !last && self.opts.stop_after.is_some_and(|k| epoch + 1 >= k) {
                self.monitor.message(&format!(
                    "stopped after epoch {} of {} as asked; continue with --resume",
                    epoch + 1,
                    schedule.epochs
                ));
                self.monitor.finish();
                return Ok(Outcome::Stopped(epoch + 1));
            }
        }
        self.finish(&model)
    }

    /// The training and evaluation loaders: over cached features when only the head trains
    /// (linear and MLP probes) with a
    /// deterministic transform (`VAPT_NO_FEATURE_CACHE=1` turns this off, to check that both
    /// paths agree), over images otherwise.
    fn loaders(
        &mut self,
        model: &PromptedVit<B>,
        train: Arc<ImageSet>,
        eval: Arc<ImageSet>,
        epochs_left: bool,
    ) -> Result<(Loader, Loader), TrainError> {
        let (batch, seed) = (self.cfg.optim.batch_size, self.cfg.seed);
        let cache = std::env::var_os("VAPT_NO_FEATURE_CACHE").is_none()
            && self.cfg.experts.method.head_only()
            && !train.transform.is_random()
            && epochs_left;
        if !cache {
            return Ok((
                Loader::images(train, batch, Some(seed)),
                Loader::images(eval, batch, None),
            ));
        }
        self.monitor
            .message("head-only training: computing the frozen backbone's features once");
        let t0 = Instant::now();
        let inner = model.valid();
        let features =
            |set: Arc<ImageSet>| compute_features(&inner, &Loader::images(set, batch, None), self.device);
        let (train, eval) = (Arc::new(features(train)?), Arc::new(features(eval)?));
        self.wall += t0.elapsed().as_secs_f64();
        Ok((
            Loader::features(train, batch, Some(seed)),
            Loader::features(eval, batch, None),
        ))
    }

    /// The optimiser steps of `epoch` at learning rate `lr`.
    fn train_epoch<O: Optimizer<PromptedVit<B>, B>>(
        &mut self,
        model: &mut PromptedVit<B>,
        optim: &mut O,
        loader: &Loader,
        epoch: usize,
        lr: f64,
    ) -> Result<EpochEnd, TrainError> {
        let (wd, epochs, steps) = (self.cfg.optim.wd, self.cfg.optim.epochs, loader.steps());
        let sgd_decay = self.cfg.optim.optimizer == OptimizerKind::Sgd;
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
        for (step, batch) in loader.epoch::<B>(epoch, self.device).enumerate() {
            let batch = batch?;
            let n = batch.targets.dims()[0];
            let logits = logits(model, batch.input);
            let loss = cross_entropy(logits.clone(), batch.targets.clone());
            let loss_v: f64 = loss.clone().into_scalar().elem();
            if !loss_v.is_finite() {
                return Ok(EpochEnd::Diverged(step, loss_v));
            }
            correct += count_correct(logits.detach(), batch.targets);
            let grads = if sgd_decay {
                gradients(model, loss, wd)
            } else {
                GradientsParams::from_grads(loss.backward(), model)
            };
            *model = optim.step(lr, model.clone(), grads);
            loss_sum += loss_v * n as f64;
            seen += n;
            self.monitor.step(&StepInfo {
                epoch,
                epochs,
                step,
                steps,
                loss: loss_v,
                lr,
                running_loss: loss_sum / seen as f64,
                running_top1: 100.0 * correct as f64 / seen as f64,
            });
            if self.monitor.should_stop() {
                return Ok(EpochEnd::Stopped);
            }
        }
        Ok(EpochEnd::Done(loss_sum, correct, seen))
    }

    /// Records a NaN/inf loss as a diverged run (`result.json`) and returns the error.
    fn diverged(&mut self, epoch: usize, step: usize, loss: f64) -> Result<Outcome, TrainError> {
        let failure = format!("loss {loss} at epoch {epoch}, step {step}");
        let result = self.record(RunStatus::Diverged, Some(failure), None);
        write_json(&self.opts.out.join(RESULT_FILE), &result)?;
        Err(TrainError::Diverged {
            epoch,
            step,
            loss,
            dir: self.opts.out.clone(),
        })
    }

    /// Writes the backbone of a full fine-tuning, the artifact, the curves (`curves.svg`) and
    /// `result.json`; removes the checkpoint.
    fn finish(&mut self, model: &PromptedVit<B>) -> Result<Outcome, TrainError> {
        let dir: PathBuf = self.opts.out.clone();
        let inner = model.valid();
        if self.cfg.experts.method == Method::Full {
            // Full fine-tuning changes the backbone: save it (with its preprocessing) for reuse.
            let pre = PretrainedCfg {
                source: "vapt full fine-tuning".into(),
                file: None,
                sha256: None,
                tag: Some(self.cfg.label()),
                input_size: inner.backbone.config.image_size,
                ..self.pre.clone()
            };
            inner
                .backbone
                .save_safetensors(&dir.join(BACKBONE_FILE), Some(&pre))?;
        }
        save_artifact(&inner, self.pre.sha256.as_deref(), &dir.join(ARTIFACT_FILE))?;
        crate::figures::write_curves(&dir, &self.history, &self.cfg.label())?;
        let result = self.record(RunStatus::Ok, None, Some(ARTIFACT_FILE.to_string()));
        write_json(&dir.join(RESULT_FILE), &result)?;
        let _ = std::fs::remove_dir_all(dir.join(CHECKPOINT_DIR));
        self.monitor.finish();
        Ok(Outcome::Finished(Box::new(result)))
    }

    /// What the checkpoints of this run must match.
    fn identity(&self) -> Result<checkpoint::Identity, TrainError> {
        let json = serde_json::to_vec(self.cfg).map_err(|e| TrainError::Config {
            path: self.opts.out.join(crate::run_dir::CONFIG_FILE),
            message: e.to_string(),
        })?;
        Ok(checkpoint::Identity {
            config_sha256: vapt_files::sha256_hex(&json),
            weights_sha256: self.pre.sha256.clone(),
            data_sha256: self.data_sha.clone(),
        })
    }

    fn record(&self, status: RunStatus, failure: Option<String>, artifact: Option<String>) -> RunResult {
        let last = self.history.last();
        let ok = status == RunStatus::Ok;
        RunResult {
            status,
            failure,
            task: self.cfg.data.task.clone(),
            method: self.cfg.experts.label(),
            eval_split: self.cfg.data.eval_split.clone(),
            eval_top1: if ok {
                last.and_then(|r| r.eval_top1).unwrap_or(0.0)
            } else {
                0.0
            },
            eval_loss: last.and_then(|r| r.eval_loss).filter(|_| ok),
            train_loss: last.map(|r| r.train_loss),
            epochs: self.history.len(),
            trainable_params: self.params.0,
            total_params: self.params.1,
            backbone_params: Some(self.backbone_params),
            wall_seconds: self.wall,
            device: self.opts.device_label.clone(),
            seed: self.cfg.seed,
            git_revision: git_revision().to_string(),
            weights_sha256: self.pre.sha256.clone(),
            data_manifest_sha256: self.data_sha.clone(),
            artifact,
            backbone_kind: self.kind,
            allowed_changes: self.opts.allow_changed.clone(),
        }
    }
}
