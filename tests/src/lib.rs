//! Shared helpers for vapt's cross-crate integration tests: locating the parity fixtures
//! (`tests/fixtures/parity` in the repository, or `$VAPT_FIXTURES`), reading their safetensors
//! files and comparing tensors with the fixtures' tolerance rule.

pub mod torch;

use std::collections::BTreeMap;
use std::path::PathBuf;

use safetensors::tensor::Dtype;

/// Root of the parity fixtures: `$VAPT_FIXTURES`, else the repository's copy,
/// `tests/fixtures/parity`.
pub fn fixtures_root() -> PathBuf {
    match std::env::var_os("VAPT_FIXTURES") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/parity"),
    }
}

/// Folder of one fixture, e.g. `c_vapt_default`.
pub fn fixture(name: &str) -> PathBuf {
    fixtures_root().join(name)
}

/// Reports a test that cannot run here (a missing driver or program) as `skipped: <why>` on the
/// terminal — written past the test harness's output capture, so it shows in a plain
/// `cargo test` — unless `require` names an environment variable set to `1` (as `.ci/run` sets
/// `VAPT_REQUIRE_*`), which turns the skip into a failure.
pub fn skip_unless_required(require: &str, why: &str) {
    if std::env::var(require).is_ok_and(|v| v == "1") {
        panic!("{require}=1, but {why}");
    }
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "skipped: {why}");
}

/// A tensor from a fixture file: shape and values as f64 (integers converted).
#[derive(Debug, Clone)]
pub struct FixtureTensor {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub values: Vec<f64>,
}

impl FixtureTensor {
    /// Values as f32.
    pub fn f32(&self) -> Vec<f32> {
        self.values.iter().map(|&v| v as f32).collect()
    }
}

/// Reads every tensor of a safetensors file (F32 and I64 supported).
pub fn read_safetensors(path: &std::path::Path) -> BTreeMap<String, FixtureTensor> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st =
        safetensors::SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let b = view.data();
        let values: Vec<f64> = match view.dtype() {
            Dtype::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                .collect(),
            Dtype::I64 => b
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f64)
                .collect(),
            other => panic!("{}: {name}: unsupported dtype {other:?}", path.display()),
        };
        out.insert(
            name,
            FixtureTensor {
                shape: view.shape().to_vec(),
                values,
            },
        );
    }
    out
}

/// `max|ours − expected| / (atol + rtol·max|expected|)`: the fraction of the tolerance used
/// (≤ 1 passes). Panics on a length mismatch.
pub fn tolerance_fraction(ours: &[f32], expected: &[f64], atol: f64, rtol: f64) -> f64 {
    assert_eq!(ours.len(), expected.len(), "length mismatch");
    let max_exp = expected.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let max_err = ours
        .iter()
        .zip(expected)
        .fold(0.0f64, |m, (a, b)| m.max((*a as f64 - b).abs()));
    max_err / (atol + rtol * max_exp)
}

/// Writes a small two-class VTAB-format task `patch_camelyon` under `root` (16×16 PNGs: class 0
/// horizontal stripes, class 1 vertical stripes, each image with its own phase and noise):
/// `per_class` images per class in train800, val200 and test, and train800val200 = both.
/// Returns the task folder.
pub fn write_tiny_vtab(root: &std::path::Path, per_class: usize) -> PathBuf {
    let dir = root.join("patch_camelyon");
    std::fs::create_dir_all(dir.join("images")).expect("create task folder");
    let mut lists: BTreeMap<&str, String> = BTreeMap::new();
    let mut n = 0u32;
    for split in ["train800", "val200", "test"] {
        for label in 0..2u32 {
            for _ in 0..per_class {
                n += 1;
                let img = image::RgbImage::from_fn(16, 16, |x, y| {
                    let t = if label == 0 { y } else { x };
                    let stripe = ((t + n) / 2).is_multiple_of(2);
                    let noise = (x * 7 + y * 13 + n * 31) % 40;
                    let v = if stripe { 200 - noise } else { 40 + noise } as u8;
                    image::Rgb([v, v / 2 + 20, 255 - v])
                });
                let rel = format!("images/{split}_{n}.png");
                img.save(dir.join(&rel)).expect("write png");
                let line = format!("{rel} {label}\n");
                lists.entry(split).or_default().push_str(&line);
                if split != "test" {
                    lists.entry("train800val200").or_default().push_str(&line);
                }
            }
        }
    }
    for (split, text) in lists {
        std::fs::write(dir.join(format!("{split}.txt")), text).expect("write list");
    }
    dir
}

/// A tiny timm-layout backbone file (ViT D32-L2-H2-M64-P4 for 16-pixel images, no head) with
/// values from a formula, each moved by `shift` (two shifts: two different backbones).
pub fn write_tiny_weights(path: &std::path::Path, shift: f32) {
    let cfg = vapt_vit::VitConfig::new(32, 2, 2, 64, 4).with_image_size(16);
    let mut map = vapt_vit::TensorMap::new(path);
    for (k, mut t) in torch::timm_state_dict(&cfg) {
        for v in &mut t.data {
            *v += shift;
        }
        map.insert(k, t);
    }
    vapt_vit::weights::write_safetensors(path, &map).expect("write tiny weights");
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    /// The repository's fixtures are byte-identical to the authors' files listed in
    /// `SHA256SUMS` (`sha256sum -c SHA256SUMS` checks the same), and nothing is unlisted.
    #[test]
    fn the_fixtures_match_their_sha256_list() {
        let root = super::fixtures_root();
        let mut listed = checked_sums(&root);
        let mut files = Vec::new();
        for dir in std::fs::read_dir(&root).unwrap().flatten() {
            let p = dir.path();
            if p.is_dir() {
                for f in std::fs::read_dir(&p).unwrap().flatten() {
                    files.push(f.path().strip_prefix(&root).unwrap().display().to_string());
                }
            } else if p.file_name().is_some_and(|n| n != "SHA256SUMS") {
                files.push(p.strip_prefix(&root).unwrap().display().to_string());
            }
        }
        files.sort();
        listed.sort();
        assert_eq!(files, listed, "every fixture file is listed");
        assert!(listed.len() >= 25, "{} files", listed.len());
    }

    /// Checks every `<sha256>  <path>` line of `root/SHA256SUMS`; returns the paths.
    fn checked_sums(root: &std::path::Path) -> Vec<String> {
        let sums = std::fs::read_to_string(root.join("SHA256SUMS")).expect("SHA256SUMS");
        let mut listed = Vec::new();
        for line in sums.lines().filter(|l| !l.trim().is_empty()) {
            let (hash, name) = line.split_once("  ").expect("`<sha256>  <path>` lines");
            let name = name.trim_start_matches("./");
            let bytes = std::fs::read(root.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            let got: String = Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(got, hash, "{name}");
            listed.push(name.to_string());
        }
        listed
    }

    #[test]
    fn the_real_vit_s14_reference_matches_its_sha256_list() {
        let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/real-vit-s14");
        assert_eq!(checked_sums(&root), ["README.md", "reference.json"]);
    }
}
