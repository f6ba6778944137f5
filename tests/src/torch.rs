//! Writes PyTorch checkpoints the way `torch.save` does, for tests (no Python): the zip container
//! of torch ≥ 1.6 (`archive/data.pkl` + one raw file per storage) and the legacy stream of torch
//! ≤ 1.5 (five pickles, then the raw storages), with the state dict at the top level or under any
//! keys, f32 or f16 tensors.

use std::io::Write;
use std::path::Path;

use vapt_vit::weights::Layout;
use vapt_vit::{RawTensor, VitConfig};

/// A value of the pickled object: nested dicts of tensors and scalars.
#[derive(Debug, Clone)]
pub enum Value {
    /// A dict, in order.
    Dict(Vec<(String, Value)>),
    /// A tensor (shape, row-major values), stored as f32 or, with `half`, f16.
    Tensor {
        /// Dimensions.
        shape: Vec<usize>,
        /// Values.
        data: Vec<f32>,
        /// Stored as float16.
        half: bool,
        /// Strides over `data` (the storage), for a view; `None`: row-major.
        stride: Option<Vec<usize>>,
    },
    /// An integer (an epoch counter).
    Int(i64),
    /// A string (an architecture name).
    Str(String),
}

impl Value {
    /// An f32 tensor.
    pub fn tensor(shape: &[usize], data: Vec<f32>) -> Self {
        Value::Tensor {
            shape: shape.to_vec(),
            data,
            half: false,
            stride: None,
        }
    }

    /// An f32 view of `shape` with `stride` over the storage `data` (a transposed weight, say).
    pub fn view(shape: &[usize], stride: &[usize], data: Vec<f32>) -> Self {
        Value::Tensor {
            shape: shape.to_vec(),
            data,
            half: false,
            stride: Some(stride.to_vec()),
        }
    }

    /// A dict from `(key, value)` pairs.
    pub fn dict(items: impl IntoIterator<Item = (String, Value)>) -> Self {
        Value::Dict(items.into_iter().collect())
    }
}

/// Every tensor of a timm-layout backbone of `cfg` (no head), with deterministic values in
/// [−0.275, 0.275], in the order of vapt's key table.
pub fn timm_state_dict(cfg: &VitConfig) -> Vec<(String, RawTensor)> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for r in Layout::Timm.table(cfg) {
        if r.source.from_file() && seen.insert(r.source.key.clone()) {
            let n: usize = r.source.shape.iter().product();
            let seed = out.len();
            let data = (0..n)
                .map(|i| (((i * 7 + seed * 13) % 23) as f32 - 11.0) / 40.0)
                .collect();
            out.push((r.source.key.clone(), RawTensor::new(r.source.shape.clone(), data)));
        }
    }
    out
}

/// A state dict as a pickled dict of tensors, each key prefixed (`module.`), stored as f16 with
/// `half`.
pub fn tensors(sd: &[(String, RawTensor)], prefix: &str, half: bool) -> Value {
    Value::dict(sd.iter().map(|(k, t)| {
        let v = Value::Tensor {
            shape: t.shape.clone(),
            data: t.data.clone(),
            half,
            stride: None,
        };
        (format!("{prefix}{k}"), v)
    }))
}

/// The container `torch.save` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// torch ≥ 1.6: a zip archive.
    Zip,
    /// torch ≤ 1.5 (`_use_new_zipfile_serialization=False`).
    Legacy,
}

/// A protocol-2 pickle writer (the opcodes `torch.save` emits for a state dict).
#[derive(Default)]
struct Pickle {
    out: Vec<u8>,
    /// Raw bytes and element count of each storage, in key order ("0", "1", ...).
    storages: Vec<(Vec<u8>, usize)>,
}

impl Pickle {
    fn proto(&mut self) {
        self.out.extend_from_slice(&[0x80, 2]);
    }

    fn stop(&mut self) {
        self.out.push(b'.');
    }

    fn str(&mut self, s: &str) {
        self.out.push(b'X');
        self.out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.out.extend_from_slice(s.as_bytes());
    }

    fn int(&mut self, v: i64) {
        match u8::try_from(v) {
            Ok(b) => self.out.extend_from_slice(&[b'K', b]),
            Err(_) => {
                self.out.push(b'J');
                self.out.extend_from_slice(&(v as i32).to_le_bytes());
            }
        }
    }

    fn global(&mut self, module: &str, name: &str) {
        self.out.push(b'c');
        self.out
            .extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    }

    fn mark(&mut self) {
        self.out.push(b'(');
    }

    fn tuple(&mut self) {
        self.out.push(b't');
    }

    fn ints_tuple(&mut self, v: &[usize]) {
        self.mark();
        for &x in v {
            self.int(x as i64);
        }
        self.tuple();
    }

    fn value(&mut self, v: &Value) {
        match v {
            Value::Dict(items) => {
                self.out.push(b'}');
                if !items.is_empty() {
                    self.mark();
                    for (k, v) in items {
                        self.str(k);
                        self.value(v);
                    }
                    self.out.push(b'u');
                }
            }
            Value::Int(i) => self.int(*i),
            Value::Str(s) => self.str(s),
            Value::Tensor {
                shape,
                data,
                half,
                stride,
            } => {
                let key = self.storages.len().to_string();
                let bytes: Vec<u8> = if *half {
                    data.iter().flat_map(|&x| f32_to_f16(x).to_le_bytes()).collect()
                } else {
                    data.iter().flat_map(|x| x.to_le_bytes()).collect()
                };
                self.storages.push((bytes, data.len()));
                self.global("torch._utils", "_rebuild_tensor_v2");
                self.mark();
                // The storage, as a persistent id: ('storage', type, key, location, numel).
                self.mark();
                self.str("storage");
                self.global("torch", if *half { "HalfStorage" } else { "FloatStorage" });
                self.str(&key);
                self.str("cpu");
                self.int(data.len() as i64);
                self.tuple();
                self.out.push(b'Q');
                self.int(0);
                self.ints_tuple(shape);
                let row_major: Vec<usize> = (0..shape.len())
                    .map(|i| shape[i + 1..].iter().product())
                    .collect();
                self.ints_tuple(stride.as_ref().unwrap_or(&row_major));
                self.out.push(0x89); // requires_grad = False
                self.global("collections", "OrderedDict");
                self.out.push(b')');
                self.out.push(b'R');
                self.tuple();
                self.out.push(b'R');
            }
        }
    }
}

/// IEEE half precision of `x` (round to nearest; no subnormal care needed for test values).
fn f32_to_f16(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32 - 127 + 15;
    let mant = b & 0x7f_ffff;
    if exp <= 0 {
        return sign;
    }
    if exp >= 31 {
        return sign | 0x7c00;
    }
    let rounded = (mant + 0x1000) >> 13;
    sign | (((exp as u32) << 10) + rounded) as u16
}

/// Writes `value` to `path` as `torch.save` would, in `format`.
pub fn save(path: &Path, value: &Value, format: Format) {
    let mut p = Pickle::default();
    p.proto();
    p.value(value);
    p.stop();
    let mut file = std::fs::File::create(path).expect("create the checkpoint");
    match format {
        Format::Zip => {
            let mut zip = zip::ZipWriter::new(file);
            let opts =
                zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
            let mut put = |name: &str, bytes: &[u8]| {
                zip.start_file(format!("archive/{name}"), opts)
                    .expect("zip entry");
                zip.write_all(bytes).expect("zip write");
            };
            put("data.pkl", &p.out);
            put("byteorder", b"little");
            for (i, (bytes, _)) in p.storages.iter().enumerate() {
                put(&format!("data/{i}"), bytes);
            }
            put("version", b"3\n");
            zip.finish().expect("zip finish");
        }
        Format::Legacy => {
            let mut head = Pickle::default();
            // The magic number 0x1950a86a20f9469cfc6c as LONG1, the protocol version, system info.
            head.proto();
            head.out.extend_from_slice(&[0x8a, 0x0a]);
            head.out
                .extend_from_slice(&[0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19]);
            head.stop();
            head.proto();
            head.int(1001);
            head.stop();
            head.proto();
            head.value(&Value::dict([
                ("protocol_version".into(), Value::Int(1001)),
                ("little_endian".into(), Value::Int(1)),
            ]));
            head.stop();
            head.out.extend_from_slice(&p.out);
            // The storage keys, then each storage: its element count (8 bytes) and its bytes.
            head.proto();
            head.out.push(b']');
            head.mark();
            for i in 0..p.storages.len() {
                head.str(&i.to_string());
            }
            head.out.push(b'e');
            head.stop();
            for (bytes, elements) in &p.storages {
                head.out.extend_from_slice(&(*elements as u64).to_le_bytes());
                head.out.extend_from_slice(bytes);
            }
            file.write_all(&head.out).expect("write the checkpoint");
        }
    }
}
