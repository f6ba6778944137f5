//! Checkpoint layouts as rename tables: for every tensor of the native layout (the table in
//! [`super::native::native_params`]) a layout names the file key it comes from, that key's shape in
//! the file and the [`Transform`] between the two. The expected-key check and the conversion are
//! derived from that one table, for every layout alike.

use super::tensor::{RawTensor, TensorMap};
use super::LoadError;

/// How a native tensor is computed from the file tensor it comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transform {
    /// The same values in the same shape.
    Same,
    /// The same values (row-major) in the native shape, e.g. Google's `(D, H, hd)` query kernel as
    /// `(D, D)`.
    Reshape,
    /// A PyTorch `(out, in)` matrix as Burn's `[in, out]`.
    Transpose,
    /// Part `index` of `parts` equal row blocks of a fused `(parts·n, ..)` tensor (timm's `qkv`),
    /// transposed when it is a matrix.
    FusedPart {
        /// Which block (0-based).
        index: usize,
        /// How many blocks are fused.
        parts: usize,
    },
    /// A patch-embedding conv kernel stored HWIO `(p, p, C, D)` (JAX) as `[C·p·p, D]`.
    PatchHwio,
    /// A patch-embedding conv kernel stored OIHW `(D, C, p, p)` (PyTorch) as `[C·p·p, D]`.
    PatchOihw,
    /// Not in the file: every element is this constant (MAE's `fc_norm`, which the released
    /// pre-training checkpoint lacks and the authors' code leaves at its initial values).
    Fill(f32),
}

impl Transform {
    /// The native tensor of shape `native` from the file tensor `t`.
    pub fn apply(self, t: &RawTensor, native: &[usize]) -> RawTensor {
        match self {
            Transform::Same => t.clone(),
            Transform::Reshape => t.clone().reshaped(native.to_vec()),
            Transform::Transpose => t.transposed_2d(),
            Transform::FusedPart { index, parts } => {
                let rows = t.shape[0] / parts;
                let per_row: usize = t.shape[1..].iter().product();
                let block = t.data[index * rows * per_row..(index + 1) * rows * per_row].to_vec();
                let mut shape = t.shape.clone();
                shape[0] = rows;
                let part = RawTensor::new(shape, block);
                if part.shape.len() == 2 {
                    part.transposed_2d()
                } else {
                    part
                }
            }
            Transform::PatchHwio => {
                // (ky, kx, c, d) -> (c, ky, kx, d) -> [c·p·p, d]
                t.permuted(&[2, 0, 1, 3]).reshaped(native.to_vec())
            }
            Transform::PatchOihw => {
                let d = t.shape[0];
                t.clone().reshaped(vec![d, t.numel() / d.max(1)]).transposed_2d()
            }
            Transform::Fill(v) => RawTensor::new(native.to_vec(), vec![v; native.iter().product()]),
        }
    }
}

/// Where one native tensor comes from in a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    /// The file's key.
    pub key: String,
    /// Its shape in the file.
    pub shape: Vec<usize>,
    /// How the native tensor is made from it.
    pub transform: Transform,
}

impl Source {
    /// A source with the given key, file shape and transform.
    pub fn new(key: impl Into<String>, shape: Vec<usize>, transform: Transform) -> Self {
        Self {
            key: key.into(),
            shape,
            transform,
        }
    }

    /// A tensor that is not in the file: `value` everywhere.
    pub fn fill(value: f32) -> Self {
        Self::new("", Vec::new(), Transform::Fill(value))
    }

    /// Whether the tensor is read from the file.
    pub fn from_file(&self) -> bool {
        !matches!(self.transform, Transform::Fill(_))
    }
}

impl Transform {
    /// The file tensor (of shape `file`) that `apply` turns into `native`, for every transform
    /// that uses its whole file tensor; a [`Transform::FusedPart`] gives its block, which
    /// [`invert`] stacks with the others.
    fn unapply(self, native: &RawTensor, file: &[usize]) -> RawTensor {
        match self {
            Transform::Same | Transform::Reshape | Transform::Fill(_) => {
                native.clone().reshaped(file.to_vec())
            }
            Transform::Transpose => native.transposed_2d(),
            Transform::FusedPart { .. } if native.shape.len() == 2 => native.transposed_2d(),
            Transform::FusedPart { .. } => native.clone(),
            Transform::PatchHwio => {
                // [c·p·p, d] -> (c, ky, kx, d) -> (ky, kx, c, d)
                let [p, _, c, d] = file[..] else {
                    return native.clone();
                };
                native.clone().reshaped(vec![c, p, p, d]).permuted(&[1, 2, 0, 3])
            }
            Transform::PatchOihw => native.transposed_2d().reshaped(file.to_vec()),
        }
    }
}

/// The file tensors of `table`'s layout from a native map: what [`convert`] reads, rebuilt (fused
/// tensors stacked again). Used to write a backbone in another tool's layout (timm). Fails
/// naming the first native tensor `native` lacks.
pub fn invert(native: &TensorMap, table: &[Rename]) -> Result<TensorMap, LoadError> {
    let mut out = TensorMap::new(native.source.clone());
    let mut fused: std::collections::BTreeMap<&str, Vec<(usize, RawTensor)>> = Default::default();
    for r in table.iter().filter(|r| r.source.from_file()) {
        let t = native.tensors.get(&r.native).ok_or_else(|| LoadError::Format {
            path: native.source.clone(),
            message: format!("no tensor `{}` to write", r.native),
        })?;
        let file = r.source.transform.unapply(t, &r.source.shape);
        match r.source.transform {
            Transform::FusedPart { index, .. } => fused.entry(&r.source.key).or_default().push((index, file)),
            _ => out.insert(r.source.key.clone(), file),
        }
    }
    for (key, mut parts) in fused {
        parts.sort_by_key(|(i, _)| *i);
        let mut shape = parts[0].1.shape.clone();
        shape[0] *= parts.len();
        let data = parts.into_iter().flat_map(|(_, t)| t.data).collect();
        out.insert(key, RawTensor::new(shape, data));
    }
    Ok(out)
}

/// One row of a rename table: a native key and shape, and its source in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Rename {
    /// Native key (`blocks.0.attn.query.weight`).
    pub native: String,
    /// Native shape.
    pub shape: Vec<usize>,
    /// Where it comes from.
    pub source: Source,
}

/// The file keys (and shapes) a table reads, each once, in table order.
pub fn file_keys(table: &[Rename]) -> Vec<(String, Vec<usize>)> {
    let mut seen = std::collections::HashSet::new();
    table
        .iter()
        .filter(|r| r.source.from_file() && seen.insert(r.source.key.as_str()))
        .map(|r| (r.source.key.clone(), r.source.shape.clone()))
        .collect()
}

/// Converts `map` to the native layout with `table`, after checking every key and shape at once
/// (`ignored` file keys are neither required nor reported).
pub fn convert(
    mut map: TensorMap,
    table: &[Rename],
    ignored: impl Fn(&str) -> bool,
    layout: &str,
    model: &str,
) -> Result<TensorMap, LoadError> {
    map.check(&file_keys(table), ignored, layout, model)?;
    let mut uses: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for r in table.iter().filter(|r| r.source.from_file()) {
        *uses.entry(r.source.key.as_str()).or_default() += 1;
    }
    let mut out = TensorMap::new(map.source.clone());
    out.metadata = std::mem::take(&mut map.metadata);
    for r in table {
        if !r.source.from_file() {
            out.insert(
                r.native.clone(),
                r.source.transform.apply(&RawTensor::default(), &r.shape),
            );
            continue;
        }
        let left = uses.get_mut(r.source.key.as_str()).map(|n| {
            *n -= 1;
            *n
        });
        // A file tensor used once, unchanged, moves; shared or transformed ones are read in place.
        let t = if left == Some(0) && r.source.transform == Transform::Same {
            map.take(&r.source.key)?
        } else {
            let t = map.tensors.get(&r.source.key).ok_or_else(|| LoadError::Format {
                path: map.source.clone(),
                message: format!("`{}` vanished during conversion", r.source.key),
            })?;
            let t = r.source.transform.apply(t, &r.shape);
            if left == Some(0) {
                map.tensors.remove(&r.source.key);
            }
            t
        };
        out.insert(r.native.clone(), t);
    }
    Ok(out)
}
