//! A trained model as a library: load a finished run (or a prompts artifact) onto its backbone,
//! then classify images — top-k classes with probabilities — score a split, or look at its
//! mixture of experts. What `vapt eval`, `vapt predict` and `vapt analyze` do, callable from a user's own program:
//!
//! ```no_run
//! # fn main() -> Result<(), vapt_train::TrainError> {
//! use burn::backend::Flex;
//! let device = Default::default();
//! let model = vapt_train::Predictor::<Flex>::load("runs/dtd-vapt".as_ref(), None, &device)?;
//! for p in model.predict_file("photo.jpg".as_ref(), 5, &device)? {
//!     println!("class {} ({:.1}%)", p.class, 100.0 * p.probability);
//! }
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde::Serialize;
use vapt_data::images::decode;
use vapt_data::transform::SplitMix64;
use vapt_data::{DataConfig, ImageSet, Loader, Rgb8, Task, Transform};
use vapt_experts::artifact::read_header;
use vapt_experts::{load_artifact, MoeView, PromptedVit};
use vapt_vit::PretrainedCfg;

use crate::config::TrainConfig;
use crate::error::TrainError;
use crate::eval::evaluate;
use crate::run_dir::{ARTIFACT_FILE, CONFIG_FILE};

/// One class of a prediction.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Prediction {
    /// Class index (the label order of the training split).
    pub class: usize,
    /// Softmax probability.
    pub probability: f32,
}

impl std::fmt::Display for Prediction {
    /// `7 (99.2%)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({:.1}%)", self.class, 100.0 * self.probability)
    }
}

/// The score of a model on a split.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Score {
    /// Task.
    pub task: String,
    /// Split.
    pub split: String,
    /// Images scored.
    pub images: usize,
    /// Mean cross-entropy.
    pub loss: f64,
    /// Top-1 (%).
    pub top1: f64,
}

/// A trained prompted model with the configuration it was trained with.
pub struct Predictor<B: Backend> {
    /// The model (frozen backbone + trained experts and head).
    pub model: PromptedVit<B>,
    /// The run configuration (from the run folder, or defaults + the artifact's settings).
    pub cfg: TrainConfig,
    /// The backbone's preprocessing.
    pub pre: PretrainedCfg,
}

/// The `k` largest of `probs` (ties in index order), largest first.
pub fn top_k(probs: &[f32], k: usize) -> Vec<Prediction> {
    let mut idx: Vec<usize> = (0..probs.len()).collect();
    idx.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    idx.truncate(k);
    idx.into_iter()
        .map(|class| Prediction {
            class,
            probability: probs[class],
        })
        .collect()
}

impl<B: Backend> Predictor<B> {
    /// Loads a run folder (its `config.json` and `prompts.safetensors`) or a prompts artifact file
    /// onto its backbone: `weights` (required with an artifact trained on real weights) or the
    /// run's. The artifact's backbone SHA-256 must match the weights'.
    pub fn load(model: &Path, weights: Option<PathBuf>, device: &B::Device) -> Result<Self, TrainError> {
        let (mut cfg, artifact) = if model.is_dir() {
            (
                TrainConfig::from_file(&model.join(CONFIG_FILE))?,
                model.join(ARTIFACT_FILE),
            )
        } else {
            (TrainConfig::default(), model.to_path_buf())
        };
        if !artifact.is_file() {
            return Err(TrainError::Config {
                path: artifact,
                message: "no prompts artifact (is the run finished? `result.json` is written with it)".into(),
            });
        }
        let (header, _) = read_header(&artifact)?;
        if weights.is_some() {
            cfg.backbone.weights = weights;
        }
        if cfg.backbone.weights.is_none() && !model.is_dir() {
            if let Some(sha) = &header.backbone_sha256 {
                return Err(TrainError::Config {
                    path: artifact,
                    message: format!(
                        "these prompts were trained on a backbone with SHA-256 {sha}; pass it with --weights"
                    ),
                });
            }
            // Trained on a random backbone (tests, benchmarks): re-create one of the artifact's shape.
            let b = &header.backbone;
            cfg.backbone.variant = format!(
                "D{}-L{}-H{}-M{}-P{}",
                b.hidden, b.depth, b.heads, b.mlp_dim, b.patch_size
            );
            cfg.backbone.image_size = Some(b.image_size);
        }
        cfg.experts = header.prompt.clone();
        // A random backbone is re-created from the run's seed, as training created it.
        B::seed(device, cfg.seed);
        let (backbone, pre) = cfg.backbone.load::<B>(device)?;
        let model = load_artifact(&artifact, backbone, pre.sha256.as_deref(), device)?;
        Ok(Self { model, cfg, pre })
    }

    /// Writes the run as one plain ViT ([`PromptedVit::merged_backbone`]: LoRA folded in,
    /// partial-k / bias tensors in place, the head built in) to `path` as vapt's native
    /// safetensors with the backbone's preprocessing. Never overwrites a file.
    pub fn save_merged_backbone(&self, path: &Path) -> Result<(), TrainError> {
        if path.exists() {
            return Err(TrainError::Config {
                path: path.to_path_buf(),
                message: "already exists; vapt never overwrites a file, choose another output path".into(),
            });
        }
        let merged = self.model.merged_backbone().map_err(|e| TrainError::Config {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let pre = PretrainedCfg {
            source: format!("vapt {} merged into its backbone", self.model.config.label()),
            ..self.pre.clone()
        };
        Ok(merged.save_safetensors(path, Some(&pre))?)
    }

    /// Input side in pixels.
    pub fn image_size(&self) -> usize {
        self.model.backbone.config.image_size
    }

    /// The evaluation preprocessing of the run's recipe.
    pub fn transform(&self) -> Transform {
        let size = self.image_size();
        self.cfg
            .data
            .format
            .transform(false, size, self.pre.mean, self.pre.std)
    }

    /// Class probabilities of one decoded image, the `top` largest first.
    pub fn predict(&self, image: &Rgb8, top: usize, device: &B::Device) -> Vec<Prediction> {
        let size = self.image_size();
        let pixels = self.transform().apply(image, &mut SplitMix64(0));
        let x = Tensor::<B, 4>::from_data(TensorData::new(pixels, [1, 3, size, size]), device);
        let probs = softmax(self.model.forward(x), 1);
        let v: Vec<f32> = probs.into_data().convert::<f32>().into_vec().unwrap_or_default();
        top_k(&v, top)
    }

    /// [`Self::predict`] on an image file (PNG or JPEG).
    pub fn predict_file(
        &self,
        path: &Path,
        top: usize,
        device: &B::Device,
    ) -> Result<Vec<Prediction>, TrainError> {
        Ok(self.predict(&decode(path)?, top, device))
    }

    /// Split `data.eval_split` of `data`'s task (only that split is read), preprocessed as the
    /// model was evaluated.
    pub fn eval_set(&self, data: &DataConfig) -> Result<ImageSet, TrainError> {
        let split = Task::open(data)?.split(&data.eval_split)?;
        let t = data
            .format
            .transform(false, self.image_size(), self.pre.mean, self.pre.std);
        Ok(ImageSet::new(split, t, 0))
    }

    /// Loss and top-1 on split `data.eval_split` of `data`'s task.
    pub fn evaluate(
        &self,
        data: &DataConfig,
        batch_size: usize,
        device: &B::Device,
    ) -> Result<Score, TrainError> {
        let set = self.eval_set(data)?;
        set.preload()?;
        let split = set.split.name.clone();
        let loader = Loader::images(Arc::new(set), batch_size, None);
        let (loss, top1) = evaluate(&self.model, &loader, device, |_, _| {})?;
        Ok(Score {
            task: data.task.clone(),
            split,
            images: loader.len(),
            loss,
            top1,
        })
    }

    /// The mixture-of-experts view (gate mass on the prompts per block and head), averaged over
    /// the first `images` images of the run's evaluation split.
    pub fn moe_view(&self, images: usize, device: &B::Device) -> Result<MoeView, TrainError> {
        let set = self.eval_set(&self.cfg.data)?;
        let idx: Vec<usize> = (0..images.min(set.len()).max(1)).collect();
        let items = set.items(&idx, 0)?;
        let batch = vapt_data::images::make_batch::<B>(&items, self.image_size(), device);
        Ok(self.model.moe_view(batch.images))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_is_sorted_and_truncated() {
        let p = top_k(&[0.1, 0.5, 0.15, 0.25], 3);
        let classes: Vec<usize> = p.iter().map(|p| p.class).collect();
        assert_eq!(classes, [1, 3, 2]);
        assert_eq!(p[0].probability, 0.5);
        assert_eq!(top_k(&[0.3, 0.7], 5).len(), 2);
    }
}
