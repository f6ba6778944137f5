//! The in-memory form of a weights file: named float32 arrays ([`RawTensor`] in a [`TensorMap`])
//! and the one key check every loader uses.

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::tensor::backend::Backend;

use super::error::{KeyMismatch, LoadError, ShapeMismatch};

/// A dense float32 array in C (row-major) order.
#[derive(Debug, Clone, PartialEq, Default)]
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
    /// String metadata (safetensors header `__metadata__`; for PyTorch files, how the state dict
    /// was found).
    pub metadata: BTreeMap<String, String>,
    /// Entries of the file that are not weights (a checkpoint's optimizer state, a momentum
    /// encoder): listed, never loaded.
    pub other_entries: Vec<String>,
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
    pub(crate) fn take(&mut self, key: &str) -> Result<RawTensor, LoadError> {
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
