//! `vapt` — prompt-expert tuning (VPT, VAPT) of frozen Vision Transformers.

mod analyze;
mod bench;
mod cluster;
mod data;
mod device;
mod experts;
mod infer;
mod sweep;
mod train;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use clap::{Args, Parser, Subcommand};
use vapt_experts::params::group;
use vapt_vit::{load_pretrained, BackboneKind, LoadOptions, Pool, PosEmbResample};

use device::{dispatch, DeviceSpec, Job};

/// Adapt a frozen, pre-trained Vision Transformer to a new image task by training only prompt
/// experts: static prompts (VPT) or input-adaptive ones (VAPT, arXiv 2501.18936).
///
/// Weights: Google's `ViT-B_16.npz` / `imagenet21k_ViT-B_16.npz`, timm safetensors, or vapt's own
/// safetensors. Devices: `cpu` (always built), `wgpu` (default feature), `cuda` (feature `cuda`).
///
/// Examples:
///   vapt train --weights imagenet21k_ViT-B_16.npz --data-root vtab-1k --task dtd --lr 10 --wd 0.001
///   vapt train --config run.toml --device cuda --out runs/dtd-vapt
///   vapt sweep --weights imagenet21k_ViT-B_16.npz --data-root vtab-1k --task dtd --device cuda
///   vapt --device cuda sweep --weights ViT-B_16.npz --data-root vtab-1k --task dtd --slurm --gres gpu:1
///   vapt --device cuda sweep --weights ViT-B_16.npz --data-root vtab-1k --task dtd --devices cuda:0,cuda:1
///   vapt sweep status sweeps/dtd/vapt
///   vapt report sweeps --csv vtab.csv
///   vapt report sweeps --html report
///   vapt eval runs/dtd-vapt --split test
///   vapt predict runs/dtd-vapt photo.jpg
///   vapt analyze runs/dtd-vapt --png moe.png --svg moe.svg
///   vapt inspect imagenet21k_ViT-B_16.npz
///   vapt convert imagenet21k_ViT-B_16.npz vit_b16_in21k.safetensors
///   vapt --device cuda:0 inspect vit_b16_in21k.safetensors
///   vapt params --variant B/16 --method vapt --prompts 10
///   vapt params --variant B/16 --method lora --lora-rank 8 --lora-targets q,v
///   vapt merge runs/dtd-lora --out vit-dtd-lora.safetensors
///   vapt parity tests/fixtures/parity/c_vapt_default --device wgpu
///   vapt data verify datasets/fashion-mnist-1k
#[derive(Parser, Debug)]
#[command(name = "vapt", version, verbatim_doc_comment)]
struct Cli {
    /// Compute device: `cpu`, `wgpu`, `wgpu:N`, `cuda` or `cuda:N`.
    #[arg(long, global = true, default_value = "cpu", value_parser = parse_device)]
    device: DeviceSpec,

    /// CPU threads for the `cpu` device's kernels and for image decoding [default: all cores].
    #[arg(long, global = true, value_name = "N")]
    threads: Option<usize>,

    #[command(subcommand)]
    command: Command,
}

fn parse_device(s: &str) -> Result<DeviceSpec, String> {
    s.parse()
}

// Built once per process from the arguments: variant sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Train prompt experts on a task (the paper's protocol for one lr/wd/seed) into a run
    /// folder: config.json, metrics.jsonl/csv, per-epoch checkpoints, result.json and the
    /// prompt-only artifact prompts.safetensors. Resumable (--resume); a NaN/inf loss stops the
    /// run and is recorded. Example: vapt train --weights ViT-B_16.npz --data-root vtab-1k
    /// --task dtd --lr 10 --wd 0.001
    Train(train::TrainArgs),
    /// Score a finished run (or a prompts artifact + --weights) on a split.
    Eval(infer::EvalArgs),
    /// Classify images with a finished run or a prompts artifact: top classes and probabilities.
    Predict(infer::PredictArgs),
    /// The VTAB/FGVC protocol for one task: lr × wd grid on train800 → val200, then 5 seeds on
    /// train800val200 → test, mean ± std. Resumable, and any number of workers can share one
    /// sweep folder: `--slurm` submits it as Slurm job arrays, `--devices cuda:0,cuda:1` (or
    /// `--jobs N`) runs worker processes here, `--point N` runs one point. `vapt sweep status
    /// DIR` shows where it stands, `vapt sweep report DIR` aggregates.
    Sweep(sweep::SweepArgs),
    /// The paper-layout table (tasks, group means, VTAB mean, tuned %) over finished sweeps, in
    /// Markdown; CSV with --csv; a self-contained HTML page with every plot with --html.
    Report(sweep::ReportArgs),
    /// The mixture-of-experts view of a trained model: attention gate mass on the prompt experts
    /// per block and head, as a table and a labelled figure (--png, --svg).
    Analyze(infer::AnalyzeArgs),
    /// Load a weights file, print its layout, architecture, parameter count and SHA-256, and run
    /// one forward pass on the chosen device as a smoke test.
    Inspect(InspectArgs),
    /// Convert a checkpoint (Google npz or timm safetensors) to vapt's native safetensors layout.
    Convert(ConvertArgs),
    /// Write a run as one plain ViT: its backbone with the training merged in (LoRA folded into
    /// the weights: W + (α/r)·BA; partial-k and bias tensors in place) and its head built in, as
    /// native safetensors. Prompt, adapter and MLP-head runs cannot be merged. Example: vapt merge
    /// runs/dtd-lora --out vit-dtd-lora.safetensors
    Merge(infer::MergeArgs),
    /// Count trainable and total parameters of a method on a backbone, per module (no weights
    /// needed). Example: vapt params --variant B/16 --method vapt --prompts 10 --json
    Params(experts::ParamsArgs),
    /// Check vapt against a parity fixture made with the authors' code: forward (eval mode) and
    /// gradients of the mean cross-entropy, every stored tensor against its tolerance. Prints one
    /// line per tensor, then `parity: PASS|FAIL <n> tensors, worst <r> of tolerance`; exits 0 only
    /// on PASS.
    Parity(experts::ParityArgs),
    /// Time the eval forward and the train step (forward + backward + SGD) of a method on a
    /// backbone with random weights. Example: vapt bench --variant B/16 --method vapt --batch-size 8
    Bench(bench::BenchArgs),
    /// Dataset tools: `verify` (existence, decoding, counts, SHA-256 manifest) and `bench`
    /// (decode + transform img/s).
    #[command(subcommand)]
    Data(data::DataCommand),
}

/// How to read a weights file.
#[derive(Args, Debug, Clone)]
struct WeightsArgs {
    /// Architecture: `auto` (read it off the file), a variant (`Ti/16`, `S/16`, `B/16`, `B/32`,
    /// `L/16`, `H/14`) or explicit dims (`D768-L12-H12-M3072-P16`). timm files do not store the
    /// head count; `auto` then assumes the standard one for the width.
    #[arg(long, default_value = "auto")]
    variant: String,
    /// Input image side in pixels. Defaults to the checkpoint's (patch grid × patch size); a
    /// different size resamples the position embedding.
    #[arg(long)]
    image_size: Option<usize>,
    /// Position-embedding resampling when loading for another grid: `scipy-zoom` (official
    /// VPT/VAPT code), `bilinear` (timm) or `bicubic`. DINOv2-style files (LayerScale) keep their
    /// stored grid and resize it bicubically at every forward pass instead, as DINOv2 does.
    #[arg(long, default_value = "scipy-zoom", value_parser = parse_resample)]
    resample: PosEmbResample,
    /// Pre-training of the weights: `supervised`, `mae` or `moco-v3` [default: read off the file:
    /// MoCo v3's `state_dict` of `module.` keys, MAE's `model` without a head]. It decides the
    /// pooling (MAE: fc_norm of the mean over tokens after CLS).
    #[arg(long, value_parser = parse_kind)]
    backbone_kind: Option<BackboneKind>,
}

fn parse_resample(s: &str) -> Result<PosEmbResample, String> {
    s.parse()
}

pub(crate) fn parse_kind(s: &str) -> Result<BackboneKind, String> {
    s.parse()
}

impl WeightsArgs {
    fn options(&self) -> Result<LoadOptions> {
        let mut opts = LoadOptions::from_variant(&self.variant, self.image_size, self.resample)?;
        opts.kind = self.backbone_kind;
        Ok(opts)
    }
}

#[derive(Args, Debug)]
struct InspectArgs {
    /// The weights file: Google .npz, timm / vapt .safetensors, PyTorch .pth / .pth.tar.
    weights: PathBuf,
    #[command(flatten)]
    load: WeightsArgs,
}

#[derive(Args, Debug)]
struct ConvertArgs {
    /// Input checkpoint: Google .npz, timm / vapt .safetensors, PyTorch .pth / .pth.tar.
    input: PathBuf,
    /// Output file (.safetensors, native layout). An existing file is never overwritten.
    output: PathBuf,
    #[command(flatten)]
    load: WeightsArgs,
}

struct Inspect(InspectArgs, DeviceSpec);

impl Job for Inspect {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        let Inspect(args, spec) = self;
        let opts = args.load.options()?;
        let loading = Instant::now();
        let (model, pre) = load_pretrained::<B::InnerBackend>(&args.weights, &opts, &device)?;
        let load_s = loading.elapsed().as_secs_f64();
        let cfg = &model.config;
        println!("file:         {}", args.weights.display());
        println!("loaded:       in {load_s:.2} s (read, check, convert, SHA-256, on {spec})");
        println!("layout:       {}", pre.source);
        println!("sha256:       {}", pre.sha256.as_deref().unwrap_or("?"));
        println!("architecture: {}", cfg.display_name());
        println!(
            "              width {}, depth {}, heads {}, MLP {}, patch {}, grid {}x{}",
            cfg.hidden,
            cfg.depth,
            cfg.heads,
            cfg.mlp_dim,
            cfg.patch_size,
            cfg.grid(),
            cfg.grid()
        );
        if cfg.layer_scale {
            println!("              LayerScale γ after attention and after the MLP (DINOv2)");
        }
        let g = cfg.pos_grid();
        match cfg.pos_embed_grid {
            Some(_) if cfg.resizes_pos_embed() => println!(
                "pos-emb:      stored for a native {g}x{g} grid ({} px), resized bicubically (a = -0.75, \
                 half-pixel, no antialias, CLS row kept) to {}x{} at every forward pass",
                g * cfg.patch_size,
                cfg.grid(),
                cfg.grid()
            ),
            Some(_) => println!("pos-emb:      native {g}x{g} grid, the input's (no resize)"),
            None => {}
        }
        println!(
            "parameters:   {} (backbone, no head)",
            group(cfg.num_backbone_params())
        );
        println!(
            "input recipe: {} px, mean {:?}, std {:?}",
            pre.input_size, pre.mean, pre.std
        );
        let pooling = match cfg.pool() {
            Pool::Cls => "final LayerNorm of the CLS token",
            Pool::Mean => "fc_norm of the mean over the tokens after CLS",
        };
        println!("kind:         {} (head input: {pooling})", cfg.kind);
        if cfg.layer_scale {
            println!("              a DINOv2-style backbone follows the supervised rules of the experts");
        }
        match pre.ignored.len() {
            0 => println!("ignored:      nothing"),
            n => println!("ignored:      {n} entries: {}", preview(&pre.ignored, 8)),
        }
        let images = Tensor::<B::InnerBackend, 4>::zeros(
            [1, cfg.in_channels, cfg.image_size, cfg.image_size],
            &device,
        );
        let start = Instant::now();
        let features = model.forward(images);
        let norm = features
            .powi_scalar(2)
            .sum()
            .sqrt()
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .ok()
            .and_then(|v| v.first().copied())
            .unwrap_or(f32::NAN);
        println!(
            "forward:      ok on {spec} in {:.3} s (head-input feature norm of a black image: {norm:.4})",
            start.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

/// The first `n` of `items`, and how many more there are.
fn preview(items: &[String], n: usize) -> String {
    let shown = items.iter().take(n).cloned().collect::<Vec<_>>().join(", ");
    match items.len().saturating_sub(n) {
        0 => shown,
        more => format!("{shown}, … ({more} more)"),
    }
}

struct Convert(ConvertArgs);

impl Job for Convert {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        let Convert(args) = self;
        if args.output.exists() {
            anyhow::bail!(
                "{}: already exists; vapt never overwrites a file, choose another output path",
                args.output.display()
            );
        }
        let opts = args.load.options()?;
        let (model, pre) = load_pretrained::<B::InnerBackend>(&args.input, &opts, &device)?;
        model
            .save_safetensors(&args.output, Some(&pre))
            .with_context(|| format!("converting {}", args.input.display()))?;
        println!(
            "wrote {} ({}, {} parameters, source sha256 {})",
            args.output.display(),
            model.config.display_name(),
            group(model.config.num_backbone_params()),
            pre.sha256.as_deref().unwrap_or("?")
        );
        Ok(())
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    if let Some(n) = cli.threads {
        if n == 0 {
            anyhow::bail!("--threads must be at least 1");
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("--threads: cannot size the thread pool")?;
    }
    match cli.command {
        Command::Inspect(args) => dispatch(cli.device, Inspect(args, cli.device))?,
        Command::Convert(args) => dispatch(cli.device, Convert(args))?,
        Command::Merge(args) => dispatch(cli.device, infer::MergeJob(args))?,
        Command::Params(args) => experts::params(&args)?,
        Command::Train(args) => dispatch(cli.device, train::TrainJob(args, cli.device))?,
        Command::Eval(args) => dispatch(cli.device, infer::EvalJob(args))?,
        Command::Predict(args) => dispatch(cli.device, infer::PredictJob(args))?,
        Command::Sweep(args) => sweep::run(args, cli.device, cli.threads)?,
        Command::Report(args) => dispatch(cli.device, sweep::ReportJob(args))?,
        Command::Analyze(args) => dispatch(cli.device, infer::AnalyzeJob(args))?,
        Command::Data(cmd) => data::run(cmd)?,
        Command::Bench(args) => dispatch(cli.device, bench::Bench(args, cli.device))?,
        Command::Parity(args) => {
            if !dispatch(cli.device, experts::Parity(args))? {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Keeps freed tensor buffers in the process instead of handing them back to the kernel.
///
/// glibc serves blocks above a dynamic threshold (128 KiB to start) with fresh `mmap`s and returns
/// them on `free`, so every activation buffer of a ViT step is page-faulted and zeroed by the kernel
/// again: 12 % of a ViT-B/16 VAPT train step on CPU went to `clear_page`. Raising the mmap
/// threshold to its maximum (32 MiB) and never trimming the heap makes those buffers reusable
/// (measured: eval forward at batch 8 from 4.0 s to 2.8 s). Memory the process has used stays
/// mapped until it exits.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's malloc parameters; it is called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// An error and its causes, each cause once: a library error that already prints its OS error
/// (`file: No such file or directory`) is not followed by that OS error again.
fn error_text(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn check(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        if cmd.get_about().is_none() && !path.is_empty() {
            missing.push(format!("{path}: no description"));
        }
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            if arg.get_help().is_none() && arg.get_long_help().is_none() {
                missing.push(format!("{path} --{id}: no help"));
            }
        }
        for sub in cmd.get_subcommands() {
            check(sub, &format!("{path} {}", sub.get_name()), missing);
        }
    }

    #[test]
    fn every_subcommand_and_flag_has_help() {
        let cmd = Cli::command();
        cmd.clone().debug_assert();
        let mut missing = Vec::new();
        check(&cmd, "", &mut missing);
        assert!(missing.is_empty(), "{missing:#?}");
        let names: Vec<&str> = cmd.get_subcommands().map(|c| c.get_name()).collect();
        for c in [
            "train", "eval", "predict", "sweep", "report", "params", "parity", "analyze", "data", "bench",
            "convert",
        ] {
            assert!(names.contains(&c), "missing subcommand {c}");
        }
    }
}
