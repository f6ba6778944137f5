//! Progress of a run: burn-train's terminal dashboard when stdout is a terminal, plain lines
//! otherwise (logs, CI, job schedulers), or nothing.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use burn::data::dataloader::Progress;
use burn_train::metric::{
    MetricAttributes, MetricDefinition, MetricEntry, MetricId, NumericAttributes, NumericEntry,
    SerializedEntry,
};
use burn_train::renderer::tui::TuiMetricsRendererWrapper;
use burn_train::renderer::{MetricState, MetricsRenderer, MetricsRendererTraining, TrainingProgress};
use burn_train::Interrupter;

use vapt_experts::params::group;

use crate::run_dir::EpochRow;

/// What a run announces when it starts.
#[derive(Debug, Clone)]
pub struct RunHeader {
    /// `<task>/<method>-lr..-wd..-seed..`.
    pub label: String,
    /// The run folder.
    pub out: PathBuf,
    /// Device name.
    pub device: String,
    /// Trainable parameters.
    pub trainable: usize,
    /// All parameters.
    pub total: usize,
    /// Epochs of the schedule.
    pub epochs: usize,
    /// First epoch of this session (> 0 when resuming).
    pub start_epoch: usize,
    /// Optimiser steps per epoch.
    pub steps_per_epoch: usize,
    /// Training images.
    pub train_images: usize,
    /// Evaluation images.
    pub eval_images: usize,
}

/// One optimiser step.
#[derive(Debug, Clone, Copy)]
pub struct StepInfo {
    /// Epoch (0-based).
    pub epoch: usize,
    /// Epochs in the schedule.
    pub epochs: usize,
    /// Step within the epoch (0-based).
    pub step: usize,
    /// Steps per epoch.
    pub steps: usize,
    /// This batch's loss.
    pub loss: f64,
    /// Learning rate.
    pub lr: f64,
    /// Mean loss of the epoch so far.
    pub running_loss: f64,
    /// Top-1 (%) of the epoch so far.
    pub running_top1: f64,
}

/// Receives a run's progress.
pub trait Monitor {
    /// The run starts (or resumes).
    fn start(&mut self, _header: &RunHeader) {}
    /// A free-form status line.
    fn message(&mut self, _text: &str) {}
    /// After each optimiser step.
    fn step(&mut self, _info: &StepInfo) {}
    /// During evaluation: `done` of `total` images.
    fn eval_progress(&mut self, _epoch: usize, _done: usize, _total: usize) {}
    /// After each epoch.
    fn epoch_end(&mut self, _row: &EpochRow) {}
    /// Whether the user asked to stop (checked after every step; the run stays resumable).
    fn should_stop(&self) -> bool {
        false
    }
    /// The session ends.
    fn finish(&mut self) {}
}

/// Prints nothing.
#[derive(Debug, Default)]
pub struct Quiet;

impl Monitor for Quiet {}

/// Plain lines on stderr: a header, one line per epoch, and a progress line every ~20 s inside
/// long epochs.
#[derive(Debug)]
pub struct Plain {
    last: Instant,
    started: Instant,
}

impl Default for Plain {
    fn default() -> Self {
        Self {
            last: Instant::now(),
            started: Instant::now(),
        }
    }
}

impl Monitor for Plain {
    fn start(&mut self, h: &RunHeader) {
        self.started = Instant::now();
        self.last = Instant::now();
        eprintln!("run      {}", h.label);
        eprintln!("folder   {}", h.out.display());
        eprintln!("device   {}", h.device);
        eprintln!(
            "params   trainable {} of {} ({:.3}%)",
            group(h.trainable),
            group(h.total),
            100.0 * h.trainable as f64 / h.total.max(1) as f64
        );
        eprintln!(
            "data     {} training images ({} steps per epoch), {} evaluation images",
            h.train_images, h.steps_per_epoch, h.eval_images
        );
        if h.start_epoch > 0 {
            eprintln!("resuming at epoch {} of {}", h.start_epoch, h.epochs);
        }
    }

    fn message(&mut self, text: &str) {
        eprintln!("{text}");
    }

    fn step(&mut self, s: &StepInfo) {
        if self.last.elapsed().as_secs_f64() >= 20.0 {
            self.last = Instant::now();
            eprintln!(
                "  epoch {}/{} step {}/{}  loss {:.4}  top-1 {:.1}%  lr {:.4}",
                s.epoch + 1,
                s.epochs,
                s.step + 1,
                s.steps,
                s.running_loss,
                s.running_top1,
                s.lr
            );
        }
    }

    fn epoch_end(&mut self, r: &EpochRow) {
        let eval = match (r.eval_loss, r.eval_top1) {
            (Some(l), Some(t)) => format!("  eval loss {l:.4} top-1 {t:.2}%"),
            _ => String::new(),
        };
        eprintln!(
            "epoch {:>3}  lr {:.5}  train loss {:.4} top-1 {:5.1}%{eval}  [{:.1} s, {:.0} s in all]",
            r.epoch + 1,
            r.lr,
            r.train_loss,
            r.train_top1,
            r.seconds,
            self.started.elapsed().as_secs_f64()
        );
    }
}

/// burn-train's terminal dashboard (loss, top-1 and lr plots, progress, ETA); `q` stops the run
/// resumably after the current step.
pub struct Dashboard {
    renderer: TuiMetricsRendererWrapper,
    interrupter: Interrupter,
    ids: [MetricId; 3],
    epochs: usize,
    iteration: usize,
}

const NAMES: [&str; 3] = ["Loss", "Top-1", "Learning rate"];

impl Dashboard {
    /// Starts the dashboard (takes over the terminal until [`Monitor::finish`]).
    pub fn new() -> Self {
        let interrupter = Interrupter::new();
        let mut renderer = TuiMetricsRendererWrapper::new(interrupter.clone(), None);
        let ids = NAMES.map(|n| MetricId::new(Arc::new(n.to_string())));
        for (id, name) in ids.iter().zip(NAMES) {
            renderer.register_metric(MetricDefinition {
                metric_id: id.clone(),
                name: name.to_string(),
                description: None,
                attributes: MetricAttributes::Numeric(NumericAttributes {
                    unit: (name == "Top-1").then(|| "%".to_string()),
                    higher_is_better: name == "Top-1",
                }),
            });
        }
        Self {
            renderer,
            interrupter,
            ids,
            epochs: 0,
            iteration: 0,
        }
    }

    fn state(&self, i: usize, value: f64) -> MetricState {
        let entry = MetricEntry::new(
            self.ids[i].clone(),
            SerializedEntry::new(format!("{value:.4}"), value.to_string()),
        );
        MetricState::Numeric(entry, NumericEntry::Value(value))
    }
}

impl Default for Dashboard {
    fn default() -> Self {
        Self::new()
    }
}

impl Monitor for Dashboard {
    fn start(&mut self, h: &RunHeader) {
        self.epochs = h.epochs;
        self.iteration = h.start_epoch * h.steps_per_epoch;
    }

    fn step(&mut self, s: &StepInfo) {
        self.iteration += 1;
        for (i, v) in [s.loss, s.running_top1, s.lr].into_iter().enumerate() {
            let state = self.state(i, v);
            self.renderer.update_train(state);
        }
        self.renderer.render_train(
            TrainingProgress {
                progress: Some(Progress {
                    items_processed: s.step + 1,
                    items_total: s.steps,
                }),
                global_progress: Progress {
                    items_processed: s.epoch + 1,
                    items_total: s.epochs,
                },
                iteration: Some(self.iteration),
            },
            vec![],
        );
    }

    fn eval_progress(&mut self, epoch: usize, done: usize, total: usize) {
        self.renderer.render_valid(
            TrainingProgress {
                progress: Some(Progress {
                    items_processed: done,
                    items_total: total,
                }),
                global_progress: Progress {
                    items_processed: epoch + 1,
                    items_total: self.epochs,
                },
                iteration: None,
            },
            vec![],
        );
    }

    fn epoch_end(&mut self, r: &EpochRow) {
        if let (Some(l), Some(t)) = (r.eval_loss, r.eval_top1) {
            let (a, b) = (self.state(0, l), self.state(1, t));
            self.renderer.update_valid(a);
            self.renderer.update_valid(b);
        }
    }

    fn should_stop(&self) -> bool {
        self.interrupter.should_stop()
    }
}

/// The dashboard when stdout is a terminal (and `plain` is false), plain lines otherwise.
pub fn auto(plain: bool) -> Box<dyn Monitor> {
    if !plain && std::io::stdout().is_terminal() && std::io::stderr().is_terminal() {
        Box::new(Dashboard::new())
    } else {
        Box::new(Plain::default())
    }
}
