//! `vapt eval`, `vapt predict` and `vapt analyze`: a finished run (or a prompts artifact) through
//! [`vapt_train::Predictor`].

use std::path::PathBuf;

use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use vapt_train::Predictor;

use crate::device::Job;

/// Where `eval`, `predict` and `analyze` get a trained model from.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A run folder (its config.json and prompts.safetensors) or a prompts artifact file.
    pub model: PathBuf,
    /// Backbone weights (needed with an artifact file; overrides the run's).
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,
}

impl ModelArgs {
    fn load<B: burn::tensor::backend::Backend>(&self, device: &B::Device) -> Result<Predictor<B>> {
        Ok(Predictor::load(&self.model, self.weights.clone(), device)?)
    }
}

/// `vapt eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Folder holding the task folders [default: the run's].
    #[arg(long, value_name = "DIR")]
    pub data_root: Option<PathBuf>,
    /// Task [default: the run's].
    #[arg(long)]
    pub task: Option<String>,
    /// Split to score [default: the run's eval split].
    #[arg(long)]
    pub split: Option<String>,
    /// Batch size.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `vapt eval` on a device.
pub struct EvalJob(pub EvalArgs);

impl Job for EvalJob {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        let args = self.0;
        let predictor = args.model.load::<B::InnerBackend>(&device)?;
        let mut data = predictor.cfg.data.clone();
        if let Some(r) = &args.data_root {
            data.root = r.clone();
        }
        if let Some(t) = &args.task {
            data.task = t.clone();
        }
        if let Some(s) = &args.split {
            data.eval_split = s.clone();
        }
        let score = predictor.evaluate(&data, args.batch_size, &device)?;
        if args.json {
            println!("{}", serde_json::to_string(&score)?);
        } else {
            println!(
                "{} {}: top-1 {:.2}%  loss {:.4}  ({} images)",
                score.task, score.split, score.top1, score.loss, score.images
            );
        }
        Ok(())
    }
}

/// `vapt predict`.
#[derive(Args, Debug)]
pub struct PredictArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Images to classify (PNG or JPEG).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// How many classes to print per image.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    /// Print JSON lines.
    #[arg(long)]
    pub json: bool,
}

/// `vapt predict` on a device.
pub struct PredictJob(pub PredictArgs);

impl Job for PredictJob {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        let args = self.0;
        let predictor = args.model.load::<B::InnerBackend>(&device)?;
        for path in &args.images {
            let top = predictor.predict_file(path, args.top, &device)?;
            if args.json {
                let top: Vec<_> = top
                    .iter()
                    .map(|p| serde_json::json!({"class": p.class, "p": p.probability}))
                    .collect();
                println!("{}", serde_json::json!({"image": path, "top": top}));
            } else {
                let top: Vec<String> = top.iter().map(ToString::to_string).collect();
                println!("{}: {}", path.display(), top.join(", "));
            }
        }
        Ok(())
    }
}

/// `vapt merge`.
#[derive(Args, Debug)]
pub struct MergeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Output file (.safetensors, vapt's native layout, the head included). An existing file is
    /// never overwritten.
    #[arg(long, short)]
    pub out: PathBuf,
}

/// `vapt merge` on a device.
pub struct MergeJob(pub MergeArgs);

impl Job for MergeJob {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        let args = self.0;
        let predictor = args.model.load::<B::InnerBackend>(&device)?;
        predictor.save_merged_backbone(&args.out)?;
        let cfg = &predictor.model.config;
        println!(
            "wrote {}: {} with {} merged{} and the run's {}-class head built in",
            args.out.display(),
            predictor.model.backbone.config.display_name(),
            cfg.label(),
            if predictor.model.lora.is_some() {
                " (W + (α/r)·BA)"
            } else {
                ""
            },
            cfg.num_classes
        );
        Ok(())
    }
}

/// `vapt analyze`.
#[derive(Args, Debug)]
pub struct AnalyzeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Images (from the run's evaluation split) to average over.
    #[arg(long, default_value_t = 32)]
    pub images: usize,
    /// Write the figure (block × head gate mass on the prompts, CLS query and patch queries,
    /// values in the cells) as PNG to this file.
    #[arg(long, value_name = "PNG")]
    pub png: Option<PathBuf>,
    /// The same figure as SVG.
    #[arg(long, value_name = "SVG")]
    pub svg: Option<PathBuf>,
    /// Print JSON (the full per-block, per-head view) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `vapt analyze` on a device.
pub struct AnalyzeJob(pub AnalyzeArgs);

impl Job for AnalyzeJob {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        let args = self.0;
        let predictor = args.model.load::<B::InnerBackend>(&device)?;
        let view = predictor.moe_view(args.images, &device)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&view)?);
        } else {
            print!("{}", crate::analyze::table(&view));
        }
        crate::analyze::write_figure(&view, &args.model.model, args.png.as_deref(), args.svg.as_deref())?;
        for file in [&args.png, &args.svg].into_iter().flatten() {
            println!("figure: {}", file.display());
        }
        Ok(())
    }
}
