//! Classify images with a trained vapt run from your own Rust program.
//!
//! ```sh
//! cargo xtask train                                   # a run in runs/default/<time>/
//! cargo run --release -p vapt-train --example classify -- runs/default/<time> datasets/fashion-mnist-1k/images/test/000000.png
//! ```
//!
//! The run folder holds `config.json` and `prompts.safetensors` (the trained prompts and head); the
//! backbone weights named in the config are loaded underneath. The CPU backend is used here; any
//! Burn backend works the same way.

use std::path::PathBuf;

use burn::backend::Flex;
use vapt_train::Predictor;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1).map(PathBuf::from);
    let (Some(run), images) = (args.next(), args.collect::<Vec<_>>()) else {
        return Err("usage: classify RUN_FOLDER IMAGE...".into());
    };
    let device = Default::default();
    let model = Predictor::<Flex>::load(&run, None, &device)?;
    println!(
        "{} ({} on {})",
        run.display(),
        model.cfg.experts.method,
        model.model.backbone.config.display_name()
    );
    for image in images {
        // Each prediction prints as `class (probability)`, e.g. `7 (99.2%)`.
        let top: Vec<String> = model
            .predict_file(&image, 3, &device)?
            .iter()
            .map(ToString::to_string)
            .collect();
        println!("{}: {}", image.display(), top.join(", "));
    }
    Ok(())
}
