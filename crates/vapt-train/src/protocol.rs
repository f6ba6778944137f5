//! The optimisation protocol of one run (SPEC §7.1): SGD with momentum 0.9 and dampening 0, the
//! learning rate `base_lr × batch / 256`, an epoch-wise linear-warm-up + cosine schedule (epoch 0
//! trains at lr 0), and coupled L2 weight decay on every trainable tensor except the head bias.

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::lr_scheduler::LrScheduler;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, LearningRate, SgdConfig};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};
use vapt_experts::PromptedVit;

/// The epoch-wise schedule: `factor(e) = e / warmup` for `e < warmup`, then
/// `½(1 + cos(π (e − warmup) / (epochs − warmup)))`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Grid learning rate before batch scaling (the paper's "lr").
    pub base_lr: f64,
    /// Batch size (the lr is scaled by batch / 256).
    pub batch_size: usize,
    /// Warm-up epochs.
    pub warmup: usize,
    /// Total epochs.
    pub epochs: usize,
}

impl Schedule {
    /// The paper's defaults: 100 epochs, 10 warm-up, batch 64.
    pub fn paper(base_lr: f64) -> Self {
        Self {
            base_lr,
            batch_size: 64,
            warmup: 10,
            epochs: 100,
        }
    }

    /// The schedule of a training set of `images`: a batch larger than the set is the set (the
    /// lr is scaled by the batch a step really takes).
    pub fn with_images(mut self, images: usize) -> Self {
        self.batch_size = self.batch_size.min(images.max(1));
        self
    }

    /// Peak learning rate `base_lr × batch / 256`.
    pub fn peak_lr(&self) -> f64 {
        self.base_lr * self.batch_size as f64 / 256.0
    }

    /// Multiplier of the peak lr in `epoch` (0-based).
    pub fn factor(&self, epoch: usize) -> f64 {
        if epoch < self.warmup {
            epoch as f64 / self.warmup as f64
        } else {
            let span = self.epochs.saturating_sub(self.warmup).max(1) as f64;
            0.5 * (1.0 + (std::f64::consts::PI * (epoch - self.warmup) as f64 / span).cos())
        }
    }

    /// The learning rate of every step in `epoch`.
    pub fn lr(&self, epoch: usize) -> f64 {
        self.peak_lr() * self.factor(epoch)
    }
}

/// The epoch-wise [`Schedule`] as a Burn [`LrScheduler`], which is stepped once before every
/// optimiser step: step `i` (0-based) belongs to epoch `i / steps_per_epoch` (⌈n / batch⌉ steps,
/// the last partial batch kept).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochScheduler {
    /// The schedule.
    pub schedule: Schedule,
    /// Optimiser steps per epoch.
    pub steps_per_epoch: usize,
    /// Steps taken so far.
    pub iteration: usize,
}

impl EpochScheduler {
    /// A scheduler for `train_len` images per epoch.
    pub fn new(schedule: Schedule, train_len: usize) -> Self {
        let steps_per_epoch = train_len.div_ceil(schedule.batch_size.max(1)).max(1);
        Self {
            schedule,
            steps_per_epoch,
            iteration: 0,
        }
    }
}

impl LrScheduler for EpochScheduler {
    type Record<B: Backend> = usize;

    fn step(&mut self) -> LearningRate {
        let epoch = self.iteration / self.steps_per_epoch;
        self.iteration += 1;
        self.schedule.lr(epoch)
    }

    fn to_record<B: Backend>(&self) -> Self::Record<B> {
        self.iteration
    }

    fn load_record<B: Backend>(mut self, record: Self::Record<B>) -> Self {
        self.iteration = record;
        self
    }
}

/// SGD with momentum 0.9, dampening 0 (Burn defaults to 0.1), no Nesterov, no built-in weight
/// decay (see [`coupled_weight_decay`]).
pub fn sgd() -> SgdConfig {
    SgdConfig::new().with_momentum(Some(
        MomentumConfig::new()
            .with_momentum(0.9)
            .with_dampening(0.0)
            .with_nesterov(false),
    ))
}

struct Decay<'a> {
    grads: &'a mut GradientsParams,
    wd: f64,
    skip: Option<ParamId>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Decay<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if Some(param.id) == self.skip {
            return;
        }
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            let theta = param.val().inner();
            self.grads
                .register::<B::InnerBackend, D>(param.id, g + theta.mul_scalar(self.wd));
        }
    }
}

/// Adds `wd · θ` to the gradient of every parameter that has one (the trainable ones), except the
/// head bias: coupled L2 decay applied before momentum, as PyTorch's SGD does.
pub fn coupled_weight_decay<B: AutodiffBackend>(
    model: &PromptedVit<B>,
    grads: GradientsParams,
    wd: f64,
) -> GradientsParams {
    let mut grads = grads;
    if wd == 0.0 {
        return grads;
    }
    let skip = model.head.as_ref().map(|h| h.bias.id);
    model.visit(&mut Decay {
        grads: &mut grads,
        wd,
        skip,
    });
    grads
}

/// The gradients of `loss` for `model`, with coupled weight decay applied.
pub fn gradients<B: AutodiffBackend>(model: &PromptedVit<B>, loss: Tensor<B, 1>, wd: f64) -> GradientsParams {
    let grads = GradientsParams::from_grads(loss.backward(), model);
    coupled_weight_decay(model, grads, wd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{Distribution, Int, TensorData};
    use vapt_experts::{Method, PromptConfig};

    use crate::loss::cross_entropy;
    use vapt_vit::VitConfig;

    type A = Autodiff<Flex>;

    #[test]
    fn schedule_matches_the_formula_for_warmup_10_of_100() {
        let s = Schedule::paper(10.0);
        assert_eq!(s.peak_lr(), 2.5);
        assert_eq!(s.lr(0), 0.0);
        assert!((s.lr(1) - 0.25).abs() < 1e-12);
        assert!((s.lr(5) - 1.25).abs() < 1e-12);
        assert_eq!(s.lr(10), 2.5);
        for e in 10..100 {
            let expect = 2.5 * 0.5 * (1.0 + (std::f64::consts::PI * (e - 10) as f64 / 90.0).cos());
            assert!((s.lr(e) - expect).abs() < 1e-12, "epoch {e}");
        }
        assert!((s.lr(55) - 1.25).abs() < 1e-12);
        assert!(s.lr(99) > 0.0 && s.lr(99) < 0.001);
    }

    #[test]
    fn the_burn_scheduler_follows_the_epoch_schedule() {
        // train800 at batch 64: 13 steps per epoch, the last one partial.
        let s = Schedule::paper(5.0);
        let mut sched = EpochScheduler::new(s, 800);
        assert_eq!(sched.steps_per_epoch, 13);
        let lrs: Vec<f64> = (0..13 * 100).map(|_| sched.step()).collect();
        for (i, lr) in lrs.iter().enumerate() {
            assert_eq!(*lr, s.lr(i / 13), "step {i}");
        }
        assert!(lrs[..13].iter().all(|&l| l == 0.0), "epoch 0 trains at lr 0");
        assert_eq!(EpochScheduler::new(s, 1000).steps_per_epoch, 16);
        // Resuming from a record continues where it stopped.
        let record = LrScheduler::to_record::<Flex>(&sched);
        let mut resumed = EpochScheduler::new(s, 800).load_record::<Flex>(record);
        assert_eq!(resumed.step(), s.lr(100));
    }

    #[test]
    fn weight_decay_skips_the_head_bias_and_decays_prompts() {
        let device = Default::default();
        let vit = VitConfig::from_variant("D16-L2-H2-M32-P8")
            .unwrap()
            .with_image_size(32)
            .init::<A>(&device);
        let model = PromptedVit::new(
            vit,
            PromptConfig::new(Method::Vapt, 3, 4).without_dropout(),
            &device,
        )
        .unwrap();
        let x = Tensor::<A, 4>::random([2, 3, 32, 32], Distribution::Normal(0.0, 1.0), &device);
        let y = Tensor::<A, 1, Int>::from_data(TensorData::new(vec![1i64, 3], [2]), &device);
        let loss = || cross_entropy(model.forward(x.clone()), y.clone());
        let plain = GradientsParams::from_grads(loss().backward(), &model);
        let decayed = gradients(&model, loss(), 0.5);
        let get = |g: &GradientsParams, p: &Param<Tensor<A, 2>>| {
            g.get::<Flex, 2>(p.id)
                .unwrap()
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .unwrap()
        };
        let prompts = model.prompt.as_ref().unwrap();
        let theta = prompts
            .r#static
            .val()
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .unwrap();
        let (g0, g1) = (get(&plain, &prompts.r#static), get(&decayed, &prompts.r#static));
        for i in 0..theta.len() {
            assert!((g1[i] - (g0[i] + 0.5 * theta[i])).abs() < 1e-6);
        }
        let head = model.head.as_ref().unwrap();
        let hb = |g: &GradientsParams| {
            g.get::<Flex, 1>(head.bias.id)
                .unwrap()
                .into_data()
                .to_vec::<f32>()
                .unwrap()
        };
        assert_eq!(hb(&plain), hb(&decayed), "the head bias must not be decayed");
        let hw0 = get(&plain, &head.weight);
        let hw1 = get(&decayed, &head.weight);
        assert_ne!(hw0, hw1, "the head weight is decayed");
        // The frozen backbone has no gradient, decayed or not.
        assert!(decayed.get::<Flex, 3>(model.backbone.cls_token.id).is_none());
        assert!(model.num_params() > 0);
    }
}
