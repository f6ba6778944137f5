//! The fuzzers' findings as ordinary tests: every seed, every input in `corpus/<target>/` and
//! every crash ever found (`crashes/<target>/`) runs through its target without a panic.

use std::path::{Path, PathBuf};

use vapt_fuzz::seeds::{seeds, tiny_dinov2, tiny_file};
use vapt_fuzz::TARGETS;
use vapt_vit::weights::{self, Layout};
use vapt_vit::BackboneKind;

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn repo() -> PathBuf {
    crate_dir().join("../..")
}

/// The files of `dir` (none when it does not exist), sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    out.retain(|p| p.file_name().is_some_and(|n| n != "README.md"));
    out.sort();
    out
}

#[test]
fn every_seed_corpus_input_and_crash_runs_without_a_panic() {
    let mut failures = Vec::new();
    let mut counts = Vec::new();
    for target in TARGETS {
        let mut inputs: Vec<(String, Vec<u8>)> = seeds(target.name, &repo())
            .into_iter()
            .map(|(name, bytes)| (format!("seed {name}"), bytes))
            .collect();
        for folder in ["corpus", "crashes"] {
            for path in files(&crate_dir().join(folder).join(target.name)) {
                match std::fs::read(&path) {
                    Ok(bytes) => inputs.push((path.display().to_string(), bytes)),
                    Err(e) => failures.push(format!("{}: {e}", path.display())),
                }
            }
        }
        counts.push(format!("{} {}", target.name, inputs.len()));
        for (name, bytes) in inputs {
            if std::panic::catch_unwind(|| (target.run)(&bytes)).is_err() {
                failures.push(format!("{}: {name} panicked", target.name));
            }
        }
    }
    eprintln!("inputs per target: {}", counts.join(", "));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn corpus_and_crash_folders_name_targets() {
    for folder in ["corpus", "crashes"] {
        let Ok(entries) = std::fs::read_dir(crate_dir().join(folder)) else {
            continue;
        };
        for entry in entries.flatten().filter(|e| e.path().is_dir()) {
            let name = entry.file_name().to_string_lossy().to_string();
            assert!(
                vapt_fuzz::find(&name).is_some(),
                "{folder}/{name} is not a target"
            );
        }
    }
}

#[test]
fn every_target_has_seeds_that_are_valid_files() {
    let seeds_of = |t: &str| seeds(t, &repo());
    for target in TARGETS {
        assert!(!seeds_of(target.name).is_empty(), "{} has no seeds", target.name);
    }
    let first = |t: &str| seeds_of(t).remove(0).1;

    // The tiny ViT files load through vapt's weights pipeline, in their layout.
    let npz = weights::npz::parse_npz(Path::new("t.npz"), &first("npz")).expect("npz seed");
    assert_eq!(Layout::detect(&npz).ok(), Some(Layout::Google));
    let arch = weights::infer_arch(&npz, Layout::Google).expect("architecture");
    assert_eq!(
        (arch.hidden, arch.depth, arch.patch_size, arch.image_size),
        (8, 1, 4, 8)
    );
    for (name, bytes) in seeds_of("safetensors") {
        let map = weights::parse_safetensors(Path::new(&name), &bytes).expect("safetensors seed");
        let layout = Layout::detect(&map).expect("layout");
        if layout == Layout::Timm && !name.contains("dinov2") {
            // timm files do not store the head count; width 8 is no standard ViT's.
            let err = weights::infer_arch(&map, layout)
                .expect_err("no head count")
                .to_string();
            assert!(err.contains("not a standard ViT width"), "{err}");
            continue;
        }
        let arch = weights::infer_arch(&map, layout).expect("architecture");
        assert_eq!(arch.layer_scale, name.contains("dinov2"), "{name}");
        let native = weights::to_native(map, layout, &arch, Default::default()).expect("native");
        assert_eq!(native.tensors.len(), weights::native::native_params(&arch).len());
    }
    // The ONNX seed is a DINOv2 export: Hugging Face names, LayerScale, the stored 3 × 3 grid.
    let onnx = weights::onnx::parse_onnx(Path::new("t.onnx"), &first("onnx")).expect("onnx seed");
    assert_eq!(Layout::detect(&onnx).ok(), Some(Layout::Hf));
    assert_eq!(onnx.tensors, tiny_dinov2(Layout::Hf).tensors);
    let arch = weights::infer_arch(&onnx, Layout::Hf).expect("architecture");
    assert_eq!((arch.hidden, arch.layer_scale, arch.pos_grid()), (64, true, 3));
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, bytes) in seeds_of("pth") {
        let path = dir.path().join(&name);
        std::fs::write(&path, &bytes).expect("write");
        if name.ends_with(".pkl") {
            // A bare pickle of tensors has no storages to read them from: an error naming it.
            let err = weights::pth::parse_pth(&path, &bytes)
                .expect_err("no storages")
                .to_string();
            assert!(err.contains(&name) && err.contains("no data source"), "{err}");
            continue;
        }
        let map = weights::pth::parse_pth(&path, &bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        if name == "tiny-vit-mae.pth" {
            assert_eq!(
                map.metadata.get(weights::pth::META_CONTAINER).map(String::as_str),
                Some("model")
            );
            let layout = Layout::detect(&map).expect("layout");
            assert_eq!((layout, layout.kind(&map)), (Layout::Timm, BackboneKind::Mae));
            let expected = tiny_file(Layout::Timm);
            assert_eq!(
                map.tensors, expected.tensors,
                "the pickle's tensors are the written ones"
            );
        } else {
            let w = &map.tensors["w"];
            assert_eq!(
                (w.shape.clone(), w.data.clone()),
                (vec![2, 2], vec![1.0, 2.0, 3.0, 4.0])
            );
        }
    }

    let samples = vapt_data::vtab::parse_list(&first("vtab-list"), Path::new("l.txt"), Path::new("t"), 10)
        .expect("list seed");
    assert_eq!(samples.len(), 20);
    for (name, bytes) in seeds_of("image") {
        let img = vapt_data::images::decode_bytes(Path::new(&name), &bytes).expect("image seed");
        assert_eq!((img.width, img.height), (28, 28), "{name}");
    }
    let pairs = vapt_data::fgvc::parse_json(&first("fgvc-json"), Path::new("t.json")).expect("json seed");
    assert_eq!(pairs.len(), 20);
    let default = vapt_train::TrainConfig::default();
    for (target, toml) in [("config-toml", true), ("config-json", false)] {
        let cfg = vapt_train::TrainConfig::parse(&first(target), Path::new("c"), toml).expect("config seed");
        assert_eq!(cfg, default);
    }
    let state = Path::new("state.safetensors");
    let (map, file) = vapt_train::checkpoint::read_state(state, &first("checkpoint")).expect("state seed");
    assert_eq!(map.tensors.len(), 2);
    assert_eq!(file.meta.rows(state, 10).expect("rows").len(), 2);
}

/// A PyTorch zip whose storages are shorter than the tensors the pickle claims (burn-store's
/// reader would pad them with zeros, or allocate a huge claim) is an error naming the tensor.
#[test]
fn pth_tensors_larger_than_their_storages_are_refused() {
    let good = seeds("pth", &repo()).remove(1).1;
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(good)).expect("zip");
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).expect("entry");
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes).expect("read");
        if entry.name().contains("/data/") {
            bytes.truncate(4);
        }
        out.start_file(entry.name(), options).expect("start");
        std::io::Write::write_all(&mut out, &bytes).expect("write");
    }
    let bytes = out.finish().expect("finish").into_inner();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("short.pth");
    std::fs::write(&path, &bytes).expect("write");
    let err = weights::pth::parse_pth(&path, &bytes)
        .expect_err("short storages")
        .to_string();
    assert!(
        err.contains("short.pth") && err.contains("holds 4 bytes") && err.contains("entry `"),
        "{err}"
    );
}

/// A torch zip after leading bytes (`PPPP…PK`): burn-store's reader opens it as a zip, so its
/// entries' claimed sizes are checked as any zip's (AFL++ found this one: a 926-byte file whose
/// storage claimed 3.9 GB, an allocation abort before the check looked past the first bytes).
#[test]
fn a_zip_after_leading_bytes_is_checked_like_any_zip() {
    let path = repo().join("crates/vapt-fuzz/crashes/pth/19788d025f3873a8");
    let bytes = std::fs::read(&path).expect("the crash input");
    assert!(!bytes.starts_with(b"PK") && bytes.len() < 1000);
    let err = weights::pth::parse_pth(&path, &bytes)
        .expect_err("a damaged zip")
        .to_string();
    assert!(
        err.contains("19788d025f3873a8") && err.contains("claims"),
        "{err}"
    );
}
