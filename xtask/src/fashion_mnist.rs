//! `cargo xtask fashion-mnist`: builds `datasets/fashion-mnist-1k` (VTAB-1k folder format) from the
//! Debian package `dataset-fashion-mnist` (IDX files under `/usr/share/datasets/fashion-mnist/`).
//!
//! Deterministic and class-balanced: walking the training set in file order, the first 80 images
//! of each class go to `train800`, the next 20 to `val200`; walking the test set in order, the first
//! 200 of each class go to `test`. `train800val200.txt` lists the train800 and val200 files (no
//! copies). Images are 28×28 8-bit greyscale PNGs.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

const APT_HINT: &str = "install it with `apt-get install dataset-fashion-mnist`";

/// Default location of the Debian package's files.
pub const DEFAULT_SRC: &str = "/usr/share/datasets/fashion-mnist";

fn read_gz(path: &Path) -> Result<Vec<u8>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("{}: cannot open ({APT_HINT})", path.display()))?;
    gunzip(path, &bytes)
}

/// Decompresses the gzip `bytes` read from `path`.
pub(crate) fn gunzip(path: &Path, bytes: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .with_context(|| format!("{}: not a gzip file", path.display()))?;
    Ok(out)
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Reads an IDX image file and its label file: (images of 28·28 bytes, labels).
fn read_idx(images: &Path, labels: &Path) -> Result<(Vec<Vec<u8>>, Vec<u8>)> {
    let img = read_gz(images)?;
    let lab = read_gz(labels)?;
    if img.len() < 16 || be_u32(&img, 0) != 2051 {
        bail!("{}: not an IDX3 image file", images.display());
    }
    if lab.len() < 8 || be_u32(&lab, 0) != 2049 {
        bail!("{}: not an IDX1 label file", labels.display());
    }
    let (n, rows, cols) = (
        be_u32(&img, 4) as usize,
        be_u32(&img, 8) as usize,
        be_u32(&img, 12) as usize,
    );
    let n_labels = be_u32(&lab, 4) as usize;
    if n != n_labels || img.len() != 16 + n * rows * cols || lab.len() != 8 + n {
        bail!("{} / {}: sizes do not agree", images.display(), labels.display());
    }
    let px = rows * cols;
    let images = (0..n)
        .map(|i| img[16 + i * px..16 + (i + 1) * px].to_vec())
        .collect();
    Ok((images, lab[8..].to_vec()))
}

fn pick(labels: &[u8], skip_per_class: usize, per_class: usize) -> Vec<usize> {
    let mut seen = [0usize; 10];
    let mut out = Vec::new();
    for (i, &l) in labels.iter().enumerate() {
        let c = l as usize;
        if c < 10 {
            seen[c] += 1;
            if seen[c] > skip_per_class && seen[c] <= skip_per_class + per_class {
                out.push(i);
            }
        }
    }
    out
}

fn write_split(
    out: &Path,
    name: &str,
    images: &[Vec<u8>],
    labels: &[u8],
    idx: &[usize],
) -> Result<Vec<String>> {
    let dir = out.join("images").join(name);
    std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let mut lines = Vec::new();
    for (k, &i) in idx.iter().enumerate() {
        let rel = format!("images/{name}/{k:06}.png");
        let img = image::GrayImage::from_raw(28, 28, images[i].clone()).context("bad image size")?;
        img.save(out.join(&rel))
            .with_context(|| format!("{}: cannot write", out.join(&rel).display()))?;
        lines.push(format!("{rel} {}", labels[i]));
    }
    Ok(lines)
}

/// Builds the task folder. Refuses to touch an existing folder unless `force`.
pub fn build(src: &Path, out: &Path, force: bool) -> Result<()> {
    if out.exists() {
        if !force {
            bail!("{}: already exists; pass --force to rebuild it", out.display());
        }
        for sub in [
            "images",
            "train800.txt",
            "val200.txt",
            "train800val200.txt",
            "test.txt",
            "vapt-manifest.json",
        ] {
            let p: PathBuf = out.join(sub);
            if p.is_dir() {
                std::fs::remove_dir_all(&p)?;
            } else if p.exists() {
                std::fs::remove_file(&p)?;
            }
        }
    }
    let (train_x, train_y) = read_idx(
        &src.join("train-images-idx3-ubyte.gz"),
        &src.join("train-labels-idx1-ubyte.gz"),
    )?;
    let (test_x, test_y) = read_idx(
        &src.join("t10k-images-idx3-ubyte.gz"),
        &src.join("t10k-labels-idx1-ubyte.gz"),
    )?;
    std::fs::create_dir_all(out)?;
    let train = write_split(out, "train800", &train_x, &train_y, &pick(&train_y, 0, 80))?;
    let val = write_split(out, "val200", &train_x, &train_y, &pick(&train_y, 80, 20))?;
    let test = write_split(out, "test", &test_x, &test_y, &pick(&test_y, 0, 200))?;
    let write = |name: &str, lines: &[String]| -> Result<()> {
        std::fs::write(out.join(name), lines.join("\n") + "\n").with_context(|| format!("writing {name}"))
    };
    write("train800.txt", &train)?;
    write("val200.txt", &val)?;
    write("train800val200.txt", &[train.clone(), val.clone()].concat())?;
    write("test.txt", &test)?;
    println!(
        "wrote {}: train800 {}, val200 {}, test {} (from {})",
        out.display(),
        train.len(),
        val.len(),
        test.len(),
        src.display()
    );
    Ok(())
}
