//! Safetensors files: reading any float (or small integer) safetensors into a [`TensorMap`], and
//! writing one deterministically and atomically.

use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};

use super::tensor::{RawTensor, TensorMap};
use super::LoadError;

/// Parses a safetensors file held in memory (F32/F64/F16/BF16 and I64/I32 are converted to f32).
pub fn parse_safetensors(path: &Path, bytes: &[u8]) -> Result<TensorMap, LoadError> {
    let format = |message: String| LoadError::Format {
        path: path.to_path_buf(),
        message,
    };
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| format(format!("not a valid safetensors (or npz) file: {e}")))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| format(format!("bad safetensors header: {e}")))?;
    let mut map = TensorMap::new(path);
    if let Some(m) = meta.metadata() {
        map.metadata = m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    }
    for (name, view) in st.tensors() {
        let data = view_to_f32(&view).map_err(|message| LoadError::Entry {
            path: path.to_path_buf(),
            key: name.clone(),
            message,
        })?;
        map.insert(name, RawTensor::new(view.shape().to_vec(), data));
    }
    Ok(map)
}

fn view_to_f32(view: &TensorView<'_>) -> Result<Vec<f32>, String> {
    let b = view.data();
    let v = match view.dtype() {
        Dtype::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F64 => b
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        Dtype::BF16 => b
            .chunks_exact(2)
            .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
            .collect(),
        Dtype::F16 => b
            .chunks_exact(2)
            .map(|c| super::npz::f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
        // Integer tensors (labels, indices in test fixtures) are converted; exact below 2^24.
        Dtype::I64 => b
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        Dtype::I32 => b
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
            .collect(),
        other => {
            return Err(format!(
                "dtype {other:?} is not supported (expected a float type)"
            ))
        }
    };
    Ok(v)
}

/// Writes `map` (float32) with its metadata as safetensors. The bytes depend only on the
/// content (tensors in name order, metadata sorted), so equal models give identical files. The
/// write is atomic and durable: a temporary file in the same directory, flushed to disk, is
/// renamed over `path`.
pub fn write_safetensors(path: &Path, map: &TensorMap) -> Result<(), LoadError> {
    let bytes = safetensors_bytes(path, map)?;
    vapt_files::write_atomic(path, &bytes).map_err(|e| LoadError::Io {
        path: e.path,
        source: e.source,
    })
}

/// The safetensors bytes of `map` (see [`write_safetensors`]); `path` names the file in errors.
pub fn safetensors_bytes(path: &Path, map: &TensorMap) -> Result<Vec<u8>, LoadError> {
    let mut header = serde_json::Map::new();
    if !map.metadata.is_empty() {
        let meta: serde_json::Map<String, serde_json::Value> = map
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        header.insert("__metadata__".into(), serde_json::Value::Object(meta));
    }
    let mut offset = 0usize;
    for (k, t) in &map.tensors {
        if t.data.len() != t.shape.iter().product::<usize>() {
            return Err(LoadError::Format {
                path: path.to_path_buf(),
                message: format!(
                    "cannot serialise `{k}`: {} values for shape {:?}",
                    t.data.len(),
                    t.shape
                ),
            });
        }
        let end = offset + 4 * t.data.len();
        header.insert(
            k.clone(),
            serde_json::json!({"dtype": "F32", "shape": t.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut json =
        serde_json::to_string(&serde_json::Value::Object(header)).map_err(|e| LoadError::Format {
            path: path.to_path_buf(),
            message: format!("cannot write safetensors header: {e}"),
        })?;
    while json.len() % 8 != 0 {
        json.push(' ');
    }
    let mut bytes = Vec::with_capacity(8 + json.len() + offset);
    bytes.extend_from_slice(&(json.len() as u64).to_le_bytes());
    bytes.extend_from_slice(json.as_bytes());
    for t in map.tensors.values() {
        for v in &t.data {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
    }
    Ok(bytes)
}
