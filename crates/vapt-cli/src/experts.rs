//! `vapt params` and `vapt parity`, and the prompt-expert flags shared by every command that
//! builds a prompted model.

use std::path::PathBuf;

use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use vapt_experts::parity::run_parity;
use vapt_experts::{Activation, Method, ParamReport, PromptConfig, VaptConfig};
use vapt_vit::VitConfig;

use crate::device::Job;

fn parse_method(s: &str) -> Result<Method, String> {
    s.parse().map_err(|e: vapt_experts::ConfigError| e.to_string())
}

fn parse_activation(s: &str) -> Result<Activation, String> {
    s.parse().map_err(|e: vapt_experts::ConfigError| e.to_string())
}

/// Method and prompt-expert knobs (defaults: vapt's, i.e. the official code's with the README
/// recipe's 10 prompts and prompt dropout 0.1).
#[derive(Args, Debug, Clone)]
pub struct ExpertArgs {
    /// What trains: `linear` (head only), `full` (everything), `vpt-shallow`, `vpt-deep` or `vapt`.
    #[arg(long, default_value = "vapt", value_parser = parse_method)]
    pub method: Method,
    /// Prompt tokens per block (Np).
    #[arg(long = "prompts", default_value_t = 10)]
    pub num_prompts: usize,
    /// Dropout on static prompts during training.
    #[arg(long, default_value_t = 0.1)]
    pub prompt_dropout: f64,
    /// VAPT: leading blocks with static prompts (block 0 always; blocks 1..N-1 get deep static
    /// prompts; the rest adaptive ones).
    #[arg(long, default_value_t = 1)]
    pub vpt_depth: usize,
    /// VAPT: side K of the channel-wise conv kernel.
    #[arg(long, default_value_t = 2)]
    pub kernel: usize,
    /// VAPT: zero padding of the conv on every side.
    #[arg(long, default_value_t = 0)]
    pub padding: usize,
    /// VAPT: one K×K kernel per channel instead of ONE kernel shared by all channels (the
    /// official `CHANNELWISE = False`).
    #[arg(long)]
    pub per_channel_kernel: bool,
    /// VAPT: skip the conv; the token-wise projector acts on the N patch tokens directly.
    #[arg(long)]
    pub no_conv: bool,
    /// VAPT: hidden width r of the feature projector.
    #[arg(long, default_value_t = 8)]
    pub hidden_dim: usize,
    /// VAPT: projector activation: relu, gelu, sigmoid, attention (softmax) or identity.
    #[arg(long, default_value = "relu", value_parser = parse_activation)]
    pub activation: Activation,
    /// VAPT: no feature projector (prompts = token-projector output).
    #[arg(long)]
    pub no_feat_projector: bool,
    /// VAPT: one feature projector per adaptive block instead of one shared by all.
    #[arg(long)]
    pub unshared_projector: bool,
    /// VAPT: a trainable scale (init 1) on the projector's MLP branch.
    #[arg(long)]
    pub learnable_scale: bool,
    /// VAPT: dropout after the projector activation during training.
    #[arg(long, default_value_t = 0.1)]
    pub dropout_mlp: f64,
}

impl ExpertArgs {
    /// The prompt configuration for `num_classes` classes.
    pub fn config(&self, num_classes: usize) -> PromptConfig {
        PromptConfig {
            method: self.method,
            num_prompts: self.num_prompts,
            prompt_dropout: self.prompt_dropout,
            num_classes,
            vapt: VaptConfig {
                vpt_depth: self.vpt_depth,
                conv: !self.no_conv,
                kernel: self.kernel,
                padding: self.padding,
                channelwise: !self.per_channel_kernel,
                hidden_dim: self.hidden_dim,
                activation: self.activation,
                feat_projector: !self.no_feat_projector,
                share_projector: !self.unshared_projector,
                learnable_scale: self.learnable_scale,
                dropout_mlp: self.dropout_mlp,
                ..VaptConfig::default()
            },
        }
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
    let vit = VitConfig::from_variant(&args.variant)?.with_image_size(args.image_size);
    vit.validate()?;
    let cfg = args.experts.config(args.classes);
    cfg.validate(&vit)?;
    let report = ParamReport::new(&cfg, &vit);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{} on {}", report.method, report.backbone);
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
