//! The configuration of the experts on a backbone: the method, the knobs every prompt method shares,
//! the VAPT knobs ([`VaptConfig`], in `adaptive.rs`) and the head; and the one table of the
//! trainable tensors a configuration has ([`PromptConfig::expert_shapes`]), assembled from each
//! method's file.

use serde::{Deserialize, Serialize};
use vapt_vit::VitConfig;

use crate::adapter::{self, AdapterConfig};
use crate::adaptive::{self, VaptConfig};
pub use crate::error::ConfigError;
use crate::lora::{self, LoraConfig};
use crate::method::{BackboneTraining, Method, MethodSpec};
use crate::{bias, head, mlp_head, partial, static_prompts};

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
    /// Partial-k: how many of the last blocks train.
    pub partial_blocks: usize,
    /// MLP-k: layers of the MLP head (k − 1 hidden layers, then the classifier).
    pub mlp_layers: usize,
    /// Adapter knobs.
    pub adapter: AdapterConfig,
    /// LoRA knobs.
    pub lora: LoraConfig,
}

impl Default for PromptConfig {
    fn default() -> Self {
        Self {
            method: Method::Vapt,
            num_prompts: 10,
            prompt_dropout: 0.1,
            num_classes: 0,
            vapt: VaptConfig::default(),
            partial_blocks: 1,
            mlp_layers: 3,
            adapter: AdapterConfig::default(),
            lora: LoraConfig::default(),
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

    /// Sets the method from its command-line spelling: `partial-2` also sets `partial_blocks`,
    /// `mlp-3` `mlp_layers`.
    pub fn set_method(&mut self, spec: MethodSpec) {
        self.method = spec.method;
        match (spec.method, spec.k) {
            (Method::Partial, Some(k)) => self.partial_blocks = k,
            (Method::Mlp, Some(k)) => self.mlp_layers = k,
            _ => {}
        }
    }

    /// The method as tables show it: `partial-2`, `mlp-3`, `adapter` … (sized methods with
    /// their k).
    pub fn label(&self) -> String {
        match self.method {
            Method::Partial => format!("partial-{}", self.partial_blocks),
            Method::Mlp => format!("mlp-{}", self.mlp_layers),
            m => m.name().to_string(),
        }
    }

    /// Whether the backbone tensor at native path `path` trains.
    pub fn trains_backbone(&self, path: &str, vit: &VitConfig) -> bool {
        match self.method.backbone_training() {
            BackboneTraining::Nothing => false,
            BackboneTraining::Everything => true,
            BackboneTraining::LastBlocks => partial::trains(path, self.partial_blocks, vit.depth),
            BackboneTraining::Biases => bias::trains(path),
        }
    }

    /// The backbone tensors that train and go into the trainable-only artifact (partial-k, bias),
    /// as `backbone.<native path>`. Full fine-tuning trains them all but saves its backbone as a
    /// whole, so none are listed for it.
    pub fn backbone_shapes(&self, vit: &VitConfig) -> Vec<(String, Vec<usize>)> {
        if self.method.backbone_training() == BackboneTraining::Everything {
            return Vec::new();
        }
        vapt_vit::weights::native::native_params(vit)
            .into_iter()
            .filter(|(name, _)| !name.starts_with("head.") && self.trains_backbone(name, vit))
            .map(|(name, shape)| (format!("backbone.{name}"), shape))
            .collect()
    }

    /// Every dropout set to zero (training then behaves as eval; used for parity and gradients).
    pub fn without_dropout(mut self) -> Self {
        self.prompt_dropout = 0.0;
        self.vapt.dropout_mlp = 0.0;
        self.vapt.conv_dropout = 0.0;
        self.lora.dropout = 0.0;
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
            Method::VptDeep | Method::VptDeepBias => depth - 1,
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
        match self.method {
            Method::Vapt => self.vapt_knobs(vit).validate(vit)?,
            Method::Adapter => self.adapter.validate(vit)?,
            Method::Lora => self.lora.validate()?,
            Method::Partial if self.partial_blocks == 0 || self.partial_blocks > vit.depth => {
                return Err(ConfigError::Invalid(format!(
                    "partial-{} needs between 1 and {} blocks (the backbone's depth)",
                    self.partial_blocks, vit.depth
                )))
            }
            Method::Mlp if self.mlp_layers == 0 => {
                return Err(ConfigError::Invalid(
                    "mlp-0 has no layer: use mlp-1 (linear) or more".into(),
                ))
            }
            _ => {}
        }
        Ok(())
    }

    /// Every trainable tensor with its shape, in the names used by the parity fixtures and
    /// artifacts (SPEC §3.4): the experts, the head, and the backbone tensors partial-k and bias
    /// tuning train ([`Self::backbone_shapes`]). Each method's file lists its own; the models they
    /// build have exactly these trainable tensors.
    pub fn expert_shapes(&self, vit: &VitConfig) -> Vec<(String, Vec<usize>)> {
        let (np, d) = (self.num_prompts, vit.hidden);
        let mut v = self.backbone_shapes(vit);
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
        match self.method {
            Method::Adapter => v.extend(adapter::shapes(&self.adapter, vit)),
            Method::Lora => v.extend(lora::shapes(&self.lora, vit)),
            Method::Mlp => v.extend(mlp_head::shapes(self.mlp_layers, d)),
            _ => {}
        }
        v.extend(head::shapes(self.num_classes, d));
        v
    }

    /// What an artifact holds beyond [`Self::expert_shapes`]: buffers that are saved but never
    /// trained (the MLP head's BatchNorm running statistics).
    pub fn buffer_shapes(&self, vit: &VitConfig) -> Vec<(String, Vec<usize>)> {
        match self.method {
            Method::Mlp => mlp_head::buffer_shapes(self.mlp_layers, vit.hidden),
            _ => Vec::new(),
        }
    }

    /// Every tensor of the trainable-only artifact: [`Self::expert_shapes`] then
    /// [`Self::buffer_shapes`].
    pub fn artifact_shapes(&self, vit: &VitConfig) -> Vec<(String, Vec<usize>)> {
        let mut v = self.expert_shapes(vit);
        v.extend(self.buffer_shapes(vit));
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

    /// The paper's comparison rows on ViT-B/16, head excluded (the figures), and LoRA
    /// derived as peft counts it: r · (in + out) per targeted projection.
    #[test]
    fn vit_b16_baseline_counts_match_the_authors() {
        let vit = VitConfig::vit_b16();
        let with = |m: Method, f: &dyn Fn(&mut PromptConfig)| {
            let mut c = PromptConfig::new(m, 10, 0);
            f(&mut c);
            count(&c, &vit)
        };
        for (k, n) in [(1, 7_089_408), (2, 14_177_280), (4, 28_353_024)] {
            assert_eq!(with(Method::Partial, &|c| c.partial_blocks = k), n, "partial-{k}");
        }
        assert_eq!(with(Method::Bias, &|_| {}), 102_912);
        assert_eq!(with(Method::Adapter, &|_| {}), 1_779_840);
        assert_eq!(with(Method::VptDeepBias, &|_| {}), 195_072);
        assert_eq!(with(Method::Linear, &|_| {}), 0);
        // mlp-3: two hidden 768 → 768 layers with BatchNorm affine parameters.
        assert_eq!(with(Method::Mlp, &|_| {}), 2 * (768 * 768 + 768 + 2 * 768));
        for (rank, targets) in [
            (8, vec![vapt_vit::Projection::Query, vapt_vit::Projection::Value]),
            (4, vapt_vit::Projection::all().collect()),
        ] {
            let peft: usize = targets
                .iter()
                .map(|p| {
                    let (i, o) = p.dims(&vit);
                    rank * (i + o)
                })
                .sum::<usize>()
                * vit.depth;
            let ours = with(Method::Lora, &|c| {
                c.lora.rank = rank;
                c.lora.targets = targets.clone();
            });
            assert_eq!(ours, peft, "rank {rank}");
        }
        assert_eq!(with(Method::Lora, &|_| {}), 294_912);
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
