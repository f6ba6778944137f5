//! # vapt-fuzz
//!
//! One coverage-guided fuzz target per parser of a file a user hands vapt — weights (npy, npz,
//! safetensors, PyTorch pickle, ONNX), data (VTAB list, FGVC json, images), configurations (TOML, JSON)
//! and checkpoint state files — each the same function vapt calls on that file's bytes,
//! followed by what vapt does next with a parse that succeeds (architecture inference and the
//! conversion to the native layout; config validation; the checkpoint's history check).
//!
//! A target must never panic, abort or run out of memory on any input: a bad file is an error.
//! `cargo xtask fuzz <target> --seconds N` runs one under AFL++ (the `vapt-fuzz` binary, feature
//! `afl`); the inputs it finds are kept in `corpus/<target>/`, any crash in `crashes/<target>/`,
//! and `tests/replay.rs` runs them all, with the [`seeds`] made from the repository's own files,
//! as ordinary tests.

pub mod seeds;

use std::path::{Path, PathBuf};

use vapt_train::checkpoint;
use vapt_train::TrainConfig;
use vapt_vit::weights::{self, npz, pth, Layout, PosEmbResample, TensorMap};

/// One fuzz target: a parser of one kind of user file.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// Name on the command line and of its corpus folder.
    pub name: &'static str,
    /// What it parses.
    pub parses: &'static str,
    /// Runs the parser on one input; returns normally whatever the input (errors are results).
    pub run: fn(&[u8]),
}

/// Every target, in the order `cargo xtask fuzz all` runs them.
pub const TARGETS: [Target; 11] = [
    Target {
        name: "npy",
        parses: "a NumPy .npy array (header, dtype, shape, data)",
        run: npy,
    },
    Target {
        name: "npz",
        parses: "a Google npz checkpoint (zip of .npy), then the weights pipeline",
        run: npz,
    },
    Target {
        name: "safetensors",
        parses: "a safetensors file (header and data), then the weights pipeline",
        run: safetensors,
    },
    Target {
        name: "pth",
        parses: "a PyTorch checkpoint (zip or plain pickle, burn-store's reader), then the weights pipeline",
        run: pth,
    },
    Target {
        name: "onnx",
        parses: "an ONNX model (protobuf initializers and node names), then the weights pipeline",
        run: onnx,
    },
    Target {
        name: "vtab-list",
        parses: "a VTAB-1k list file (`<image path> <label>` lines)",
        run: vtab_list,
    },
    Target {
        name: "fgvc-json",
        parses: "an FGVC split json (VPT's image path → class id)",
        run: fgvc_json,
    },
    Target {
        name: "image",
        parses: "an image file (PNG, JPEG), then the VTAB and FGVC recipes' resize, crop and flip",
        run: image,
    },
    Target {
        name: "config-toml",
        parses: "a training configuration in TOML, then its validation",
        run: config_toml,
    },
    Target {
        name: "config-json",
        parses: "a training configuration in JSON (a run's config.json), then its validation",
        run: config_json,
    },
    Target {
        name: "checkpoint",
        parses: "a checkpoint state file (safetensors with metadata), then the history check",
        run: checkpoint_state,
    },
];

/// The target called `name`.
pub fn find(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// The targets' names.
pub fn names() -> Vec<&'static str> {
    TARGETS.iter().map(|t| t.name).collect()
}

/// What vapt does with a weights file that parsed: layout, architecture, backbone kind, and the
/// conversion to the native layout (every key and shape checked, the position embedding resampled
/// to the architecture's grid).
fn weights_pipeline(map: TensorMap) {
    let Ok(layout) = Layout::detect(&map) else { return };
    let Ok(arch) = weights::infer_arch(&map, layout) else {
        return;
    };
    let _kind = layout.kind(&map);
    let _ = weights::to_native(map, layout, &arch, PosEmbResample::default()).map_err(|e| e.to_string());
}

fn npy(data: &[u8]) {
    let _ = npz::parse_npy(data);
}

fn npz(data: &[u8]) {
    match npz::parse_npz(Path::new("fuzz.npz"), data) {
        Ok(map) => weights_pipeline(map),
        Err(e) => drop(e.to_string()),
    }
}

fn safetensors(data: &[u8]) {
    match weights::parse_safetensors(Path::new("fuzz.safetensors"), data) {
        Ok(map) => weights_pipeline(map),
        Err(e) => drop(e.to_string()),
    }
}

fn onnx(data: &[u8]) {
    match weights::onnx::parse_onnx(Path::new("fuzz.onnx"), data) {
        Ok(map) => weights_pipeline(map),
        Err(e) => drop(e.to_string()),
    }
}

/// burn-store's reader takes a path: the input goes through a file of this process and thread.
fn pth(data: &[u8]) {
    let path = scratch_file("pth");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    match pth::parse_pth(&path, data) {
        Ok(map) => weights_pipeline(map),
        Err(e) => drop(e.to_string()),
    }
    let _ = std::fs::remove_file(&path);
}

fn scratch_file(ext: &str) -> PathBuf {
    let thread = format!("{:?}", std::thread::current().id());
    let thread: String = thread.chars().filter(char::is_ascii_digit).collect();
    std::env::temp_dir().join(format!("vapt-fuzz-{}-{thread}.{ext}", std::process::id()))
}

fn vtab_list(data: &[u8]) {
    let _ = vapt_data::vtab::parse_list(data, Path::new("train800.txt"), Path::new("task"), 10)
        .map_err(|e| e.to_string());
}

fn fgvc_json(data: &[u8]) {
    let _ = vapt_data::fgvc::parse_json(data, Path::new("train.json")).map_err(|e| e.to_string());
}

fn image(data: &[u8]) {
    use vapt_data::transform::SplitMix64;
    use vapt_data::Transform;
    match vapt_data::images::decode_bytes(Path::new("fuzz.png"), data) {
        Ok(img) => {
            let mut rng = SplitMix64(7);
            let _ = Transform::vtab(16, [0.5; 3], [0.25; 3]).apply(&img, &mut rng);
            let train = Transform::fgvc_train(16, [0.5; 3], [0.25; 3]);
            let _ = train.finish(&train.resize(&img), &mut rng);
        }
        Err(e) => drop(e.to_string()),
    }
}

fn config(data: &[u8], name: &str, is_toml: bool) {
    match TrainConfig::parse(data, Path::new(name), is_toml) {
        Ok(cfg) => {
            let _ = cfg.validate(name).map_err(|e| e.to_string());
            let _ = cfg.label();
            let _ = cfg.optim.schedule();
        }
        Err(e) => drop(e.to_string()),
    }
}

fn config_toml(data: &[u8]) {
    config(data, "fuzz.toml", true)
}

fn config_json(data: &[u8]) {
    config(data, "config.json", false)
}

fn checkpoint_state(data: &[u8]) {
    let state = Path::new("checkpoint/state.safetensors");
    match checkpoint::read_state(state, data) {
        Ok((_, file)) => {
            let _ = file.meta.rows(state, 100).map_err(|e| e.to_string());
        }
        Err(e) => drop(e.to_string()),
    }
}
