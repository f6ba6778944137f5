//! `vapt params` and `vapt parity`, and the prompt-expert flags shared by every command that
//! builds a prompted model.

use std::path::PathBuf;

use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use vapt_experts::{Activation, AdapterInit, MethodSpec, ParamReport, PromptConfig};
use vapt_train::parity::run_parity;
use vapt_vit::Projection;
use vapt_vit::VitConfig;

use crate::device::Job;

pub(crate) fn parse_method(s: &str) -> Result<MethodSpec, String> {
    s.parse().map_err(|e: vapt_experts::ConfigError| e.to_string())
}

fn parse_adapter_init(s: &str) -> Result<AdapterInit, String> {
    s.parse().map_err(|e: vapt_experts::ConfigError| e.to_string())
}

fn parse_activation(s: &str) -> Result<Activation, String> {
    s.parse().map_err(|e: vapt_experts::ConfigError| e.to_string())
}

/// Method and prompt-expert knobs. Unset flags keep the value of `--config` (for `train` /
/// `sweep`) or vapt's defaults, which are the official code's with the README recipe's 10 prompts
/// and prompt dropout 0.1.
#[derive(Args, Debug, Clone, Default)]
pub struct ExpertArgs {
    /// What trains [default: vapt]. Prompts: `vpt-shallow`, `vpt-deep`, `vapt`. Baselines:
    /// `linear` (head only), `mlp-k` (a k-layer MLP head), `partial-k` (the last k blocks),
    /// `bias` (every backbone bias, BitFit), `vpt-deep+bias`, `adapter` (Pfeiffer, after each
    /// MLP), `lora` (low-rank updates on q and v), `full` (everything).
    #[arg(long, value_parser = parse_method)]
    pub method: Option<MethodSpec>,
    /// Prompt tokens per block (Np) [default: 10].
    #[arg(long = "prompts")]
    pub num_prompts: Option<usize>,
    /// Dropout on static prompts during training [default: 0.1].
    #[arg(long)]
    pub prompt_dropout: Option<f64>,
    /// VAPT: leading blocks with static prompts (block 0 always; blocks 1..N-1 get deep static
    /// prompts; the rest adaptive ones) [default: 1].
    #[arg(long)]
    pub vpt_depth: Option<usize>,
    /// VAPT: side K of the channel-wise conv kernel [default: 2].
    #[arg(long)]
    pub kernel: Option<usize>,
    /// VAPT: zero padding of the conv on every side [default: 0].
    #[arg(long)]
    pub padding: Option<usize>,
    /// VAPT: one K×K kernel per channel instead of ONE kernel shared by all channels (the
    /// official `CHANNELWISE = False`).
    #[arg(long)]
    pub per_channel_kernel: bool,
    /// VAPT: skip the conv; the token-wise projector acts on the N patch tokens directly.
    #[arg(long)]
    pub no_conv: bool,
    /// VAPT: hidden width r of the feature projector [default: 8].
    #[arg(long)]
    pub hidden_dim: Option<usize>,
    /// VAPT: projector activation: relu, gelu, sigmoid, attention (softmax) or identity
    /// [default: relu].
    #[arg(long, value_parser = parse_activation)]
    pub activation: Option<Activation>,
    /// VAPT: no feature projector (prompts = token-projector output).
    #[arg(long)]
    pub no_feat_projector: bool,
    /// VAPT: one feature projector per adaptive block instead of one shared by all.
    #[arg(long)]
    pub unshared_projector: bool,
    /// VAPT: a trainable scale (init 1) on the projector's MLP branch.
    #[arg(long)]
    pub learnable_scale: bool,
    /// VAPT: dropout after the projector activation during training [default: 0.1].
    #[arg(long)]
    pub dropout_mlp: Option<f64>,
    /// partial-k: how many of the last blocks train (also `--method partial-K`) [default: 1].
    #[arg(long)]
    pub partial_blocks: Option<usize>,
    /// mlp-k: layers of the MLP head, the classifier included (also `--method mlp-K`)
    /// [default: 3].
    #[arg(long)]
    pub mlp_layers: Option<usize>,
    /// adapter: bottleneck width = width / reduction [default: 8].
    #[arg(long)]
    pub reduction: Option<usize>,
    /// adapter: `random-down` (down-projection from PyTorch's init, up-projection zero: the
    /// identity at step 0, and everything trains) or `zero` (the authors' init: all four tensors
    /// zero, which leaves every adapter tensor but `up.bias` without a gradient forever; use it to
    /// reproduce the paper's adapter numbers) [default: random-down].
    #[arg(long, value_parser = parse_adapter_init)]
    pub adapter_init: Option<AdapterInit>,
    /// lora: rank r [default: 8].
    #[arg(long)]
    pub lora_rank: Option<usize>,
    /// lora: α; updates are scaled by α / r [default: 8].
    #[arg(long)]
    pub lora_alpha: Option<f64>,
    /// lora: projections that get an update, comma-separated, from q, k, v, o, fc1, fc2
    /// [default: q,v, peft's for ViT].
    #[arg(long, value_delimiter = ',')]
    pub lora_targets: Vec<Projection>,
    /// lora: dropout on the update's input during training [default: 0].
    #[arg(long)]
    pub lora_dropout: Option<f64>,
}

impl ExpertArgs {
    /// Applies the flags that were given to `cfg`.
    pub fn apply(&self, cfg: &mut PromptConfig) {
        if let Some(m) = self.method {
            cfg.set_method(m);
        }
        if let Some(k) = self.partial_blocks {
            cfg.partial_blocks = k;
        }
        if let Some(k) = self.mlp_layers {
            cfg.mlp_layers = k;
        }
        if let Some(r) = self.reduction {
            cfg.adapter.reduction = r;
        }
        if let Some(i) = self.adapter_init {
            cfg.adapter.init = i;
        }
        if let Some(r) = self.lora_rank {
            cfg.lora.rank = r;
        }
        if let Some(a) = self.lora_alpha {
            cfg.lora.alpha = a;
        }
        if !self.lora_targets.is_empty() {
            cfg.lora.targets = self.lora_targets.clone();
        }
        if let Some(p) = self.lora_dropout {
            cfg.lora.dropout = p;
        }
        let v = &mut cfg.vapt;
        if let Some(n) = self.num_prompts {
            cfg.num_prompts = n;
        }
        if let Some(p) = self.prompt_dropout {
            cfg.prompt_dropout = p;
        }
        if let Some(d) = self.vpt_depth {
            v.vpt_depth = d;
        }
        if let Some(k) = self.kernel {
            v.kernel = k;
        }
        if let Some(p) = self.padding {
            v.padding = p;
        }
        if self.per_channel_kernel {
            v.channelwise = false;
        }
        if self.no_conv {
            v.conv = false;
        }
        if let Some(r) = self.hidden_dim {
            v.hidden_dim = r;
        }
        if let Some(a) = self.activation {
            v.activation = a;
        }
        if self.no_feat_projector {
            v.feat_projector = false;
        }
        if self.unshared_projector {
            v.share_projector = false;
        }
        if self.learnable_scale {
            v.learnable_scale = true;
        }
        if let Some(p) = self.dropout_mlp {
            v.dropout_mlp = p;
        }
    }

    /// The prompt configuration for `num_classes` classes (vapt's defaults + the given flags).
    pub fn config(&self, num_classes: usize) -> PromptConfig {
        let mut cfg = PromptConfig {
            num_classes,
            ..PromptConfig::default()
        };
        self.apply(&mut cfg);
        cfg
    }
}

/// `vapt params`.
#[derive(Args, Debug)]
pub struct ParamsArgs {
    /// Backbone: a variant (`B/16`, `Ti/16`, ...) or explicit dims (`D768-L12-H12-M3072-P16`).
    #[arg(long, default_value = "B/16")]
    pub variant: String,
    /// Input image side (sets the patch grid the VAPT conv works on).
    #[arg(long, default_value_t = 224)]
    pub image_size: usize,
    /// Pre-training of the backbone: `supervised`, `mae` or `moco-v3`. The self-supervised ones
    /// follow the authors' SSL classes (one shared projector; with --vpt-depth > 1, L-1 static
    /// deep-prompt rows).
    #[arg(long, default_value = "supervised", value_parser = crate::parse_kind)]
    pub backbone_kind: vapt_vit::BackboneKind,
    /// Classes of the head (0: count the experts alone, as the paper's tables do).
    #[arg(long, default_value_t = 0)]
    pub classes: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub experts: ExpertArgs,
}

/// Prints the trainable/total parameter report; needs no weights and no device.
pub fn params(args: &ParamsArgs) -> Result<()> {
    let vit = VitConfig::from_variant(&args.variant)?
        .with_image_size(args.image_size)
        .with_kind(args.backbone_kind);
    vit.validate()?;
    let cfg = args.experts.config(args.classes);
    cfg.validate(&vit)?;
    let report = ParamReport::new(&cfg, &vit);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{} on {}", report.label, report.backbone);
        print!("{}", report.table());
        println!("{}", report.summary());
        println!(
            "tuned % of backbone: {:.3}{}",
            report.percent_of_backbone,
            if args.classes == 0 {
                " (head excluded; pass --classes C to include it)"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// `vapt parity`.
#[derive(Args, Debug)]
pub struct ParityArgs {
    /// A fixture folder with config.json, backbone.npz, params.safetensors and io.safetensors.
    pub fixture: PathBuf,
}

/// Runs a parity fixture; `Ok(true)` on PASS.
pub struct Parity(pub ParityArgs);

impl Job for Parity {
    type Output = bool;

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<bool> {
        let report = run_parity::<B>(&self.0.fixture, &device)?;
        println!("fixture {} ({})", report.name, self.0.fixture.display());
        for l in &report.lines {
            let status = if l.pass() { "ok  " } else { "FAIL" };
            match &l.problem {
                Some(p) => println!("{status} {:<34} {p}", l.name),
                None => println!(
                    "{status} {:<34} max abs err {:.2e}  allowed {:.2e}  ({:.3} of tolerance)",
                    l.name, l.max_abs_err, l.allowed, l.fraction
                ),
            }
        }
        println!("{}", report.verdict());
        Ok(report.pass())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vapt_experts::Method;

    /// Knobs of the configuration type that no flag sets: the official code hard-codes them.
    const FIXED: [&str; 2] = ["vapt.conv_dropout", "vapt.norm_eps"];

    fn leaves(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, serde_json::Value)>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    leaves(&key, v, out);
                }
            }
            other => out.push((prefix.to_string(), other.clone())),
        }
    }

    /// Every knob of [`PromptConfig`] (but the class count, which comes from the data) has a
    /// flag: setting every flag away from its default changes every knob.
    #[test]
    fn every_prompt_knob_has_a_flag() {
        let args = ExpertArgs {
            method: Some(MethodSpec {
                method: Method::VptShallow,
                k: None,
            }),
            num_prompts: Some(3),
            prompt_dropout: Some(0.3),
            vpt_depth: Some(2),
            kernel: Some(3),
            padding: Some(1),
            per_channel_kernel: true,
            no_conv: true,
            hidden_dim: Some(4),
            activation: Some(Activation::Gelu),
            no_feat_projector: true,
            unshared_projector: true,
            learnable_scale: true,
            dropout_mlp: Some(0.2),
            partial_blocks: Some(3),
            mlp_layers: Some(2),
            reduction: Some(4),
            adapter_init: Some(AdapterInit::Zero),
            lora_rank: Some(2),
            lora_alpha: Some(16.0),
            lora_targets: vec![Projection::Key, Projection::Fc2],
            lora_dropout: Some(0.05),
        };
        let (mut default, mut set) = (Vec::new(), Vec::new());
        leaves(
            "",
            &serde_json::to_value(PromptConfig::default()).unwrap(),
            &mut default,
        );
        leaves("", &serde_json::to_value(args.config(0)).unwrap(), &mut set);
        let unchanged: Vec<&str> = default
            .iter()
            .zip(&set)
            .filter(|(a, b)| a == b)
            .map(|(a, _)| a.0.as_str())
            .filter(|k| *k != "num_classes" && !FIXED.contains(k))
            .collect();
        assert!(unchanged.is_empty(), "knobs without a flag: {unchanged:?}");
        assert!(default.len() >= 15, "{default:?}");
    }
}
