//! Seed inputs for each target, made from the repository's own files and vapt's own writers:
//! the shipped list file, the parity fixtures' arrays, tiny but complete ViT files in each
//! layout (Google npz, timm and native safetensors, a PyTorch zip checkpoint), the default
//! configuration, a checkpoint state file. Small on purpose: the fuzzer mutates them.

use std::io::Write;
use std::path::Path;

use vapt_train::checkpoint::{self, CheckpointMeta, Identity, StateMeta};
use vapt_train::{EpochRow, TrainConfig};
use vapt_vit::weights::{self, npz, Layout, RawTensor, TensorMap};
use vapt_vit::VitConfig;

/// `(name, bytes)` seeds of target `target`, made from the repository at `repo`.
pub fn seeds(target: &str, repo: &Path) -> Vec<(String, Vec<u8>)> {
    let named = |items: Vec<(&str, Vec<u8>)>| items.into_iter().map(|(n, b)| (n.to_string(), b)).collect();
    match target {
        "npy" => npy_seeds(repo),
        "npz" => named(vec![(
            "tiny-vit.npz",
            npz::npz_bytes(Path::new("tiny-vit.npz"), &tiny_file(Layout::Google)).unwrap_or_default(),
        )]),
        "safetensors" => named(vec![
            ("tiny-vit-timm.safetensors", safetensors(&tiny_file(Layout::Timm))),
            (
                "tiny-dinov2-timm.safetensors",
                safetensors(&tiny_dinov2(Layout::Timm)),
            ),
            (
                "tiny-dinov2-hf.safetensors",
                safetensors(&tiny_dinov2(Layout::Hf)),
            ),
            (
                "tiny-vit-native.safetensors",
                safetensors(&tiny_file(Layout::Native)),
            ),
        ]),
        "pth" => named(vec![
            ("tiny-vit-mae.pth", pth_zip(&tiny_file(Layout::Timm), "model")),
            ("tiny.pth", pth_zip(&tiny_map(), "")),
            ("tiny.pkl", pickle(&tiny_map(), "state_dict")),
        ]),
        "onnx" => named(vec![(
            "tiny-dinov2.onnx",
            weights::onnx::onnx_bytes(&tiny_dinov2(Layout::Hf), "backbone"),
        )]),
        "image" => image_seeds(repo),
        "vtab-list" => named(vec![("train800-head.txt", list_head(repo).into_bytes())]),
        "fgvc-json" => named(vec![("train.json", fgvc_json(&list_head(repo)))]),
        "config-toml" => named(vec![(
            "default.toml",
            toml::to_string(&TrainConfig::default())
                .unwrap_or_default()
                .into_bytes(),
        )]),
        "config-json" => named(vec![(
            "config.json",
            serde_json::to_vec_pretty(&TrainConfig::default()).unwrap_or_default(),
        )]),
        "checkpoint" => named(vec![("state.safetensors", state_file())]),
        _ => Vec::new(),
    }
}

/// The smallest arrays of a parity fixture's npz, and one written by vapt.
fn npy_seeds(repo: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![(
        "written.npy".to_string(),
        npz::npy_bytes(&RawTensor::new(vec![2, 3], vec![0.5; 6])),
    )];
    let path = repo.join("tests/fixtures/parity/k_adapter/backbone.npz");
    let Ok(file) = std::fs::File::open(&path) else {
        return out;
    };
    let Ok(mut zip) = zip::ZipArchive::new(file) else {
        return out;
    };
    for i in 0..zip.len() {
        let Ok(mut entry) = zip.by_index(i) else { continue };
        if entry.size() > 1024 || out.len() >= 4 {
            continue;
        }
        let name = entry.name().replace('/', "_");
        let mut bytes = Vec::new();
        if std::io::Read::read_to_end(&mut entry, &mut bytes).is_ok() {
            out.push((name, bytes));
        }
    }
    out
}

/// A complete ViT (hidden 8, one block, 2 × 2 patches of 4 pixels) in `layout`'s file keys and
/// shapes, with small distinct values (native files carry their architecture, as vapt writes them).
pub fn tiny_file(layout: Layout) -> TensorMap {
    let cfg = VitConfig::new(8, 1, 2, 16, 4).with_image_size(8);
    let mut map = filled(layout, &cfg, 7);
    if layout == Layout::Native {
        let json = serde_json::to_string(&cfg).unwrap_or_default();
        map.metadata.insert(weights::native::META_CONFIG.into(), json);
    }
    map
}

/// A complete DINOv2-style ViT (hidden 64, one block, LayerScale, position embedding stored for a
/// 3 × 3 grid of 4-pixel patches) in `layout`'s file keys and shapes.
pub fn tiny_dinov2(layout: Layout) -> TensorMap {
    let cfg = VitConfig::new(64, 1, 1, 16, 4).with_image_size(12).with_dinov2(3);
    filled(layout, &cfg, 5)
}

/// Every file tensor of `cfg` in `layout`, element i = ((i mod `period`) − `period`/2) / 8.
fn filled(layout: Layout, cfg: &VitConfig, period: usize) -> TensorMap {
    let mut map = TensorMap::new("tiny");
    let value = |i: usize| ((i % period) as f32 - (period / 2) as f32) * 0.125;
    for (key, shape) in weights::rename::file_keys(&layout.table(cfg)) {
        let n: usize = shape.iter().product();
        map.insert(key, RawTensor::new(shape, (0..n).map(value).collect()));
    }
    map
}

fn tiny_map() -> TensorMap {
    let mut map = TensorMap::new("tiny");
    map.insert("w", RawTensor::new(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]));
    map.insert("b", RawTensor::new(vec![2], vec![0.5, -0.5]));
    map
}

fn safetensors(map: &TensorMap) -> Vec<u8> {
    weights::safetensors_bytes(Path::new("tiny.safetensors"), map).unwrap_or_default()
}

/// A PyTorch (≥ 1.6) zip checkpoint of `map`: `archive/data.pkl` plus one storage per tensor.
fn pth_zip(map: &TensorMap, container: &str) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut put = |name: &str, bytes: &[u8]| {
        let _ = zip.start_file(format!("archive/{name}"), options);
        let _ = zip.write_all(bytes);
    };
    put("data.pkl", &pickle(map, container));
    put("byteorder", b"little");
    for (i, t) in map.tensors.values().enumerate() {
        let bytes: Vec<u8> = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
        put(&format!("data/{i}"), &bytes);
    }
    put("version", b"3\n");
    zip.finish().map(|c| c.into_inner()).unwrap_or_default()
}

/// The pickle (protocol 2) torch writes for a state dict of float tensors: an `OrderedDict` of
/// `_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`, the storages as
/// persistent ids `('storage', FloatStorage, '<i>', 'cpu', numel)`; under `{container: ...}`
/// unless `container` is empty.
fn pickle(map: &TensorMap, container: &str) -> Vec<u8> {
    let mut p = vec![0x80, 2];
    let text = |p: &mut Vec<u8>, s: &str| {
        p.push(b'X');
        p.extend_from_slice(&(s.len() as u32).to_le_bytes());
        p.extend_from_slice(s.as_bytes());
    };
    let int = |p: &mut Vec<u8>, v: usize| {
        p.push(b'J');
        p.extend_from_slice(&(v as i32).to_le_bytes());
    };
    let ordered_dict = |p: &mut Vec<u8>| {
        p.extend_from_slice(b"ccollections\nOrderedDict\n");
        p.extend_from_slice(b")R");
    };
    if !container.is_empty() {
        p.push(b'}');
        text(&mut p, container);
    }
    ordered_dict(&mut p);
    p.push(b'(');
    for (i, (key, t)) in map.tensors.iter().enumerate() {
        text(&mut p, key);
        p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n(");
        p.push(b'(');
        text(&mut p, "storage");
        p.extend_from_slice(b"ctorch\nFloatStorage\n");
        text(&mut p, &i.to_string());
        text(&mut p, "cpu");
        int(&mut p, t.numel());
        p.extend_from_slice(b"tQ");
        int(&mut p, 0);
        p.push(b'(');
        for d in &t.shape {
            int(&mut p, *d);
        }
        p.extend_from_slice(b"t(");
        for k in 0..t.shape.len() {
            int(&mut p, t.shape[k + 1..].iter().product());
        }
        p.extend_from_slice(b"t\x89");
        ordered_dict(&mut p);
        p.extend_from_slice(b"tR");
    }
    p.push(b'u');
    if !container.is_empty() {
        p.push(b's');
    }
    p.push(b'.');
    p
}

/// Two images of the shipped task, one of them as JPEG.
fn image_seeds(repo: &Path) -> Vec<(String, Vec<u8>)> {
    let dir = repo.join("datasets/fashion-mnist-1k/images/train800");
    let mut out = Vec::new();
    if let Ok(png) = std::fs::read(dir.join("000000.png")) {
        if let Ok(img) = image::load_from_memory(&png) {
            let mut jpeg = Vec::new();
            let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 80);
            if img.to_rgb8().write_with_encoder(encoder).is_ok() {
                out.push(("000000.jpg".to_string(), jpeg));
            }
        }
        out.push(("000000.png".to_string(), png));
    }
    out
}

/// The first lines of the shipped task's training list.
fn list_head(repo: &Path) -> String {
    let list =
        std::fs::read_to_string(repo.join("datasets/fashion-mnist-1k/train800.txt")).unwrap_or_default();
    list.lines().take(20).map(|l| format!("{l}\n")).collect()
}

fn fgvc_json(list: &str) -> Vec<u8> {
    let map: serde_json::Map<String, serde_json::Value> = list
        .lines()
        .filter_map(|l| {
            let (path, label) = l.split_once(' ')?;
            Some((path.to_string(), label.parse::<i64>().ok()?.into()))
        })
        .collect();
    serde_json::to_vec_pretty(&map).unwrap_or_default()
}

/// A state file after two epochs, as `checkpoint::save` writes it.
fn state_file() -> Vec<u8> {
    let row = |epoch| EpochRow {
        epoch,
        lr: 0.1,
        train_loss: 2.0,
        train_top1: 10.0,
        eval_loss: Some(2.1),
        eval_top1: Some(9.5),
        seconds: 1.5,
    };
    let file = StateMeta {
        meta: CheckpointMeta {
            epochs_done: 2,
            history: serde_json::to_string(&[row(0), row(1)]).unwrap_or_default(),
            wall_seconds: 3.0,
            identity: Identity {
                config_sha256: "c".repeat(64),
                weights_sha256: Some("a".repeat(64)),
                data_sha256: None,
            },
        },
        optimizer: "optim-2.bin".into(),
        optimizer_bytes: 120,
        optimizer_sha256: "b".repeat(64),
    };
    checkpoint::encode_state(Path::new("state.safetensors"), tiny_map(), &file).unwrap_or_default()
}
