//! `vapt data verify` and `vapt data bench`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::{Args, Subcommand};
use vapt_data::transform::Transform;
use vapt_data::verify::{discover, verify};
use vapt_data::ImageSet;
use vapt_vit::{IMAGENET_MEAN, IMAGENET_STD};

/// `vapt data …`.
#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Check a dataset folder (VTAB-1k lists, FGVC json or class-per-folder): every listed file
    /// exists and decodes; print counts per split and class; write `vapt-manifest.json` with the
    /// SHA-256 of every file, or check the data against it when it exists.
    Verify(VerifyArgs),
    /// Measure decode + transform throughput (img/s) on a split, cold (from disk) and warm (from
    /// the in-memory cache).
    Bench(DataBenchArgs),
}

/// `vapt data verify`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The dataset folder (e.g. vtab-1k/cifar, datasets/fashion-mnist-1k, CUB_200_2011).
    pub dir: PathBuf,
    /// Number of classes, for a VTAB-format folder whose name is not a known task.
    #[arg(long)]
    pub classes: Option<usize>,
}

/// `vapt data bench`.
#[derive(Args, Debug)]
pub struct DataBenchArgs {
    /// The dataset folder.
    pub dir: PathBuf,
    /// Split to read (default: the first one found).
    #[arg(long)]
    pub split: Option<String>,
    /// Recipe: `vtab`, `fgvc-train` or `fgvc-eval`.
    #[arg(long, default_value = "vtab")]
    pub recipe: String,
    /// Output side in pixels.
    #[arg(long, default_value_t = 224)]
    pub size: usize,
    /// Number of classes, for a VTAB-format folder whose name is not a known task.
    #[arg(long)]
    pub classes: Option<usize>,
    /// Images to process (default: the whole split).
    #[arg(long)]
    pub limit: Option<usize>,
}

/// Runs a `vapt data` command.
pub fn run(cmd: DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Verify(a) => {
            let report = verify(&a.dir, a.classes)?;
            for s in &report.manifest.splits {
                println!(
                    "{:<16} {:>7} images   per class {:?}",
                    s.name, s.images, s.class_counts
                );
            }
            println!(
                "{} files decode; manifest {} {} (sha256 {})",
                report.manifest.files.len(),
                if report.written { "written to" } else { "matches" },
                report.manifest_path.display(),
                report.manifest_sha256
            );
            Ok(())
        }
        DataCommand::Bench(a) => {
            let splits = discover(&a.dir, a.classes)?;
            let mut split = match &a.split {
                Some(name) => splits
                    .into_iter()
                    .find(|s| &s.name == name)
                    .ok_or_else(|| anyhow::anyhow!("{}: no split named `{name}`", a.dir.display()))?,
                None => splits
                    .into_iter()
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("{}: no split", a.dir.display()))?,
            };
            if let Some(n) = a.limit {
                split.samples.truncate(n);
            }
            let t = match a.recipe.as_str() {
                "vtab" => Transform::vtab(a.size, IMAGENET_MEAN, IMAGENET_STD),
                "fgvc-train" => Transform::fgvc_train(a.size, IMAGENET_MEAN, IMAGENET_STD),
                "fgvc-eval" => Transform::fgvc_eval(a.size, IMAGENET_MEAN, IMAGENET_STD),
                other => anyhow::bail!("unknown recipe `{other}`: expected vtab, fgvc-train or fgvc-eval"),
            };
            let n = split.len();
            let name = split.name.clone();
            let set = ImageSet::new(split, t, 0);
            let idx: Vec<usize> = (0..n).collect();
            let start = Instant::now();
            let items = set.items(&idx, 0)?;
            let cold = start.elapsed().as_secs_f64();
            let start = Instant::now();
            let again = set.items(&idx, 0)?;
            let warm = start.elapsed().as_secs_f64();
            let threads = rayon::current_num_threads();
            println!(
                "{} / {name}: {n} images -> {}x{} ({}), {threads} threads",
                a.dir.display(),
                a.size,
                a.size,
                a.recipe
            );
            println!("  decode + transform (cold): {:.1} img/s", n as f64 / cold);
            println!("  transform from cache (warm): {:.1} img/s", n as f64 / warm);
            drop((items, again));
            Ok(())
        }
    }
}
