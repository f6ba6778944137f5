//! Configuration of prompt experts: the method and every knob of SPEC §3.3.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use vapt_vit::VitConfig;

/// Errors in a prompt-expert configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A method name that is not one of the five.
    #[error("unknown method `{0}`: expected linear, full, vpt-shallow, vpt-deep or vapt")]
    UnknownMethod(String),
    /// An activation name that is not known.
    #[error("unknown activation `{0}`: expected relu, gelu, sigmoid, attention or identity")]
    UnknownActivation(String),
    /// Inconsistent knobs.
    #[error("invalid prompt configuration: {0}")]
    Invalid(String),
}

/// What is trained on top of the backbone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Linear probe: frozen backbone, only the head trains.
    Linear,
    /// Full fine-tuning: every backbone parameter trains (backbone dropout active).
    Full,
    /// VPT-shallow: Np static prompts inserted after CLS before block 0.
    VptShallow,
    /// VPT-deep: a fresh set of static prompts replaces the prompt slots before every block.
    VptDeep,
    /// VAPT: static prompts at block 0 (and blocks 1..vpt_depth−1), adaptive prompts after.
    Vapt,
}

impl Method {
    /// Kebab-case name (`vpt-deep`).
    pub fn name(self) -> &'static str {
        match self {
            Method::Linear => "linear",
            Method::Full => "full",
            Method::VptShallow => "vpt-shallow",
            Method::VptDeep => "vpt-deep",
            Method::Vapt => "vapt",
        }
    }

    /// Whether the method inserts prompt tokens.
    pub fn has_prompts(self) -> bool {
        matches!(self, Method::VptShallow | Method::VptDeep | Method::Vapt)
    }

    /// Whether the backbone is frozen (and behaves as in eval: no dropout).
    pub fn frozen_backbone(self) -> bool {
        self != Method::Full
    }
}

impl FromStr for Method {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "linear" | "linear-probe" => Ok(Method::Linear),
            "full" | "finetune" | "full-finetune" | "end2end" => Ok(Method::Full),
            "vpt-shallow" | "shallow" => Ok(Method::VptShallow),
            "vpt-deep" | "vpt" | "deep" => Ok(Method::VptDeep),
            "vapt" | "adaptive" => Ok(Method::Vapt),
            _ => Err(ConfigError::UnknownMethod(s.to_string())),
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// σ in VAPT's feature projector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Activation {
    /// max(0, x) — the default.
    Relu,
    /// Exact erf GELU.
    Gelu,
    /// Logistic sigmoid.
    Sigmoid,
    /// Softmax over the hidden axis (official `attention`).
    Attention,
    /// No activation (the official code's fallback for any other name).
    Identity,
}

impl FromStr for Activation {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "relu" => Ok(Activation::Relu),
            "gelu" => Ok(Activation::Gelu),
            "sigmoid" => Ok(Activation::Sigmoid),
            "attention" | "softmax" => Ok(Activation::Attention),
            "identity" | "none" | "linear" => Ok(Activation::Identity),
            _ => Err(ConfigError::UnknownActivation(s.to_string())),
        }
    }
}

/// Knobs of the adaptive prompt experts (SPEC §3.3; defaults are vapt's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VaptConfig {
    /// Leading blocks with static prompts (≥ 1): block 0 gets `prompt.static`, blocks
    /// 1..vpt_depth−1 get `prompt.deep_static`, the rest adaptive prompts.
    pub vpt_depth: usize,
    /// Whether the channel-wise convolution is used (false: the token projector acts on the N
    /// patch tokens directly).
    pub conv: bool,
    /// Conv kernel side K.
    pub kernel: usize,
    /// Zero padding on every side of the grid.
    pub padding: usize,
    /// `true`: ONE K×K kernel shared by all channels (official meaning); `false`: one per channel.
    pub channelwise: bool,
    /// Feature-projector hidden width r.
    pub hidden_dim: usize,
    /// Feature-projector activation.
    pub activation: Activation,
    /// Whether the feature projector is used at all.
    pub feat_projector: bool,
    /// One projector shared by every adaptive block (true) or one per block.
    pub share_projector: bool,
    /// A trainable scale (init 1.0) on the projector's MLP branch.
    pub learnable_scale: bool,
    /// Dropout after the projector activation (training only).
    pub dropout_mlp: f64,
    /// Dropout2d on the conv output (hard-coded 0.1 in the official code; training only).
    pub conv_dropout: f64,
    /// LayerNorm eps of the per-block norm (1e-5, PyTorch's default).
    pub norm_eps: f64,
}

impl Default for VaptConfig {
    fn default() -> Self {
        Self {
            vpt_depth: 1,
            conv: true,
            kernel: 2,
            padding: 0,
            channelwise: true,
            hidden_dim: 8,
            activation: Activation::Relu,
            feat_projector: true,
            share_projector: true,
            learnable_scale: false,
            dropout_mlp: 0.1,
            conv_dropout: 0.1,
            norm_eps: 1e-5,
        }
    }
}

/// Everything that defines the prompt experts and the head on a backbone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PromptConfig {
    /// The method.
    pub method: Method,
    /// Prompt tokens per block Np.
    pub num_prompts: usize,
    /// Dropout on static prompts (training only).
    pub prompt_dropout: f64,
    /// Classes of the head; 0 builds no head (parameter counting of the experts alone).
    pub num_classes: usize,
    /// VAPT knobs (ignored by the other methods).
    pub vapt: VaptConfig,
}

impl Default for PromptConfig {
    fn default() -> Self {
        Self {
            method: Method::Vapt,
            num_prompts: 10,
            prompt_dropout: 0.1,
            num_classes: 0,
            vapt: VaptConfig::default(),
        }
    }
}

impl PromptConfig {
    /// A config for `method` with vapt's defaults.
    pub fn new(method: Method, num_prompts: usize, num_classes: usize) -> Self {
        Self {
            method,
            num_prompts,
            num_classes,
            ..Self::default()
        }
    }

    /// Every dropout set to zero (training then behaves as eval; used for parity and gradients).
    pub fn without_dropout(mut self) -> Self {
        self.prompt_dropout = 0.0;
        self.vapt.dropout_mlp = 0.0;
        self.vapt.conv_dropout = 0.0;
        self
    }

    /// Number of adaptive blocks A = L − vpt_depth (0 unless VAPT).
    pub fn num_adaptive(&self, depth: usize) -> usize {
        if self.method == Method::Vapt {
            depth.saturating_sub(self.vapt.vpt_depth)
        } else {
            0
        }
    }

    /// Rows of `prompt.deep_static`: L−1 for VPT-deep, vpt_depth−1 for VAPT, else 0.
    pub fn num_deep_static(&self, depth: usize) -> usize {
        match self.method {
            Method::VptDeep => depth - 1,
            Method::Vapt => self.vapt.vpt_depth - 1,
            _ => 0,
        }
    }

    /// Side of the conv output g' = g + 2·padding − K + 1.
    pub fn conv_out(&self, grid: usize) -> usize {
        grid + 2 * self.vapt.padding + 1 - self.vapt.kernel
    }

    /// Input width S of the token projector: g'² with conv, N without.
    pub fn token_proj_in(&self, grid: usize) -> usize {
        if self.vapt.conv {
            let s = self.conv_out(grid);
            s * s
        } else {
            grid * grid
        }
    }

    /// Checks the knobs against a backbone.
    pub fn validate(&self, vit: &VitConfig) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let probs = [
            ("prompt_dropout", self.prompt_dropout),
            ("dropout_mlp", self.vapt.dropout_mlp),
            ("conv_dropout", self.vapt.conv_dropout),
        ];
        for (name, p) in probs {
            if !(0.0..1.0).contains(&p) {
                return bad(format!("{name} = {p} must lie in [0, 1)"));
            }
        }
        if self.method.has_prompts() && self.num_prompts == 0 {
            return bad(format!("{} needs at least one prompt", self.method));
        }
        if self.method == Method::Vapt {
            let v = &self.vapt;
            if v.vpt_depth == 0 {
                return bad("vpt_depth must be at least 1 (block 0 always gets static prompts)".into());
            }
            if v.vpt_depth > vit.depth {
                return bad(format!(
                    "vpt_depth {} exceeds the backbone depth {}",
                    v.vpt_depth, vit.depth
                ));
            }
            if v.conv {
                if v.kernel == 0 {
                    return bad("kernel must be at least 1".into());
                }
                if v.kernel > vit.grid() + 2 * v.padding {
                    return bad(format!(
                        "kernel {} is larger than the padded {}x{} patch grid",
                        v.kernel,
                        vit.grid() + 2 * v.padding,
                        vit.grid() + 2 * v.padding
                    ));
                }
            }
            if v.feat_projector && v.hidden_dim == 0 {
                return bad("hidden_dim must be at least 1 with a feature projector".into());
            }
            if v.norm_eps.is_nan() || v.norm_eps <= 0.0 {
                return bad("norm_eps must be positive".into());
            }
        }
        Ok(())
    }

    /// Every trainable expert tensor (and the head) with its shape, in the names used by the
    /// parity fixtures and prompt artifacts (SPEC §3.4). Backbone tensors are not listed.
    pub fn expert_shapes(&self, vit: &VitConfig) -> Vec<(String, Vec<usize>)> {
        let (np, d, depth) = (self.num_prompts, vit.hidden, vit.depth);
        let mut v = Vec::new();
        if self.method.has_prompts() {
            v.push(("prompt.static".to_string(), vec![np, d]));
        }
        let deep = self.num_deep_static(depth);
        if deep > 0 {
            v.push(("prompt.deep_static".to_string(), vec![deep, np, d]));
        }
        if self.method == Method::Vapt {
            let c = &self.vapt;
            let s = self.token_proj_in(vit.grid());
            let mlp = |prefix: &str, v: &mut Vec<(String, Vec<usize>)>| {
                v.push((format!("{prefix}.fc1.weight"), vec![c.hidden_dim, d]));
                v.push((format!("{prefix}.fc2.weight"), vec![d, c.hidden_dim]));
                if c.learnable_scale {
                    v.push((format!("{prefix}.scale"), vec![1]));
                }
            };
            for k in 0..self.num_adaptive(depth) {
                v.push((format!("vapt.{k}.norm.weight"), vec![d]));
                v.push((format!("vapt.{k}.norm.bias"), vec![d]));
                if c.conv {
                    let kk = c.kernel;
                    let shape = if c.channelwise {
                        vec![kk, kk]
                    } else {
                        vec![d, kk, kk]
                    };
                    v.push((format!("vapt.{k}.conv.kernel"), shape));
                }
                v.push((format!("vapt.{k}.token_proj.weight"), vec![np, s]));
                v.push((format!("vapt.{k}.token_proj.bias"), vec![np]));
                if c.feat_projector && !c.share_projector {
                    mlp(&format!("vapt.{k}.mlp"), &mut v);
                }
            }
            if c.feat_projector && c.share_projector && self.num_adaptive(depth) > 0 {
                mlp("vapt.mlp", &mut v);
            }
        }
        if self.num_classes > 0 {
            v.push(("head.weight".to_string(), vec![self.num_classes, d]));
            v.push(("head.bias".to_string(), vec![self.num_classes]));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(cfg: &PromptConfig, vit: &VitConfig) -> usize {
        cfg.expert_shapes(vit)
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }

    #[test]
    fn vit_b16_counts_match_spec_table() {
        let vit = VitConfig::vit_b16();
        for (np, vapt, deep) in [
            (1, 31_866, 9_216),
            (5, 42_418, 46_080),
            (10, 55_608, 92_160),
            (50, 161_128, 460_800),
            (100, 293_028, 921_600),
            (200, 556_828, 1_843_200),
        ] {
            assert_eq!(
                count(&PromptConfig::new(Method::Vapt, np, 0), &vit),
                vapt,
                "VAPT Np={np}"
            );
            assert_eq!(
                count(&PromptConfig::new(Method::VptDeep, np, 0), &vit),
                deep,
                "VPT-deep Np={np}"
            );
            assert_eq!(
                count(&PromptConfig::new(Method::Vapt, np, 0), &vit),
                2638 * np + 29_228
            );
        }
    }

    #[test]
    fn fixture_counts_match_spec() {
        let vit = VitConfig::from_variant("D48-L4-H4-M96-P16").unwrap();
        assert_eq!(
            count(&PromptConfig::new(Method::VptShallow, 5, 7), &vit),
            240 + 343
        );
        assert_eq!(count(&PromptConfig::new(Method::VptDeep, 4, 7), &vit), 768 + 343);
        assert_eq!(count(&PromptConfig::new(Method::Vapt, 5, 7), &vit), 3_858 + 343);
    }

    #[test]
    fn knob_variants_change_the_shapes() {
        let vit = VitConfig::vit_b16();
        let mut c = PromptConfig::new(Method::Vapt, 10, 0);
        c.vapt.channelwise = false;
        c.vapt.share_projector = false;
        c.vapt.learnable_scale = true;
        c.vapt.vpt_depth = 3;
        c.vapt.padding = 1;
        c.vapt.kernel = 3;
        let shapes: std::collections::BTreeMap<_, _> = c.expert_shapes(&vit).into_iter().collect();
        assert_eq!(shapes["prompt.deep_static"], vec![2, 10, 768]);
        assert_eq!(shapes["vapt.0.conv.kernel"], vec![768, 3, 3]);
        assert_eq!(shapes["vapt.8.token_proj.weight"], vec![10, 14 * 14]);
        assert_eq!(shapes["vapt.8.mlp.scale"], vec![1]);
        assert!(!shapes.contains_key("vapt.9.norm.weight"));
        assert!(!shapes.contains_key("vapt.mlp.fc1.weight"));
        c.vapt.conv = false;
        let shapes: std::collections::BTreeMap<_, _> = c.expert_shapes(&vit).into_iter().collect();
        assert_eq!(shapes["vapt.0.token_proj.weight"], vec![10, 196]);
        assert!(!shapes.contains_key("vapt.0.conv.kernel"));
    }

    #[test]
    fn validation_rejects_bad_knobs() {
        let vit = VitConfig::vit_b16();
        let mut c = PromptConfig::new(Method::Vapt, 10, 0);
        assert!(c.validate(&vit).is_ok());
        c.vapt.vpt_depth = 0;
        assert!(c.validate(&vit).is_err());
        c.vapt.vpt_depth = 13;
        assert!(c.validate(&vit).is_err());
        c.vapt.vpt_depth = 1;
        c.vapt.kernel = 15;
        assert!(c.validate(&vit).is_err());
        c.vapt.kernel = 2;
        c.prompt_dropout = 1.0;
        assert!(c.validate(&vit).is_err());
        assert!(PromptConfig::new(Method::VptDeep, 0, 3).validate(&vit).is_err());
        assert_eq!("VPT_deep".parse::<Method>(), Ok(Method::VptDeep));
        assert!("lora".parse::<Method>().is_err());
        assert_eq!("gelu".parse::<Activation>(), Ok(Activation::Gelu));
    }
}
