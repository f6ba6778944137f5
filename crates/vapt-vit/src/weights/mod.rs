//! Pre-trained weight loading: one rename table per file layout, all meeting in the *native*
//! layout (the module paths of [`Vit`]).
//!
//! ```text
//!  Google npz (vit_jax) ──google::source──┐
//!  timm safetensors  ─────timm::source────┤
//!  HF Dinov2Model / ONNX ──hf::source─────┼─ rename::convert ─> native TensorMap ─> Vit::from_native
//!  vapt safetensors (native, identity) ───┘                      ^ posemb::resample when the grid differs
//!                                                                  (DINOv2: kept, resized per forward)
//! ```
//!
//! A layout is a function from each native key of [`native::native_params`] to its [`Source`] in
//! the file (key, file shape, [`Transform`]); the expected file keys and the conversion are derived
//! from it. Every loader validates the *whole* file before converting, and reports every missing,
//! unexpected and wrong-shaped key in one [`LoadError::Mismatch`] naming the file.

mod error;
pub mod google;
pub mod hf;
pub mod named;
pub mod native;
pub mod npz;
pub mod onnx;
mod pickle_check;
pub mod posemb;
pub mod pth;
pub mod rename;
mod safetensors_io;
mod tensor;
pub mod timm;
mod torch_pickle;

use std::path::Path;

use burn::tensor::backend::Backend;

use crate::config::{BackboneKind, VitConfig};
use crate::model::Vit;
use crate::pretrained::PretrainedCfg;
pub use error::{KeyMismatch, LoadError, ShapeMismatch};
pub use posemb::PosEmbResample;
pub use rename::{Rename, Source, Transform};
pub use safetensors_io::{parse_safetensors, safetensors_bytes, write_safetensors};
pub use tensor::{RawTensor, TensorMap};

/// The key layout of a weights file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Google `vit_jax` npz (`Transformer/encoderblock_{i}/...`).
    Google,
    /// timm safetensors (`blocks.{i}.attn.qkv.weight`, fused qkv, PyTorch `(out, in)` layout).
    Timm,
    /// vapt's own safetensors layout (module paths of [`Vit`], Burn `[in, out]` layout).
    Native,
    /// Hugging Face `Dinov2Model` (`encoder.layer.{i}.attention.attention.query.weight`, separate
    /// q/k/v, PyTorch `(out, in)` layout), in safetensors or an ONNX export's initializers.
    Hf,
}

impl Layout {
    /// Human-readable name used in messages.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Google => "google npz",
            Layout::Timm => "timm safetensors",
            Layout::Native => "vapt native safetensors",
            Layout::Hf => "hugging face dinov2",
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
        } else if has(hf::PATCH_WEIGHT) || map.tensors.keys().any(|k| k.starts_with("encoder.layer.")) {
            Ok(Layout::Hf)
        } else {
            let sample: Vec<&str> = map.tensors.keys().take(5).map(String::as_str).collect();
            Err(LoadError::Format {
                path: map.source.clone(),
                message: format!(
                    "not a ViT checkpoint vapt recognises (Google npz, timm, Hugging Face \
                     Dinov2Model or vapt safetensors); first keys: {sample:?}"
                ),
            })
        }
    }

    /// Where native tensor `key` (of shape `shape`) comes from in a file of this layout.
    pub fn source(self, key: &str, shape: &[usize], cfg: &VitConfig) -> Option<Source> {
        match self {
            Layout::Google => google::source(key, shape, cfg),
            Layout::Timm => timm::source(key, shape, cfg),
            Layout::Hf => hf::source(key, shape, cfg),
            Layout::Native => Some(Source::new(key, shape.to_vec(), Transform::Same)),
        }
    }

    /// File keys this layout may hold but vapt never loads for a backbone of `kind`
    /// (pre-training heads; MAE's final norm; the head `vapt merge` builds into a native file):
    /// listed, not fatal.
    pub fn ignored(self, key: &str, kind: BackboneKind) -> bool {
        match self {
            Layout::Google => google::ignored(key),
            Layout::Timm => timm::ignored(key, kind),
            Layout::Hf => hf::ignored(key),
            Layout::Native => key.starts_with("head."),
        }
    }

    /// The pre-training a file of this layout comes from, as its authors' loaders tell it apart:
    /// MoCo v3 saves a `state_dict` of DistributedDataParallel (`module.`) keys, MAE's released
    /// encoder is a `model` dict without a head; vapt's native files record it; the rest is
    /// supervised.
    pub fn kind(self, map: &TensorMap) -> BackboneKind {
        let meta = |k: &str| map.metadata.get(k).map(String::as_str).unwrap_or_default();
        let has = |prefix: &str| map.tensors.keys().any(|k| k.starts_with(prefix));
        match self {
            Layout::Native => native::infer(map).map(|c| c.kind).unwrap_or_default(),
            Layout::Google | Layout::Hf => BackboneKind::Supervised,
            Layout::Timm => match (meta(pth::META_CONTAINER), meta(pth::META_PREFIX)) {
                ("state_dict", prefix) if prefix.starts_with("module.") => BackboneKind::MocoV3,
                ("model", _) if !has("head.") && !has("fc_norm.") => BackboneKind::Mae,
                _ => BackboneKind::Supervised,
            },
        }
    }

    /// The rename table of this layout for `cfg`: every native tensor and its source.
    pub fn table(self, cfg: &VitConfig) -> Vec<Rename> {
        native::native_params(cfg)
            .into_iter()
            .filter_map(|(native, shape)| {
                let source = self.source(&native, &shape, cfg)?;
                Some(Rename {
                    native,
                    shape,
                    source,
                })
            })
            .collect()
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
    /// The pre-training kind, when the file cannot be trusted to tell (`None`: read it off the
    /// file, see [`Layout::kind`]).
    pub kind: Option<BackboneKind>,
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
            kind: None,
        })
    }
}

/// The container of a weights file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// NumPy `.npz` (a zip of `.npy` arrays).
    Npz,
    /// safetensors.
    Safetensors,
    /// A PyTorch checkpoint (`torch.save`: zip, legacy, tar or plain pickle).
    Pytorch,
    /// An ONNX model (protobuf): its initializers, named as the graph's nodes say.
    Onnx,
}

impl FileFormat {
    /// Tells the container from the file's bytes (anything unrecognised is left to the
    /// safetensors reader, which says what is wrong).
    pub fn detect(bytes: &[u8]) -> Self {
        // safetensors: an 8-byte little-endian header length, then the JSON header.
        let header = bytes
            .get(..8)
            .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]));
        let safetensors =
            bytes.get(8) == Some(&b'{') && header.is_some_and(|h| h > 0 && h <= bytes.len() as u64 - 8);
        if safetensors {
            FileFormat::Safetensors
        } else if pth::is_pth(bytes) {
            FileFormat::Pytorch
        } else if onnx::is_onnx(bytes) {
            FileFormat::Onnx
        } else if bytes.starts_with(b"PK") {
            FileFormat::Npz
        } else {
            FileFormat::Safetensors
        }
    }

    /// `npz`, `safetensors`, `pytorch checkpoint`.
    pub fn name(self) -> &'static str {
        match self {
            FileFormat::Npz => "npz",
            FileFormat::Safetensors => "safetensors",
            FileFormat::Pytorch => "pytorch checkpoint",
            FileFormat::Onnx => "onnx",
        }
    }
}

/// Reads a weights file into a [`TensorMap`], choosing the reader by content (a PyTorch
/// checkpoint, an npz, otherwise safetensors). Also returns the file's SHA-256 (hex).
pub fn read_any(path: &Path) -> Result<(TensorMap, String), LoadError> {
    read_file(path).map(|(map, sha, _)| (map, sha))
}

/// [`read_any`], also saying which container the file was.
pub fn read_file(path: &Path) -> Result<(TensorMap, String, FileFormat), LoadError> {
    let bytes = std::fs::read(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let sha = vapt_files::sha256_hex(&bytes);
    let (map, format) = parse_bytes(path, &bytes)?;
    Ok((map, sha, format))
}

/// Parses the bytes of a weights file (`path` names it in errors), choosing the reader by content.
pub fn parse_bytes(path: &Path, bytes: &[u8]) -> Result<(TensorMap, FileFormat), LoadError> {
    let format = FileFormat::detect(bytes);
    let map = match format {
        FileFormat::Pytorch => pth::parse_pth(path, bytes)?,
        FileFormat::Npz => npz::parse_npz(path, bytes)?,
        FileFormat::Onnx => onnx::parse_onnx(path, bytes)?,
        FileFormat::Safetensors => parse_safetensors(path, bytes)?,
    };
    Ok((map, format))
}

/// Converts a map in any layout to the native layout for `arch` (validating every key).
/// `arch.image_size` may differ from the file's grid: the position embedding is then resampled,
/// unless `arch` keeps the stored grid ([`VitConfig::pos_embed_grid`], DINOv2) and resizes it at
/// every forward pass.
pub fn to_native(
    map: TensorMap,
    layout: Layout,
    arch: &VitConfig,
    resample: PosEmbResample,
) -> Result<TensorMap, LoadError> {
    // A DINOv2-style config keeps the stored grid (resized at every forward pass); any other is
    // read at the file's grid and resampled once, here, when that grid is not the input's.
    let (file_arch, resample_to) = match arch.pos_embed_grid {
        Some(_) => (arch.clone(), None),
        None => {
            let grid = file_grid(&map, layout)?;
            let to = (grid != arch.grid()).then(|| arch.grid());
            (arch.clone().with_image_size(grid * arch.patch_size), to)
        }
    };
    let table = layout.table(&file_arch);
    let mut native = rename::convert(
        map,
        &table,
        |k| layout.ignored(k, arch.kind),
        layout.name(),
        &file_arch.display_name(),
    )?;
    if let Some(grid) = resample_to {
        let pos = native.take("pos_embed")?;
        native.insert("pos_embed", posemb::resample(&pos, grid, resample));
    }
    Ok(native)
}

/// Patch-grid side of the position embedding stored in the file.
fn file_grid(map: &TensorMap, layout: Layout) -> Result<usize, LoadError> {
    let key = match layout {
        Layout::Google => google::POS_EMBED,
        Layout::Hf => hf::POS_EMBED,
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
        Layout::Hf => hf::infer(map)?,
        Layout::Native => native::infer(map)?,
    };
    cfg.validate()?;
    Ok(cfg)
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
    let (map, sha, format) = read_file(path)?;
    let layout = Layout::detect(&map)?;
    let recorded = PretrainedCfg::from_metadata(&map.metadata);
    // The input size a file's recorded pretrained config names is the default (an imported
    // DINOv2 backbone stores a 518 px grid but was used at 224 px).
    let recorded_size = recorded.as_ref().map(|p| p.input_size);
    let mut pretrained = recorded.unwrap_or_default();
    let kind = opts.kind.unwrap_or_else(|| layout.kind(&map));
    let inferred = infer_arch(&map, layout).map(|c| c.with_kind(kind));
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
            ) && (matches!(layout, Layout::Timm | Layout::Hf) || req.heads == found.heads);
            if !same {
                return Err(LoadError::Architecture {
                    path: path.to_path_buf(),
                    found: found.display_name(),
                    requested: req.display_name(),
                });
            }
            // What a variant name cannot say (LayerScale, the stored grid) comes from the file.
            let mut arch = req.clone().with_kind(kind);
            arch.layer_scale = found.layer_scale;
            arch.pos_embed_grid = found.pos_embed_grid;
            arch
        }
        (Some(req), Err(_)) => req.clone().with_kind(kind),
        (None, Ok(found)) => match opts.image_size.or(recorded_size) {
            Some(size) => found.with_image_size(size),
            None => found,
        },
        (None, Err(e)) => return Err(e),
    };
    arch.validate()?;
    pretrained.source = match (format, layout) {
        (FileFormat::Pytorch, Layout::Timm) => "pytorch checkpoint (timm keys)".to_string(),
        (FileFormat::Onnx, _) => format!("onnx ({} names)", layout.name()),
        _ => layout.name().to_string(),
    };
    pretrained.ignored = map
        .tensors
        .keys()
        .filter(|k| layout.ignored(k, kind))
        .chain(&map.other_entries)
        .cloned()
        .collect();
    pretrained.file = Some(path.to_path_buf());
    pretrained.sha256 = Some(sha);
    pretrained.input_size = arch.image_size;
    let native = to_native(map, layout, &arch, opts.resample)?;
    let model = Vit::from_native(&arch, native, device)?;
    Ok((model, pretrained))
}
