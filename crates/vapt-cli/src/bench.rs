//! `vapt bench`: eval-forward and train-step timings of a prompted ViT with random weights.
//!
//! A first cut of the benchmark (the benchmarks issue extends it): warm-up runs are excluded and
//! the median of `--iters` runs is reported; a train step is forward + mean cross-entropy +
//! backward + one step of the protocol's SGD (momentum 0.9, dampening 0).

use std::time::Instant;

use anyhow::Result;
use burn::module::AutodiffModule;
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use clap::Args;
use serde_json::json;
use vapt_experts::{ParamReport, PromptedVit};
use vapt_train::cross_entropy;
use vapt_vit::VitConfig;

use crate::device::{DeviceSpec, Job};
use crate::experts::ExpertArgs;

/// `vapt bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Backbone variant (random weights).
    #[arg(long, default_value = "B/16")]
    pub variant: String,
    /// Input image side.
    #[arg(long, default_value_t = 224)]
    pub image_size: usize,
    /// Images per batch.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Classes of the head.
    #[arg(long, default_value_t = 100)]
    pub classes: usize,
    /// Untimed runs before measuring.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Timed runs; the median is reported.
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    /// Skip the train-step measurement.
    #[arg(long)]
    pub no_train: bool,
    /// Print JSON (an object for one method, an array for `--methods`).
    #[arg(long)]
    pub json: bool,
    /// Several methods in one run, comma-separated, e.g. `linear,vpt-deep,vapt,full`; overrides
    /// `--method` and prints a Markdown table (or a JSON array with `--json`).
    #[arg(long, value_delimiter = ',', value_parser = crate::experts::parse_method)]
    pub methods: Vec<vapt_experts::MethodSpec>,
    #[command(flatten)]
    pub experts: ExpertArgs,
}

/// Runs the benchmark on the chosen backend.
pub struct Bench(pub BenchArgs, pub DeviceSpec);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        0.5 * (v[m - 1] + v[m])
    }
}

fn time<F: FnMut()>(warmup: usize, iters: usize, mut f: F) -> Vec<f64> {
    for _ in 0..warmup {
        f();
    }
    (0..iters)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect()
}

/// Waits until the device has finished the queued work.
fn sync<B: Backend>(device: &B::Device) {
    let _ = B::sync(device);
}

impl Job for Bench {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        let Bench(args, spec) = self;
        let methods = if args.methods.is_empty() {
            vec![args.experts.method]
        } else {
            args.methods.iter().copied().map(Some).collect()
        };
        let mut results = Vec::new();
        for method in methods {
            let mut experts = args.experts.clone();
            experts.method = method;
            let result = bench_one::<B>(&args, &experts, &spec, &device)?;
            if !args.json {
                print_one(&result, &args);
            }
            results.push(result);
        }
        if args.json {
            let out = match results.as_slice() {
                [one] if args.methods.is_empty() => one.clone(),
                _ => serde_json::Value::Array(results),
            };
            println!("{}", serde_json::to_string_pretty(&out)?);
        } else if results.len() > 1 {
            println!();
            print!("{}", markdown(&results));
        }
        Ok(())
    }
}

/// Times one method; the JSON record of the run.
fn bench_one<B: AutodiffBackend>(
    args: &BenchArgs,
    experts: &ExpertArgs,
    spec: &DeviceSpec,
    device: &B::Device,
) -> Result<serde_json::Value> {
    let vit = VitConfig::from_variant(&args.variant)?.with_image_size(args.image_size);
    let cfg = experts.config(args.classes);
    let report = ParamReport::new(&cfg, &vit);
    B::seed(device, 0);
    let backbone = vit.init::<B>(device);
    let model = PromptedVit::new(backbone, cfg.clone(), device)?;
    let s = args.image_size;
    let images = Tensor::<B, 4>::random([args.batch_size, 3, s, s], Distribution::Normal(0.0, 1.0), device);
    let labels: Vec<i64> = (0..args.batch_size as i64)
        .map(|i| i % args.classes.max(1) as i64)
        .collect();
    let labels = Tensor::<B, 1, Int>::from_data(TensorData::new(labels, [args.batch_size]), device);

    let eval_model = model.valid();
    let eval_images = images.clone().inner();
    let eval = time(args.warmup, args.iters, || {
        let _logits = eval_model.forward(eval_images.clone());
        sync::<B::InnerBackend>(device);
    });
    drop(eval_model);

    let train = if args.no_train {
        Vec::new()
    } else {
        let mut optim = vapt_train::sgd().init::<B, PromptedVit<B>>();
        let mut m = Some(model);
        time(args.warmup, args.iters, || {
            let Some(current) = m.take() else { return };
            let loss = cross_entropy(current.forward(images.clone()), labels.clone());
            let grads = GradientsParams::from_grads(loss.backward(), &current);
            m = Some(optim.step(1e-3, current, grads));
            sync::<B>(device);
        })
    };
    let (eval_s, train_s) = (median(eval.clone()), median(train.clone()));
    let trained = !args.no_train;
    Ok(json!({
        "device": spec.to_string(),
        "backend": B::name(device),
        "cpu_kernels": vapt_vit::vapt_kernels::fused_on::<B>(),
        "threads": rayon::current_num_threads(),
        "variant": vit.display_name(),
        "method": cfg.label(),
        "num_prompts": cfg.num_prompts,
        "batch_size": args.batch_size,
        "image_size": s,
        "trainable_params": report.trainable,
        "total_params": report.total,
        "eval_forward_s": eval_s,
        "eval_img_per_s": args.batch_size as f64 / eval_s,
        "eval_runs_s": eval,
        "train_step_s": trained.then_some(train_s),
        "train_img_per_s": trained.then(|| args.batch_size as f64 / train_s),
        "train_runs_s": train,
        "peak_rss_mib": peak_rss_mib(),
    }))
}

/// The process's peak resident memory so far (Linux `VmHWM`), in MiB; `None` elsewhere. Runs of
/// several methods in one process report the high-water mark up to and including each.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn print_one(r: &serde_json::Value, args: &BenchArgs) {
    let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    println!(
        "{} {} on {} ({}{}), batch {} at {}², {} threads",
        r["method"].as_str().unwrap_or("?"),
        r["variant"].as_str().unwrap_or("?"),
        r["device"].as_str().unwrap_or("?"),
        r["backend"].as_str().unwrap_or("?"),
        if r["cpu_kernels"].as_bool() == Some(true) {
            ", vapt's CPU kernels"
        } else {
            ""
        },
        args.batch_size,
        args.image_size,
        r["threads"],
    );
    println!(
        "  eval forward: {:.3} s median ({:.1} img/s)",
        f("eval_forward_s"),
        f("eval_img_per_s")
    );
    if !args.no_train {
        println!(
            "  train step:   {:.3} s median ({:.1} img/s)",
            f("train_step_s"),
            f("train_img_per_s")
        );
    }
}

/// The results as a Markdown table.
fn markdown(results: &[serde_json::Value]) -> String {
    let mut out = String::from(
        "| method | trainable | eval forward (s) | eval img/s | train step (s) | train img/s | peak RSS (MiB) |\n|---|---|---|---|---|---|---|\n",
    );
    let num = |v: &serde_json::Value, digits: usize| match v.as_f64() {
        Some(x) => format!("{x:.digits$}"),
        None => "—".to_string(),
    };
    for r in results {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            r["method"].as_str().unwrap_or("?"),
            r["trainable_params"],
            num(&r["eval_forward_s"], 3),
            num(&r["eval_img_per_s"], 2),
            num(&r["train_step_s"], 3),
            num(&r["train_img_per_s"], 2),
            num(&r["peak_rss_mib"], 0),
        ));
    }
    out
}
