//! The configuration of one run: data, backbone, prompt experts, optimisation, seed. It is what a
//! `--config` file (TOML or JSON) holds, what command-line flags override, and what a run writes
//! first into its directory as `config.json`.
//!
//! ```toml
//! seed = 42
//! [data]
//! root = "datasets"
//! task = "fashion-mnist-1k"
//! [backbone]
//! weights = "datasets/weights/vit-mnist.safetensors"
//! [experts]
//! method = "vapt"
//! num_prompts = 10
//! [experts.vapt]
//! kernel = 2
//! hidden_dim = 8
//! [optim]
//! lr = 10.0
//! wd = 0.001
//! epochs = 100
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
pub use vapt_data::{DataConfig, DataFormat};
use vapt_experts::PromptConfig;
pub use vapt_vit::BackboneConfig;

use crate::error::TrainError;
use crate::protocol::Schedule;

/// Optimiser family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerKind {
    /// SGD, momentum 0.9, dampening 0, coupled L2 decay (the paper's protocol).
    Sgd,
    /// AdamW (decoupled decay), for full fine-tuning.
    Adamw,
}

impl std::str::FromStr for OptimizerKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "sgd" => Ok(Self::Sgd),
            "adamw" => Ok(Self::Adamw),
            _ => Err(format!("unknown optimizer `{s}`: expected sgd or adamw")),
        }
    }
}

/// Optimisation settings (SPEC §7.1 defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    /// Optimiser.
    pub optimizer: OptimizerKind,
    /// Base learning rate (the sweep-grid value); the peak lr is `lr × batch_size / 256`.
    pub lr: f64,
    /// Weight decay (coupled L2 for SGD, skipping the head bias; decoupled for AdamW).
    pub wd: f64,
    /// Epochs.
    pub epochs: usize,
    /// Linear warm-up epochs (epoch 0 trains at lr 0).
    pub warmup: usize,
    /// Batch size (the last partial batch is kept).
    pub batch_size: usize,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            optimizer: OptimizerKind::Sgd,
            lr: 10.0,
            wd: 0.001,
            epochs: 100,
            warmup: 10,
            batch_size: 64,
        }
    }
}

impl OptimConfig {
    /// The learning-rate schedule these settings describe.
    pub fn schedule(&self) -> Schedule {
        Schedule {
            base_lr: self.lr,
            batch_size: self.batch_size,
            warmup: self.warmup,
            epochs: self.epochs,
        }
    }
}

/// Everything that defines one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Data.
    pub data: DataConfig,
    /// Backbone.
    pub backbone: BackboneConfig,
    /// Method and prompt-expert knobs (`num_classes` is taken from the data).
    pub experts: PromptConfig,
    /// Optimisation.
    pub optim: OptimConfig,
    /// Seed of initialisation, shuffling, dropout and augmentation.
    pub seed: u64,
    /// Evaluate every N epochs as well as after the last one (0: only after the last one).
    pub eval_every: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            data: DataConfig::default(),
            backbone: BackboneConfig::default(),
            experts: PromptConfig::default(),
            optim: OptimConfig::default(),
            seed: 42,
            eval_every: 0,
        }
    }
}

impl TrainConfig {
    /// Reads a TOML (`.toml`) or JSON (any other extension) file; unknown keys are errors that
    /// name the file (and, for TOML, the line).
    pub fn from_file(path: &Path) -> Result<Self, TrainError> {
        let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
        let is_toml = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("toml"));
        Self::parse(&bytes, path, is_toml)
    }

    /// Parses the content of config file `path` as TOML or JSON (see [`TrainConfig::from_file`]).
    pub fn parse(bytes: &[u8], path: &Path, is_toml: bool) -> Result<Self, TrainError> {
        let bad = |message: String| TrainError::Config {
            path: path.to_path_buf(),
            message,
        };
        if is_toml {
            let text = std::str::from_utf8(bytes).map_err(|e| bad(format!("not UTF-8 text ({e})")))?;
            toml::from_str(text).map_err(|e| bad(e.to_string()))
        } else {
            serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))
        }
    }

    /// Checks values a run cannot start with; `source` names where they came from.
    pub fn validate(&self, source: &str) -> Result<(), TrainError> {
        let bad = |message: String| TrainError::Config {
            path: PathBuf::from(source),
            message,
        };
        let o = &self.optim;
        if o.epochs == 0 {
            return Err(bad("optim.epochs must be at least 1".into()));
        }
        if o.batch_size == 0 {
            return Err(bad("optim.batch_size must be at least 1".into()));
        }
        if o.warmup > o.epochs {
            return Err(bad(format!(
                "optim.warmup ({}) is longer than optim.epochs ({}): the run would never reach \
                 its learning rate; lower --warmup or raise --epochs",
                o.warmup, o.epochs
            )));
        }
        if !(o.lr.is_finite() && o.lr >= 0.0) {
            return Err(bad(format!("optim.lr must be a finite number ≥ 0, got {}", o.lr)));
        }
        if !(o.wd.is_finite() && o.wd >= 0.0) {
            return Err(bad(format!("optim.wd must be a finite number ≥ 0, got {}", o.wd)));
        }
        if self.backbone.weights.is_none() && self.backbone.variant.eq_ignore_ascii_case("auto") {
            return Err(bad(
                "no backbone: give backbone.weights (--weights FILE) or, for a random backbone, an \
                 explicit backbone.variant (--variant B/16)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// A short label: `<task>/<method>-lr<lr>-wd<wd>-seed<seed>`, the default run folder.
    pub fn label(&self) -> String {
        format!(
            "{}/{}-lr{}-wd{}-seed{}",
            self.data.task,
            self.experts.label(),
            self.optim.lr,
            self.optim.wd,
            self.seed
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_and_json_read_the_same_config_and_unknown_keys_fail() {
        let dir = tempfile::tempdir().unwrap();
        let toml_path = dir.path().join("run.toml");
        std::fs::write(
            &toml_path,
            "seed = 7\n[data]\ntask = \"dtd\"\n[experts]\nmethod = \"vpt-deep\"\nnum_prompts = 50\n\
             [experts.vapt]\nkernel = 3\n[optim]\nlr = 2.5\nepochs = 3\n",
        )
        .unwrap();
        let c = TrainConfig::from_file(&toml_path).unwrap();
        assert_eq!(c.seed, 7);
        assert_eq!(c.data.task, "dtd");
        assert_eq!(c.experts.num_prompts, 50);
        assert_eq!(c.experts.vapt.kernel, 3);
        assert_eq!(c.optim.lr, 2.5);
        assert_eq!(c.optim.epochs, 3);
        assert_eq!(c.optim.batch_size, 64, "unset keys keep the paper's defaults");

        let json_path = dir.path().join("run.json");
        std::fs::write(&json_path, serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(TrainConfig::from_file(&json_path).unwrap(), c);

        std::fs::write(&toml_path, "seed = 1\n[optim]\nlearning_rate = 3\n").unwrap();
        let err = TrainConfig::from_file(&toml_path).unwrap_err().to_string();
        assert!(err.contains("run.toml") && err.contains("learning_rate"), "{err}");
    }

    #[test]
    fn validation_names_the_bad_value() {
        let mut c = TrainConfig::default();
        let err = c.validate("flags").unwrap_err().to_string();
        assert!(err.contains("--weights"), "{err}");
        c.backbone.variant = "B/16".into();
        c.validate("flags").unwrap();
        c.optim.epochs = 0;
        assert!(c.validate("flags").unwrap_err().to_string().contains("epochs"));
    }
}
