//! PyTorch checkpoints (`.pth`, `.pth.tar`): torch's zip container (≥ 1.6), the legacy format,
//! tar and plain pickles, read with burn-store's reader.
//!
//! The state dict may sit at the top level or under `state_dict` (MoCo v3, most training scripts)
//! or `model` (MAE, DeiT); DistributedDataParallel's `module.` prefix is stripped, and so is MoCo
//! v3's `base_encoder.` (its momentum encoder and predictor are not the backbone). Every float
//! type (f16, bf16, f64 too) becomes f32. Whatever else the file holds (optimizer state, epoch
//! counters, momentum encoders) is listed in [`TensorMap::other_entries`], never loaded.
//!
//! How the file was laid out is kept in the metadata under [`META_CONTAINER`] and [`META_PREFIX`]:
//! the backbone kind is read off them (MoCo v3's `state_dict` of `module.` keys, MAE's `model`
//! without a head).

use std::path::Path;

use burn_store::pytorch::PytorchReader;

use super::tensor::{RawTensor, TensorMap};
use super::torch_pickle::{stored_tensors, StoredTensor};
use super::LoadError;

/// Metadata key: the top-level entry holding the state dict (`state_dict`, `model`, or empty).
pub const META_CONTAINER: &str = "torch.container";
/// Metadata key: the key prefix stripped from the state dict (`module.`, `module.base_encoder.`).
pub const META_PREFIX: &str = "torch.prefix";

/// Top-level entries that hold a state dict, in the order they are looked for.
const CONTAINERS: [&str; 2] = ["state_dict", "model"];
/// Prefixes stripped from state-dict keys, outermost first: DistributedDataParallel's wrapper,
/// then MoCo v3's encoder inside its pre-training model.
const PREFIXES: [&str; 2] = ["module.", "base_encoder."];

/// Whether `bytes` (a file's start) look like a PyTorch checkpoint rather than an npz or
/// safetensors file: a zip holding a `data.pkl`, a pickle, or a tar archive.
pub fn is_pth(bytes: &[u8]) -> bool {
    // PROTO 2..=5 (torch writes 2; the legacy format starts with it too).
    let pickle = bytes.first() == Some(&0x80) && bytes.get(1).is_some_and(|v| (2..=5).contains(v));
    let tar = bytes.get(257..262) == Some(b"ustar".as_slice());
    let zip_with_pickle = bytes.starts_with(b"PK")
        && zip::ZipArchive::new(std::io::Cursor::new(bytes))
            .map(|mut z| (0..z.len()).any(|i| z.by_index(i).is_ok_and(|e| e.name().ends_with("data.pkl"))))
            .unwrap_or(false);
    pickle || tar || zip_with_pickle
}

/// Reads the checkpoint at `path`. A file the reader cannot parse (not a checkpoint, truncated)
/// is an error naming the file; a panic inside the reader (while parsing the pickle or reading a
/// storage) is caught and reported the same way.
pub fn parse_pth(path: &Path, bytes: &[u8]) -> Result<TensorMap, LoadError> {
    let largest = largest_storage(path, bytes)?;
    std::panic::catch_unwind(|| read_state_dict(path, largest)).unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Err(LoadError::Format {
            path: path.to_path_buf(),
            message: format!("not a readable PyTorch checkpoint (the reader failed: {why})"),
        })
    })
}

/// The most bytes one tensor of the file (its content `bytes`) can hold: the largest storage
/// entry of a zip checkpoint — every entry's claimed size and every length in its pickle checked
/// against the file first, as the reader trusts them, and every tensor its `data.pkl` rebuilds
/// against its own storage entry ([`check_storage`], [`check_view`]) — or the file's length for
/// a plain or legacy pickle (its pickles and tensors checked the same way, each tensor against
/// the element count its storage's id claims).
fn largest_storage(path: &Path, bytes: &[u8]) -> Result<u64, LoadError> {
    let format = |message: String| LoadError::Format {
        path: path.to_path_buf(),
        message,
    };
    let damaged = |m: String| format(format!("{m}: the file is damaged"));
    let refuse = |t: &StoredTensor, message: String| LoadError::Entry {
        path: path.to_path_buf(),
        key: t
            .name
            .clone()
            .unwrap_or_else(|| format!("(storage {})", t.storage)),
        message,
    };
    // The reader takes a file as a zip whenever its zip crate opens one (data before the archive
    // included), so the same question decides here; a zip this check cannot open is refused.
    let opens = zip_burn_store::ZipArchive::new(std::io::Cursor::new(bytes)).is_ok();
    if !opens && !bytes.starts_with(b"PK") {
        // A tar archive's members are not walked (its header is no pickle).
        if bytes.get(257..262) != Some(b"ustar".as_slice()) {
            for pickle in super::pickle_check::check_pickles(bytes).map_err(damaged)? {
                // The storages follow the pickles unnamed: each tensor is checked against the
                // element count its storage's id claims.
                for t in stored_tensors(pickle).unwrap_or_default() {
                    check_view(&t, &format!("storage {}", t.storage)).map_err(|m| refuse(&t, m))?;
                }
            }
        }
        return Ok(bytes.len() as u64);
    }
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| format(format!("not a readable PyTorch checkpoint (zip): {e}")))?;
    let mut largest = 0;
    let mut sizes = std::collections::HashMap::new();
    let mut pickles = Vec::new();
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .map_err(|e| format(format!("cannot read zip entry #{i}: {e}")))?;
        super::npz::entry_fits(&entry, bytes.len()).map_err(damaged)?;
        if entry.name().ends_with(".pkl") {
            let mut pickle = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut pickle)
                .map_err(|e| format(format!("cannot read `{}`: {e}", entry.name())))?;
            super::pickle_check::check_pickle(&pickle)
                .map_err(|m| damaged(format!("`{}`: {m}", entry.name())))?;
            if let Some(dir) = entry.name().strip_suffix("data.pkl") {
                pickles.push((dir.to_string(), pickle));
            }
        }
        if entry.name().contains("/data/") || entry.name().starts_with("data/") {
            largest = largest.max(entry.size());
        }
        sizes.insert(entry.name().to_string(), entry.size());
    }
    for (dir, pickle) in &pickles {
        for t in stored_tensors(pickle).unwrap_or_default() {
            let entry = format!("{dir}data/{}", t.storage);
            check_storage(&t, &entry, sizes.get(&entry).copied())
                .and_then(|()| check_view(&t, &format!("`{entry}`")))
                .map_err(|m| refuse(&t, m))?;
        }
    }
    Ok(largest)
}

/// Checks the storage entry of one tensor of a zip checkpoint (`size` bytes, `None` when the file
/// has no such entry) against the element count the pickle gives it: the reader would read a
/// missing storage as zeros and pad a short one with zeros.
fn check_storage(t: &StoredTensor, entry: &str, size: Option<u64>) -> Result<(), String> {
    let Some(element) = t.element_size() else {
        return Ok(()); // a type the reader refuses by itself
    };
    let size = size.ok_or_else(|| format!("its storage `{entry}` is missing: the file is damaged"))?;
    if t.storage_numel.checked_mul(element).is_none_or(|n| n > size) {
        return Err(format!(
            "its storage `{entry}` holds {size} bytes, but the checkpoint says {} elements of \
             {element} bytes: the file is damaged",
            t.storage_numel
        ));
    }
    Ok(())
}

/// Checks that one tensor lies inside its `storage` (as the pickle sizes it) and is row-major:
/// the reader reads `offset..offset + elements` whatever the strides.
fn check_view(t: &StoredTensor, storage: &str) -> Result<(), String> {
    if t.end().is_none_or(|end| end > t.storage_numel) {
        return Err(format!(
            "shape {:?} at offset {} reaches past the {} elements of its {storage}: the file is \
             damaged",
            t.shape, t.offset, t.storage_numel
        ));
    }
    if !t.is_contiguous() {
        return Err(format!(
            "stored as a strided view (shape {:?}, strides {:?}), which vapt cannot read; save \
             the state dict with every tensor made `.contiguous()`",
            t.shape, t.stride
        ));
    }
    Ok(())
}

fn read_state_dict(path: &Path, largest: u64) -> Result<TensorMap, LoadError> {
    let format = |message: String| LoadError::Format {
        path: path.to_path_buf(),
        message,
    };
    let reader =
        PytorchReader::new(path).map_err(|e| format(format!("not a readable PyTorch checkpoint: {e}")))?;
    let tensors = reader.into_tensors();
    let keys: Vec<&String> = tensors.keys().collect();
    let container = CONTAINERS
        .iter()
        .find(|c| keys.iter().any(|k| k.starts_with(&format!("{c}."))))
        .map(|c| format!("{c}."))
        .unwrap_or_default();
    let in_dict: Vec<&String> = keys
        .iter()
        .copied()
        .filter(|k| k.starts_with(&container))
        .collect();
    let mut prefix = String::new();
    for p in PREFIXES {
        let candidate = format!("{prefix}{p}");
        let under = |k: &&String| k[container.len()..].starts_with(&candidate);
        // A prefix counts when it covers the backbone's keys (most of the dict).
        if in_dict.iter().filter(|k| under(k)).count() * 2 > in_dict.len() {
            prefix = candidate;
        }
    }
    let mut map = TensorMap::new(path);
    map.metadata
        .insert(META_CONTAINER.into(), container.trim_end_matches('.').into());
    map.metadata.insert(META_PREFIX.into(), prefix.clone());
    let strip = format!("{container}{prefix}");
    let mut sorted: Vec<(String, burn_store::TensorSnapshot)> = tensors.into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, snapshot) in sorted {
        let Some(name) = key.strip_prefix(&strip) else {
            map.other_entries.push(key);
            continue;
        };
        // The shape is the pickle's claim: it must fit in a storage before anything is allocated
        // (the reader would allocate the claim and pad a short storage with zeros).
        let claimed = snapshot
            .shape
            .as_slice()
            .iter()
            .try_fold(snapshot.dtype.size() as u64, |n, &d| n.checked_mul(d as u64));
        if claimed.is_none_or(|n| n > largest) {
            return Err(LoadError::Entry {
                path: path.to_path_buf(),
                key: key.clone(),
                message: format!(
                    "shape {:?} of {:?} needs more bytes than the file's largest storage ({largest}): \
                     the file is damaged",
                    snapshot.shape.as_slice(),
                    snapshot.dtype
                ),
            });
        }
        let data = snapshot
            .to_data()
            .map_err(|e| LoadError::Entry {
                path: path.to_path_buf(),
                key: key.clone(),
                message: format!("cannot read the tensor: {e:?}"),
            })?
            .convert::<f32>();
        let shape = data.shape.to_vec();
        let values = data.into_vec::<f32>().map_err(|e| LoadError::Entry {
            path: path.to_path_buf(),
            key: key.clone(),
            message: format!("not a float tensor: {e:?}"),
        })?;
        map.insert(name, RawTensor::new(shape, values));
    }
    if map.tensors.is_empty() {
        return Err(format(format!(
            "a PyTorch file without a state dict of tensors (entries: {})",
            map.other_entries.join(", ")
        )));
    }
    Ok(map)
}
