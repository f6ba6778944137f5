//! Decoding, caching and batching images of a [`Split`].
//!
//! Images are decoded in parallel (rayon) to 8-bit RGB (grey and RGBA become RGB); splits up to
//! [`CACHE_LIMIT`] images keep each image in memory after first use, so later epochs only pay for
//! crop, flip and normalisation. The cache holds, per image, the smaller of the decoded original
//! and the recipe's resize ([`Resized`]): never more than the resized size (VTAB at 224 px:
//! 224² × 3 float32 = 588 KiB; FGVC: shorter side 256, 8-bit), however large the file. [`ImageBatcher`] turns items into tensors on the chosen device.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use rayon::prelude::*;

use crate::error::DataError;
use crate::split::Split;
use crate::transform::{Resized, Rgb8, SplitMix64, Transform};

/// Splits with at most this many images are cached in memory after first use.
pub const CACHE_LIMIT: usize = 20_000;

/// Image files larger than this are refused before they are read (a 16-bit 8000 × 8000 PNG is
/// far below it; `/dev/zero` or a mislabelled disk image is not).
pub const MAX_IMAGE_FILE_BYTES: u64 = 512 << 20;

/// Why `path` is not a file an image can be read from (`None` when it is one): it does not
/// exist, is a folder, a symbolic link loop, a device, or cannot be looked at.
pub(crate) fn not_a_file(path: &Path) -> Option<String> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => None,
        Ok(m) if m.is_dir() => Some("is a folder, not an image file".into()),
        Ok(_) => Some("is not a regular file (a device or a pipe)".into()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(
            if path.is_symlink() {
                "is a symbolic link to nothing"
            } else {
                "does not exist"
            }
            .into(),
        ),
        // ELOOP: the link resolves to itself.
        Err(e) if e.raw_os_error() == Some(40) => Some("is a symbolic link loop".into()),
        Err(e) => Some(format!("cannot be read ({e})")),
    }
}

/// Decodes an image file to 8-bit RGB. Only regular files up to [`MAX_IMAGE_FILE_BYTES`] are
/// read; the decoder's own limits (the `image` crate's 512 MiB allocation cap) bound what a
/// small file can claim to expand to.
pub fn decode(path: &Path) -> Result<Rgb8, DataError> {
    let meta = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?;
    let refuse = |message: String| DataError::Decode {
        path: path.to_path_buf(),
        message,
    };
    if !meta.is_file() {
        return Err(refuse("not a regular file (a device, a folder or a pipe)".into()));
    }
    if meta.len() > MAX_IMAGE_FILE_BYTES {
        return Err(refuse(format!(
            "{} bytes: larger than any image vapt reads ({} MiB at most)",
            meta.len(),
            MAX_IMAGE_FILE_BYTES >> 20
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    decode_bytes(path, &bytes)
}

/// Decodes image bytes (`path` only names them in errors).
pub fn decode_bytes(path: &Path, bytes: &[u8]) -> Result<Rgb8, DataError> {
    let img = image::load_from_memory(bytes).map_err(|e| DataError::Decode {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let rgb = img.to_rgb8();
    Ok(Rgb8 {
        width: rgb.width() as usize,
        height: rgb.height() as usize,
        data: rgb.into_raw(),
    })
}

/// One transformed image and its label.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageItem {
    /// CHW float32, normalised.
    pub pixels: Vec<f32>,
    /// Class index.
    pub label: usize,
}

/// What the cache keeps of one image: whichever is smaller.
#[derive(Debug)]
enum Cached {
    /// The decoded image (small originals, e.g. 32 × 32).
    Original(Rgb8),
    /// The recipe's resize (large originals).
    Resized(Resized),
}

impl Cached {
    fn new(img: Rgb8, transform: &Transform) -> Self {
        if img.data.len() <= transform.resized_bytes(img.width, img.height) {
            Cached::Original(img)
        } else {
            Cached::Resized(transform.resize(&img))
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Cached::Original(img) => img.data.len(),
            Cached::Resized(r) => r.bytes(),
        }
    }
}

/// A split plus its transform, with an in-memory cache of prepared images.
#[derive(Debug)]
pub struct ImageSet {
    /// The images and labels.
    pub split: Split,
    /// The preprocessing recipe.
    pub transform: Transform,
    cache: Option<Vec<OnceLock<Arc<Cached>>>>,
    seed: u64,
    epoch: AtomicU64,
}

impl ImageSet {
    /// Wraps `split`; random transforms are seeded from `seed`, the epoch and the image index.
    pub fn new(split: Split, transform: Transform, seed: u64) -> Self {
        let cache = (split.len() <= CACHE_LIMIT).then(|| (0..split.len()).map(|_| OnceLock::new()).collect());
        Self {
            split,
            transform,
            cache,
            seed,
            epoch: AtomicU64::new(0),
        }
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.split.len()
    }

    /// Whether the split is empty.
    pub fn is_empty(&self) -> bool {
        self.split.is_empty()
    }

    /// Sets the epoch that seeds random crops and flips.
    pub fn set_epoch(&self, epoch: u64) {
        self.epoch.store(epoch, Ordering::Relaxed);
    }

    /// The decoded image `i` (read from its file). A missing file is reported with the list (and
    /// line) that named it.
    pub fn image(&self, i: usize) -> Result<Arc<Rgb8>, DataError> {
        let s = &self.split.samples[i];
        if let Some(problem) = not_a_file(&s.path) {
            return Err(DataError::MissingImage {
                path: s.path.clone(),
                problem,
                list: self.split.source.clone(),
                line: s.line,
            });
        }
        decode(&s.path).map(Arc::new)
    }

    /// Image `i` ready for the random part of the recipe (from the cache when possible).
    fn prepared(&self, i: usize) -> Result<Arc<Cached>, DataError> {
        let load = || -> Result<Arc<Cached>, DataError> {
            let img = Arc::unwrap_or_clone(self.image(i)?);
            Ok(Arc::new(Cached::new(img, &self.transform)))
        };
        match &self.cache {
            Some(cache) => {
                if let Some(c) = cache[i].get() {
                    return Ok(c.clone());
                }
                let c = load()?;
                Ok(cache[i].get_or_init(|| c).clone())
            }
            None => load(),
        }
    }

    /// Bytes of pixels the cache holds now.
    pub fn cached_bytes(&self) -> usize {
        self.cache
            .iter()
            .flatten()
            .filter_map(|c| c.get().map(|c| c.bytes()))
            .sum()
    }

    /// Decodes every image in parallel (filling the cache); the first error is returned.
    pub fn preload(&self) -> Result<(), DataError> {
        (0..self.len())
            .into_par_iter()
            .try_for_each(|i| self.prepared(i).map(|_| ()))
    }

    /// Image `i` transformed, with the random crop and flip of the epoch set by
    /// [`Self::set_epoch`].
    pub fn item(&self, i: usize) -> Result<ImageItem, DataError> {
        self.item_at(i, self.epoch.load(Ordering::Relaxed))
    }

    /// Image `i` transformed with the random crop and flip of `epoch` (seeded by the set's seed,
    /// the epoch and the index, whatever thread computes it).
    pub fn item_at(&self, i: usize, epoch: u64) -> Result<ImageItem, DataError> {
        let mut rng =
            SplitMix64(self.seed ^ epoch.wrapping_mul(0x9E37_79B9) ^ (i as u64).wrapping_mul(0x85EB_CA6B));
        let pixels = if self.cache.is_none() {
            self.transform.apply(self.image(i)?.as_ref(), &mut rng)
        } else {
            match self.prepared(i)?.as_ref() {
                Cached::Original(img) => self.transform.apply(img, &mut rng),
                Cached::Resized(r) => self.transform.finish(r, &mut rng),
            }
        };
        Ok(ImageItem {
            pixels,
            label: self.split.samples[i].label,
        })
    }

    /// Items `indices` of `epoch`, decoded and transformed in parallel, in order.
    pub fn items(&self, indices: &[usize], epoch: u64) -> Result<Vec<ImageItem>, DataError> {
        indices.par_iter().map(|&i| self.item_at(i, epoch)).collect()
    }
}

impl Dataset<ImageItem> for ImageSet {
    /// The transformed item; `None` past the end. Call [`ImageSet::preload`] (or `vapt data verify`)
    /// first: an unreadable image here is reported on stderr and yields `None`.
    fn get(&self, index: usize) -> Option<ImageItem> {
        if index >= self.len() {
            return None;
        }
        match self.item(index) {
            Ok(item) => Some(item),
            Err(e) => {
                eprintln!("vapt-data: {e}");
                None
            }
        }
    }

    fn len(&self) -> usize {
        self.split.len()
    }
}

/// A batch on a device.
#[derive(Debug, Clone)]
pub struct ImageBatch<B: Backend> {
    /// `[B, 3, S, S]`.
    pub images: Tensor<B, 4>,
    /// `[B]` class indices.
    pub targets: Tensor<B, 1, Int>,
}

/// Builds [`ImageBatch`]es of `size × size` images on the requested device.
#[derive(Debug, Clone, Copy)]
pub struct ImageBatcher {
    /// Image side.
    pub size: usize,
}

impl<B: Backend> Batcher<B, ImageItem, ImageBatch<B>> for ImageBatcher {
    fn batch(&self, items: Vec<ImageItem>, device: &B::Device) -> ImageBatch<B> {
        make_batch(&items, self.size, device)
    }
}

/// Stacks items into tensors on `device`.
pub fn make_batch<B: Backend>(items: &[ImageItem], size: usize, device: &B::Device) -> ImageBatch<B> {
    let n = items.len();
    let mut pixels = Vec::with_capacity(n * 3 * size * size);
    for it in items {
        pixels.extend_from_slice(&it.pixels);
    }
    let labels: Vec<i64> = items.iter().map(|it| it.label as i64).collect();
    ImageBatch {
        images: Tensor::from_data(TensorData::new(pixels, [n, 3, size, size]), device),
        targets: Tensor::from_data(TensorData::new(labels, [n]), device),
    }
}
