//! Pre-trained weight loading: one module per file layout, all meeting in the *native* layout.
//!
//! ```text
//!  Google npz (vit_jax) ──google::to_native──┐
//!  timm safetensors  ─────timm::to_native────┼──> native TensorMap ──> Vit::from_native
//!  vapt safetensors (native) ────────────────┘        ^ posemb::resample when the grid differs
//! ```
//!
//! Every loader validates the *whole* file against the expected key set before converting, and
//! reports every missing, unexpected and wrong-shaped key in one [`LoadError::Mismatch`] naming
//! the file.

pub mod google;
pub mod native;
pub mod npz;
pub mod posemb;
pub mod timm;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use sha2::{Digest, Sha256};

use crate::config::{VariantError, VitConfig};
use crate::model::Vit;
use crate::pretrained::PretrainedCfg;
pub use posemb::PosEmbResample;

/// A dense float32 array in C (row-major) order.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// `shape.iter().product()` values, row-major.
    pub data: Vec<f32>,
}

impl RawTensor {
    /// Wraps data; the caller guarantees `data.len() == shape.iter().product()`.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Self { shape, data }
    }

    /// Reads a tensor back from its device as float32 (any float dtype is converted).
    pub fn from_tensor<B: Backend, const D: usize>(t: burn::tensor::Tensor<B, D>) -> Self {
        let data = t.into_data().convert::<f32>();
        let shape = data.shape.to_vec();
        // `convert::<f32>` guarantees the element type, so reading it back cannot fail.
        Self::new(shape, data.into_vec::<f32>().unwrap_or_default())
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// Same data with another shape of equal size.
    pub fn reshaped(mut self, shape: Vec<usize>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), self.data.len());
        self.shape = shape;
        self
    }

    /// Transpose of a 2-D array.
    pub fn transposed_2d(&self) -> Self {
        let (r, c) = (self.shape[0], self.shape[1]);
        let mut out = vec![0.0; r * c];
        for i in 0..r {
            for j in 0..c {
                out[j * r + i] = self.data[i * c + j];
            }
        }
        Self::new(vec![c, r], out)
    }

    /// General axis permutation: output axis `k` is input axis `axes[k]`.
    pub fn permuted(&self, axes: &[usize]) -> Self {
        let nd = self.shape.len();
        debug_assert_eq!(axes.len(), nd);
        let out_shape: Vec<usize> = axes.iter().map(|&a| self.shape[a]).collect();
        let mut in_strides = vec![1usize; nd];
        for k in (0..nd.saturating_sub(1)).rev() {
            in_strides[k] = in_strides[k + 1] * self.shape[k + 1];
        }
        let strides: Vec<usize> = axes.iter().map(|&a| in_strides[a]).collect();
        let mut out = Vec::with_capacity(self.numel());
        let mut idx = vec![0usize; nd];
        for _ in 0..self.numel() {
            let offset: usize = idx.iter().zip(&strides).map(|(i, s)| i * s).sum();
            out.push(self.data[offset]);
            for k in (0..nd).rev() {
                idx[k] += 1;
                if idx[k] < out_shape[k] {
                    break;
                }
                idx[k] = 0;
            }
        }
        Self::new(out_shape, out)
    }
}

/// Named arrays read from (or to be written to) one weights file.
#[derive(Debug, Clone, Default)]
pub struct TensorMap {
    /// The file these came from (used in error messages).
    pub source: PathBuf,
    /// Arrays by key.
    pub tensors: BTreeMap<String, RawTensor>,
    /// String metadata (safetensors header `__metadata__`).
    pub metadata: BTreeMap<String, String>,
}

impl TensorMap {
    /// An empty map attributed to `source`.
    pub fn new(source: impl Into<PathBuf>) -> Self {
        Self {
            source: source.into(),
            ..Self::default()
        }
    }

    /// Inserts an array.
    pub fn insert(&mut self, key: impl Into<String>, t: RawTensor) {
        self.tensors.insert(key.into(), t);
    }

    /// Shape of `key`, if present.
    pub fn shape(&self, key: &str) -> Option<&[usize]> {
        self.tensors.get(key).map(|t| t.shape.as_slice())
    }

    /// Takes `key` out of the map (the caller validated its presence).
    fn take(&mut self, key: &str) -> Result<RawTensor, LoadError> {
        self.tensors.remove(key).ok_or_else(|| {
            LoadError::Mismatch(Box::new(KeyMismatch {
                path: self.source.clone(),
                layout: "internal".into(),
                model: String::new(),
                missing: vec![(key.to_string(), vec![])],
                unexpected: vec![],
                wrong_shape: vec![],
            }))
        })
    }

    /// Compares the map against `expected` (key, shape) pairs; keys for which `ignore` returns true
    /// are neither required nor reported. Returns one error listing every problem.
    pub fn check(
        &self,
        expected: &[(String, Vec<usize>)],
        ignore: impl Fn(&str) -> bool,
        layout: &str,
        model: &str,
    ) -> Result<(), LoadError> {
        let mut missing = Vec::new();
        let mut wrong_shape = Vec::new();
        for (key, shape) in expected {
            match self.tensors.get(key) {
                None => missing.push((key.clone(), shape.clone())),
                Some(t) if &t.shape != shape => wrong_shape.push(ShapeMismatch {
                    key: key.clone(),
                    found: t.shape.clone(),
                    expected: shape.clone(),
                }),
                Some(_) => {}
            }
        }
        let known: std::collections::HashSet<&str> = expected.iter().map(|(k, _)| k.as_str()).collect();
        let unexpected: Vec<(String, Vec<usize>)> = self
            .tensors
            .iter()
            .filter(|(k, _)| !known.contains(k.as_str()) && !ignore(k))
            .map(|(k, t)| (k.clone(), t.shape.clone()))
            .collect();
        if missing.is_empty() && unexpected.is_empty() && wrong_shape.is_empty() {
            Ok(())
        } else {
            Err(LoadError::Mismatch(Box::new(KeyMismatch {
                path: self.source.clone(),
                layout: layout.to_string(),
                model: model.to_string(),
                missing,
                unexpected,
                wrong_shape,
            })))
        }
    }
}

/// A key whose array has the wrong shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeMismatch {
    /// Key in the file.
    pub key: String,
    /// Shape in the file.
    pub found: Vec<usize>,
    /// Shape the model needs.
    pub expected: Vec<usize>,
}

/// Errors from reading, validating or converting a weights file. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read or written.
    #[error("{path}: {source}", path = .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not in a format vapt reads (or is corrupt).
    #[error("{path}: {message}", path = .path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// One entry of the file is unreadable.
    #[error("{path}: entry `{key}`: {message}", path = .path.display())]
    Entry {
        /// The file.
        path: PathBuf,
        /// The entry (array) name.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The keys or shapes of the file do not match the model (every problem listed).
    #[error("{0}")]
    Mismatch(Box<KeyMismatch>),
    /// The architecture could not be read off the file.
    #[error("{path}: cannot infer the ViT architecture: {message}; pass an explicit --variant", path = .path.display())]
    Infer {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The architecture given by the caller contradicts the file.
    #[error("{path}: the file holds {found} but {requested} was requested", path = .path.display())]
    Architecture {
        /// The file.
        path: PathBuf,
        /// What the file holds.
        found: String,
        /// What the caller asked for.
        requested: String,
    },
    /// A bad variant or configuration.
    #[error(transparent)]
    Variant(#[from] VariantError),
}

fn fmt_shape(s: &[usize]) -> String {
    format!("{s:?}")
}

/// Every disagreement between a weights file and the model it was checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyMismatch {
    /// The file.
    pub path: PathBuf,
    /// Layout the file was read as (e.g. `google npz`).
    pub layout: String,
    /// The model it was checked against.
    pub model: String,
    /// Keys the model needs that the file lacks, with the expected shape.
    pub missing: Vec<(String, Vec<usize>)>,
    /// Keys in the file the model does not use, with their shape.
    pub unexpected: Vec<(String, Vec<usize>)>,
    /// Keys present with the wrong shape.
    pub wrong_shape: Vec<ShapeMismatch>,
}

impl fmt::Display for KeyMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: the weights ({} layout) do not match {}: {} missing, {} unexpected, {} with a wrong shape",
            self.path.display(),
            self.layout,
            self.model,
            self.missing.len(),
            self.unexpected.len(),
            self.wrong_shape.len()
        )?;
        for (k, shape) in &self.missing {
            write!(f, "\n  missing:     {k} (expected shape {})", fmt_shape(shape))?;
        }
        for (k, shape) in &self.unexpected {
            write!(f, "\n  unexpected:  {k} (shape {})", fmt_shape(shape))?;
        }
        for m in &self.wrong_shape {
            write!(
                f,
                "\n  wrong shape: {} is {}, expected {}",
                m.key,
                fmt_shape(&m.found),
                fmt_shape(&m.expected)
            )?;
        }
        Ok(())
    }
}

/// The key layout of a weights file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Google `vit_jax` npz (`Transformer/encoderblock_{i}/...`).
    Google,
    /// timm safetensors (`blocks.{i}.attn.qkv.weight`, fused qkv, PyTorch `(out, in)` layout).
    Timm,
    /// vapt's own safetensors layout (module paths of [`Vit`], Burn `[in, out]` layout).
    Native,
}

impl Layout {
    /// Human-readable name used in messages.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Google => "google npz",
            Layout::Timm => "timm safetensors",
            Layout::Native => "vapt native safetensors",
        }
    }

    /// Guesses the layout from the keys.
    pub fn detect(map: &TensorMap) -> Result<Self, LoadError> {
        let has = |k: &str| map.tensors.contains_key(k);
        if has("embedding/kernel") || map.tensors.keys().any(|k| k.starts_with("Transformer/")) {
            Ok(Layout::Google)
        } else if map.tensors.keys().any(|k| k.contains(".attn.qkv.")) || has("patch_embed.proj.weight") {
            Ok(Layout::Timm)
        } else if has("patch_embed.weight") || map.tensors.keys().any(|k| k.contains(".attn.query.")) {
            Ok(Layout::Native)
        } else {
            let sample: Vec<&str> = map.tensors.keys().take(5).map(String::as_str).collect();
            Err(LoadError::Format {
                path: map.source.clone(),
                message: format!(
                    "not a ViT checkpoint vapt recognises (Google npz, timm or vapt safetensors); \
                     first keys: {sample:?}"
                ),
            })
        }
    }
}

/// Options for [`load_pretrained`].
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Architecture to check against; `None` infers it from the file (`--variant auto`).
    /// Its `image_size` decides the patch grid: the position embedding is resampled when the file's
    /// grid differs.
    pub arch: Option<VitConfig>,
    /// Input size when the architecture is inferred (default: the file's grid × patch).
    pub image_size: Option<usize>,
    /// Resampling convention for the position embedding.
    pub resample: PosEmbResample,
}

impl LoadOptions {
    /// Options from the command-line spelling: `variant` `auto` (infer from the file), a variant
    /// (`B/16`) or explicit dims; `image_size` applies to both.
    pub fn from_variant(
        variant: &str,
        image_size: Option<usize>,
        resample: PosEmbResample,
    ) -> Result<Self, crate::VariantError> {
        let arch = if variant.eq_ignore_ascii_case("auto") {
            None
        } else {
            let mut cfg = VitConfig::from_variant(variant)?;
            if let Some(size) = image_size {
                cfg = cfg.with_image_size(size);
            }
            Some(cfg)
        };
        Ok(Self {
            arch,
            image_size,
            resample,
        })
    }
}

/// Reads a weights file into a [`TensorMap`], choosing the reader by content (zip → npz,
/// otherwise safetensors). Also returns the file's SHA-256 (hex).
pub fn read_any(path: &Path) -> Result<(TensorMap, String), LoadError> {
    let bytes = std::fs::read(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let sha = hex_sha256(&bytes);
    let map = if bytes.starts_with(b"PK") {
        npz::parse_npz(path, &bytes)?
    } else {
        native::parse_safetensors(path, &bytes)?
    };
    Ok((map, sha))
}

/// SHA-256 of a byte slice, lower-case hex.
pub fn hex_sha256(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Converts a map in any layout to the native layout for `arch` (validating every key).
/// `arch.image_size` may differ from the file's grid: the position embedding is then resampled.
pub fn to_native(
    map: TensorMap,
    layout: Layout,
    arch: &VitConfig,
    resample: PosEmbResample,
) -> Result<TensorMap, LoadError> {
    let file_grid = file_grid(&map, layout)?;
    let file_arch = arch.clone().with_image_size(file_grid * arch.patch_size);
    let mut native = match layout {
        Layout::Google => google::to_native(map, &file_arch)?,
        Layout::Timm => timm::to_native(map, &file_arch)?,
        Layout::Native => {
            let expected = native::expected_params(&file_arch);
            map.check(&expected, |_| false, layout.name(), &file_arch.display_name())?;
            map
        }
    };
    if file_grid != arch.grid() {
        let pos = native.take("pos_embed")?;
        native.insert("pos_embed", posemb::resample(&pos, arch.grid(), resample));
    }
    Ok(native)
}

/// Patch-grid side of the position embedding stored in the file.
fn file_grid(map: &TensorMap, layout: Layout) -> Result<usize, LoadError> {
    let key = match layout {
        Layout::Google => google::POS_EMBED,
        Layout::Timm | Layout::Native => "pos_embed",
    };
    let shape = map.shape(key).ok_or_else(|| LoadError::Infer {
        path: map.source.clone(),
        message: format!("no position embedding `{key}`"),
    })?;
    let rows = match shape {
        [1, rows, _] => *rows,
        _ => {
            return Err(LoadError::Infer {
                path: map.source.clone(),
                message: format!("`{key}` has shape {shape:?}, expected [1, 1+N, D]"),
            })
        }
    };
    let n = rows.saturating_sub(1);
    let g = (n as f64).sqrt().round() as usize;
    if g * g != n || g == 0 {
        return Err(LoadError::Infer {
            path: map.source.clone(),
            message: format!("`{key}` has {n} patch rows, not a square grid"),
        });
    }
    Ok(g)
}

/// Infers the architecture stored in `map` (image size = grid × patch, no head).
pub fn infer_arch(map: &TensorMap, layout: Layout) -> Result<VitConfig, LoadError> {
    let cfg = match layout {
        Layout::Google => google::infer(map)?,
        Layout::Timm => timm::infer(map)?,
        Layout::Native => native::infer(map)?,
    };
    cfg.validate()?;
    Ok(cfg)
}

/// Heads for a width when the file cannot tell (timm fuses q/k/v): the standard ViT sizes, else
/// head width 64.
pub(crate) fn default_heads(hidden: usize) -> Option<usize> {
    match hidden {
        192 => Some(3),
        384 => Some(6),
        768 => Some(12),
        1024 | 1280 => Some(16),
        d if d % 64 == 0 => Some(d / 64),
        _ => None,
    }
}

/// Loads a pre-trained backbone from any supported file.
///
/// Returns the model (with `arch.num_classes` from `opts.arch`, if given, else no head) and the
/// pretrained config (source, SHA-256, input size, mean/std).
pub fn load_pretrained<B: Backend>(
    path: &Path,
    opts: &LoadOptions,
    device: &B::Device,
) -> Result<(Vit<B>, PretrainedCfg), LoadError> {
    let (map, sha) = read_any(path)?;
    let layout = Layout::detect(&map)?;
    let inferred = infer_arch(&map, layout);
    let arch = match (&opts.arch, inferred) {
        (Some(req), Ok(found)) => {
            let same = (
                req.hidden,
                req.depth,
                req.mlp_dim,
                req.patch_size,
                req.in_channels,
            ) == (
                found.hidden,
                found.depth,
                found.mlp_dim,
                found.patch_size,
                found.in_channels,
            ) && (layout == Layout::Timm || req.heads == found.heads);
            if !same {
                return Err(LoadError::Architecture {
                    path: path.to_path_buf(),
                    found: found.display_name(),
                    requested: req.display_name(),
                });
            }
            req.clone()
        }
        (Some(req), Err(_)) => req.clone(),
        (None, Ok(found)) => match opts.image_size {
            Some(size) => found.with_image_size(size),
            None => found,
        },
        (None, Err(e)) => return Err(e),
    };
    arch.validate()?;
    let mut pretrained = PretrainedCfg::from_metadata(&map.metadata).unwrap_or_default();
    pretrained.source = layout.name().to_string();
    pretrained.file = Some(path.to_path_buf());
    pretrained.sha256 = Some(sha);
    pretrained.input_size = arch.image_size;
    let native = to_native(map, layout, &arch, opts.resample)?;
    let model = Vit::from_native(&arch, native, device)?;
    Ok((model, pretrained))
}
