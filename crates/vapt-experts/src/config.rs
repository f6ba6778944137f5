//! The configuration of the experts on a backbone: the method, the knobs every prompt method shares,
//! the VAPT knobs ([`VaptConfig`], in `adaptive.rs`) and the head; and the one table of the
//! trainable tensors a configuration has ([`PromptConfig::expert_shapes`]), assembled from each
//! method's file.

use serde::{Deserialize, Serialize};
use vapt_vit::VitConfig;

use crate::adaptive::{self, VaptConfig};
pub use crate::error::ConfigError;
use crate::method::Method;
use crate::{head, static_prompts};

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

    /// Prompt tokens the attention sees in every block: Np for prompt methods, else 0.
    pub fn prompt_tokens(&self) -> usize {
        if self.method.has_prompts() {
            self.num_prompts
        } else {
            0
        }
    }

    /// Number of adaptive blocks A = L − vpt_depth (0 unless VAPT).
    pub fn num_adaptive(&self, depth: usize) -> usize {
        if self.method == Method::Vapt {
            depth.saturating_sub(self.vapt.vpt_depth)
        } else {
            0
        }
    }

    /// Rows of `prompt.deep_static` that replace prompts (row j before block j+1): L−1 for
    /// VPT-deep, vpt_depth−1 for VAPT, else 0.
    pub fn num_deep_static(&self, depth: usize) -> usize {
        match self.method {
            Method::VptDeep => depth - 1,
            Method::Vapt => self.vapt.vpt_depth - 1,
            _ => 0,
        }
    }

    /// Rows of `prompt.deep_static` the model holds: [`Self::num_deep_static`], except that the
    /// authors' self-supervised VAPT classes (MAE, MoCo v3) allocate L−1 rows whenever
    /// vpt_depth > 1 and use the first vpt_depth−1 (the rest train with a zero gradient and count
    /// towards the parameters).
    pub fn deep_static_rows(&self, vit: &VitConfig) -> usize {
        let used = self.num_deep_static(vit.depth);
        if vit.kind.self_supervised() && self.method == Method::Vapt && used > 0 {
            vit.depth - 1
        } else {
            used
        }
    }

    /// The VAPT knobs as the backbone's class reads them: the self-supervised classes ignore
    /// `share_projector` and `feat_projector` (one projector MLP, always shared).
    pub fn vapt_knobs(&self, vit: &VitConfig) -> VaptConfig {
        let mut v = self.vapt.clone();
        if vit.kind.self_supervised() {
            v.share_projector = true;
            v.feat_projector = true;
        }
        v
    }

    /// Checks the knobs against a backbone.
    pub fn validate(&self, vit: &VitConfig) -> Result<(), ConfigError> {
        let probs = [
            ("prompt_dropout", self.prompt_dropout),
            ("dropout_mlp", self.vapt.dropout_mlp),
            ("conv_dropout", self.vapt.conv_dropout),
        ];
        for (name, p) in probs {
            if !(0.0..1.0).contains(&p) {
                return Err(ConfigError::Invalid(format!("{name} = {p} must lie in [0, 1)")));
            }
        }
        if self.method.has_prompts() && self.num_prompts == 0 {
            return Err(ConfigError::Invalid(format!(
                "{} needs at least one prompt",
                self.method
            )));
        }
        if self.method == Method::Vapt {
            self.vapt_knobs(vit).validate(vit)?;
        }
        Ok(())
    }

    /// Every trainable expert tensor (and the head) with its shape, in the names used by the
    /// parity fixtures and prompt artifacts (SPEC §3.4). Backbone tensors are not listed. Each
    /// method's file lists its own; the models they build have exactly these tensors.
    pub fn expert_shapes(&self, vit: &VitConfig) -> Vec<(String, Vec<usize>)> {
        let (np, d) = (self.num_prompts, vit.hidden);
        let mut v = Vec::new();
        if self.method.has_prompts() {
            v.extend(static_prompts::shapes(np, self.deep_static_rows(vit), d));
        }
        if self.method == Method::Vapt {
            v.extend(adaptive::shapes(
                &self.vapt_knobs(vit),
                np,
                self.num_adaptive(vit.depth),
                vit,
            ));
        }
        v.extend(head::shapes(self.num_classes, d));
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
    fn self_supervised_backbones_follow_the_authors_ssl_classes() {
        use vapt_vit::BackboneKind;
        for kind in [BackboneKind::Mae, BackboneKind::MocoV3] {
            let vit = VitConfig::vit_b16().with_kind(kind);
            assert_eq!(count(&PromptConfig::new(Method::Vapt, 10, 0), &vit), 55_608);
            assert_eq!(count(&PromptConfig::new(Method::VptDeep, 10, 0), &vit), 92_160);
            // vpt_depth 2: L - 1 = 11 static rows (one used), against 1 on the supervised ViT.
            let mut c = PromptConfig::new(Method::Vapt, 10, 0);
            c.vapt.vpt_depth = 2;
            assert_eq!(count(&c, &vit), 7_680 + 11 * 7_680 + 10 * 3_240 + 12_288);
            assert_eq!(
                count(&c, &VitConfig::vit_b16()),
                7_680 + 7_680 + 10 * 3_240 + 12_288
            );
            // share_projector and feat_projector are ignored: one shared MLP.
            c.vapt.share_projector = false;
            c.vapt.feat_projector = false;
            let names: Vec<String> = c.expert_shapes(&vit).into_iter().map(|(n, _)| n).collect();
            assert!(names.contains(&"vapt.mlp.fc1.weight".to_string()), "{names:?}");
            assert!(!names.iter().any(|n| n.starts_with("vapt.0.mlp")), "{names:?}");
        }
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
        assert_eq!("gelu".parse::<crate::Activation>(), Ok(crate::Activation::Gelu));
    }
}
