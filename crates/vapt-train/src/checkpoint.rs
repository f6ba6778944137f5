//! Checkpoints that survive a kill: the trainable tensors, the optimiser state and the metric
//! history, written atomically (temporary file + rename) after every epoch.
//!
//! Parameter ids are renumbered in module order ([`renumber_params`]) so that the optimiser state,
//! keyed by id, means the same thing in a new process. Only trainable tensors are saved — for a
//! frozen ViT-B/16 that is a few hundred kilobytes, not the 344 MB backbone — and the buffers that
//! change while training (BatchNorm running statistics, `*.running_*`), by module path.

use std::path::Path;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Record, Recorder};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use vapt_vit::weights::{parse_safetensors, safetensors_bytes};
use vapt_vit::{named, RawTensor, TensorMap};

use crate::error::TrainError;
use crate::files::write_atomic;
use crate::run_dir::EpochRow;

/// The state file inside `checkpoint/`.
pub const STATE_FILE: &str = "state.safetensors";

struct Renumber {
    next: u64,
}

impl<B: Backend> ModuleMapper<B> for Renumber {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (_, tensor, mapper) = param.consume();
        let id = ParamId::from(self.next);
        self.next += 1;
        Param::from_mapped_value(id, tensor, mapper)
    }
}

/// Gives every float parameter the id `1, 2, 3, …` in module order, so that ids (and the
/// optimiser state keyed by them) are the same in every process building the same model.
pub fn renumber_params<B: Backend, M: Module<B>>(module: M) -> M {
    module.map(&mut Renumber { next: 1 })
}

fn key(id: ParamId) -> String {
    format!("param.{}", id.val())
}

/// Key prefix of a buffer in the state file (followed by its module path).
const BUFFER: &str = "buffer.";

/// The checkpoint key of the buffer at module path `path`, if it is one (running statistics).
fn buffer_key(path: &str) -> Option<String> {
    let leaf = path.rsplit('.').next().unwrap_or_default();
    leaf.starts_with("running_").then(|| format!("{BUFFER}{path}"))
}

struct Collect {
    map: TensorMap,
}

impl<B: Backend> ModuleVisitor<B> for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let t = param.val();
        if t.is_require_grad() {
            self.map.insert(key(param.id), RawTensor::from_tensor(t));
        }
    }
}

/// Trainable and total parameter counts of a module (trainable = requires a gradient); buffers
/// (running statistics) are not parameters.
pub fn count_params<B: Backend, M: Module<B>>(module: &M) -> (usize, usize) {
    let trainable: std::collections::HashSet<String> = named::trainable_paths(module).into_iter().collect();
    let mut count = (0, 0);
    for (path, shape) in named::shapes(module) {
        if buffer_key(&path).is_some() {
            continue;
        }
        let n: usize = shape.iter().product();
        count.1 += n;
        if trainable.contains(&path) {
            count.0 += n;
        }
    }
    count
}

/// The trainable tensors, keyed `param.<id>`.
pub fn trainable_tensors<B: Backend, M: Module<B>>(module: &M) -> TensorMap {
    let mut c = Collect {
        map: TensorMap::new("<trainable>"),
    };
    module.visit(&mut c);
    c.map
}

struct Restore<'a> {
    map: &'a TensorMap,
    problems: Vec<String>,
    restored: usize,
    trainable: usize,
}

impl<B: Backend> ModuleMapper<B> for Restore<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        if tensor.is_require_grad() {
            self.trainable += 1;
        }
        let Some(saved) = self.map.tensors.get(&key(id)) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let shape = tensor.dims();
        if saved.numel() != shape.iter().product::<usize>() {
            self.problems.push(format!(
                "{}: {} values saved, the model has shape {shape:?}",
                key(id),
                saved.numel()
            ));
            return Param::from_mapped_value(id, tensor, mapper);
        }
        self.restored += 1;
        let grad = tensor.is_require_grad();
        let value = Tensor::<B, D>::from_data(TensorData::new(saved.data.clone(), shape), &tensor.device())
            .set_require_grad(grad);
        Param::from_mapped_value(id, value, mapper)
    }
}

/// What a run is, as far as a checkpoint must match it to be resumed: the configuration (hash
/// of `config.json`'s content), the backbone file and the data manifest (SHA-256, where known).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Identity {
    /// SHA-256 of the run's configuration as JSON.
    pub config_sha256: String,
    /// SHA-256 of the backbone weights file.
    pub weights_sha256: Option<String>,
    /// SHA-256 of the data manifest.
    pub data_sha256: Option<String>,
}

impl Identity {
    const KEYS: [&'static str; 3] = ["config_sha256", "weights_sha256", "data_sha256"];

    fn values(&self) -> [String; 3] {
        let o = |v: &Option<String>| v.clone().unwrap_or_else(|| "none".into());
        [
            self.config_sha256.clone(),
            o(&self.weights_sha256),
            o(&self.data_sha256),
        ]
    }

    /// `weights`, `data`, `config`: what differs between `self` (the checkpoint's) and `now`.
    pub fn differences(&self, now: &Identity) -> Vec<(&'static str, String, String)> {
        let names = ["config", "weights", "data"];
        self.values()
            .into_iter()
            .zip(now.values())
            .zip(names)
            .filter(|((a, b), _)| a != b)
            .map(|((a, b), n)| (n, a, b))
            .collect()
    }
}

/// What a checkpoint holds besides tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointMeta {
    /// Epochs completed.
    pub epochs_done: usize,
    /// JSON of the run's metric history (opaque here).
    pub history: String,
    /// Wall seconds spent so far (summed over sessions).
    pub wall_seconds: f64,
    /// The run it belongs to.
    pub identity: Identity,
}

/// The previous checkpoint, kept so that a damaged newest one can fall back to it.
pub const PREVIOUS_FILE: &str = "state.prev.safetensors";

/// SHA-256 over the tensors (names, shapes, values) of a state map; its metadata (the sum
/// itself included) does not enter it. Fed in 64 KiB parts, not one copy of every tensor.
fn tensors_sha256(map: &TensorMap) -> String {
    let mut sum = vapt_files::Sha256Hex::default();
    let mut part = Vec::with_capacity(1 << 16);
    for (k, t) in &map.tensors {
        sum.update(k.as_bytes());
        for d in &t.shape {
            sum.update(&(*d as u64).to_le_bytes());
        }
        for values in t.data.chunks(1 << 14) {
            part.clear();
            part.extend(values.iter().flat_map(|v| v.to_le_bytes()));
            sum.update(&part);
        }
    }
    sum.finish()
}

/// Saves a checkpoint after `meta.epochs_done` epochs into `dir`: the optimiser state first
/// (`optim-<epoch>.bin`), then the trainable tensors and `meta` (`state.safetensors`, the commit
/// point; the one before it becomes `state.prev.safetensors`), then removes older optimiser
/// files. The state file carries checksums of its tensors and of the optimiser file, and the
/// run's identity; every write is atomic and durable. A kill at any moment leaves a consistent
/// newest or previous pair.
pub fn save<B: Backend, M: Module<B>, R: Record<B>>(
    dir: &Path,
    module: &M,
    optim: R,
    meta: &CheckpointMeta,
) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let optim_name = format!("optim-{}.bin", meta.epochs_done);
    let optim_path = dir.join(&optim_name);
    let bytes = BinBytesRecorder::<FullPrecisionSettings>::default()
        .record(optim, ())
        .map_err(|e| TrainError::Checkpoint {
            path: optim_path.clone(),
            message: e.to_string(),
        })?;
    write_atomic(&optim_path, &bytes)?;

    let mut map = trainable_tensors(module);
    for (k, t) in named::read(module, buffer_key).tensors {
        map.insert(k, t);
    }
    let state = dir.join(STATE_FILE);
    let file = StateMeta {
        meta: meta.clone(),
        optimizer: optim_name,
        optimizer_bytes: bytes.len(),
        optimizer_sha256: vapt_files::sha256_hex(&bytes),
    };
    let encoded = encode_state(&state, map, &file)?;
    if state.is_file() {
        let prev = dir.join(PREVIOUS_FILE);
        std::fs::rename(&state, &prev).map_err(|e| TrainError::io(&prev, e))?;
    }
    // The commit point of the checkpoint.
    write_atomic(&state, &encoded)?;

    // Keep the optimiser files of the newest and the previous state.
    let mut optims: Vec<(usize, std::path::PathBuf)> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().to_string();
                    let n = name.strip_prefix("optim-")?.strip_suffix(".bin")?.parse().ok()?;
                    Some((n, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    optims.sort();
    let keep = optims.len().saturating_sub(2);
    for (_, p) in optims.into_iter().take(keep) {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}

/// A checkpoint read back and verified.
pub struct Loaded<M, R> {
    /// The module with the checkpoint's tensors.
    pub module: M,
    /// The optimiser record.
    pub record: R,
    /// Epochs, history, identity.
    pub meta: CheckpointMeta,
    /// Set when the newest state was damaged and the previous one was used: why.
    pub fell_back: Option<String>,
}

/// Loads the checkpoint in `dir` (if any) into `module`, verifying it first: the state file's
/// tensor checksum, the optimiser file's size and checksum, the run identity (`expected`; a
/// field named in `allow_changed` — `weights`, `data` — may differ), the tensor names and
/// shapes. Burn's record decoder runs only on verified bytes, and a panic in it is an error. A
/// damaged newest state falls back to the previous one (said in `fell_back`); a checkpoint of
/// another run is refused. `Ok(None)` when there is no checkpoint.
pub fn load<B: Backend, M: Module<B>, R: Record<B>>(
    dir: &Path,
    module: M,
    device: &B::Device,
    expected: &Identity,
    allow_changed: &[String],
) -> Result<Option<Loaded<M, R>>, TrainError> {
    let newest = dir.join(STATE_FILE);
    let previous = dir.join(PREVIOUS_FILE);
    if !newest.is_file() && !previous.is_file() {
        return Ok(None);
    }
    let mut damage = None;
    for state in [&newest, &previous] {
        if !state.is_file() {
            continue;
        }
        match load_state::<B, M, R>(state, dir, module.clone(), device, expected, allow_changed) {
            Ok((module, record, meta)) => {
                return Ok(Some(Loaded {
                    module,
                    record,
                    meta,
                    fell_back: damage
                        .map(|e: TrainError| format!("{e}; resumed from the previous checkpoint instead")),
                }))
            }
            // Another run's checkpoint: the previous one is of the same run, so no fallback.
            Err(e @ TrainError::ForeignCheckpoint { .. }) => return Err(e),
            Err(e) if damage.is_none() => damage = Some(e),
            Err(e) => {
                return Err(TrainError::Checkpoint {
                    path: dir.to_path_buf(),
                    message: format!(
                        "no usable checkpoint: {}; and the previous one: {e}",
                        damage.map(|d| d.to_string()).unwrap_or_default()
                    ),
                })
            }
        }
    }
    Err(damage.unwrap_or_else(|| TrainError::Checkpoint {
        path: dir.to_path_buf(),
        message: "no usable checkpoint".into(),
    }))
}

#[allow(clippy::type_complexity)]
fn load_state<B: Backend, M: Module<B>, R: Record<B>>(
    state: &Path,
    dir: &Path,
    module: M,
    device: &B::Device,
    expected: &Identity,
    allow_changed: &[String],
) -> Result<(M, R, CheckpointMeta), TrainError> {
    let bad = |message: String| TrainError::Checkpoint {
        path: state.to_path_buf(),
        message,
    };
    let bytes = std::fs::read(state).map_err(|e| TrainError::io(state, e))?;
    let (map, file) = read_state(state, &bytes)?;
    let diffs: Vec<String> = file
        .meta
        .identity
        .differences(expected)
        .into_iter()
        .filter(|(what, _, _)| !allow_changed.iter().any(|a| a == what))
        .map(|(what, was, now)| format!("{what}: {was} → {now}"))
        .collect();
    if !diffs.is_empty() {
        return Err(TrainError::ForeignCheckpoint {
            path: state.to_path_buf(),
            differences: diffs.join("; "),
        });
    }
    let optim_path = dir.join(&file.optimizer);
    let mut restore = Restore {
        map: &map,
        problems: Vec::new(),
        restored: 0,
        trainable: 0,
    };
    let module = module.map(&mut restore);
    let saved = map.tensors.keys().filter(|k| !k.starts_with(BUFFER)).count();
    if restore.restored != restore.trainable || saved != restore.trainable {
        restore.problems.push(format!(
            "the model has {} trainable tensors, the checkpoint {saved} (restored {})",
            restore.trainable, restore.restored
        ));
    }
    let (module, buffers) = named::write(module, &map, buffer_key).map_err(|p| bad(p.join("; ")))?;
    let expected = named::read(&module, buffer_key).tensors.len();
    if buffers.len() != expected {
        restore.problems.push(format!(
            "the model has {expected} buffers, the checkpoint restored {}",
            buffers.len()
        ));
    }
    if !restore.problems.is_empty() {
        return Err(bad(restore.problems.join("; ")));
    }
    let bad_optim = |message: String| TrainError::Checkpoint {
        path: optim_path.clone(),
        message,
    };
    let optim_bytes = std::fs::read(&optim_path).map_err(|e| TrainError::io(&optim_path, e))?;
    if optim_bytes.len() != file.optimizer_bytes
        || vapt_files::sha256_hex(&optim_bytes) != file.optimizer_sha256
    {
        return Err(bad_optim(format!(
            "{} bytes that do not match the checksum recorded in {} (the file is damaged or \
             from another checkpoint)",
            optim_bytes.len(),
            state.display()
        )));
    }
    // Verified bytes only reach Burn's decoder; should it still panic, that is an error here.
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        BinBytesRecorder::<FullPrecisionSettings>::default().load::<R>(optim_bytes, device)
    }));
    let record = match decoded {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(bad_optim(e.to_string())),
        Err(_) => return Err(bad_optim("the optimiser state cannot be decoded".into())),
    };
    Ok((module, record, file.meta))
}

/// What a state file says besides its tensors, read and checked for form.
#[derive(Debug, Clone, PartialEq)]
pub struct StateMeta {
    /// Epochs, history, wall time, identity.
    pub meta: CheckpointMeta,
    /// The optimiser file's name (in the checkpoint folder).
    pub optimizer: String,
    /// Its size in bytes.
    pub optimizer_bytes: usize,
    /// Its SHA-256.
    pub optimizer_sha256: String,
}

/// The bytes of state file `state`: the tensors of `map` with `file`'s metadata and the
/// tensors' checksum ([`read_state`] reads them back).
pub fn encode_state(state: &Path, mut map: TensorMap, file: &StateMeta) -> Result<Vec<u8>, TrainError> {
    let m = &mut map.metadata;
    let meta = &file.meta;
    m.insert("epochs_done".into(), meta.epochs_done.to_string());
    m.insert("optimizer".into(), file.optimizer.clone());
    m.insert("optimizer_bytes".into(), file.optimizer_bytes.to_string());
    m.insert("optimizer_sha256".into(), file.optimizer_sha256.clone());
    m.insert("history".into(), meta.history.clone());
    m.insert("wall_seconds".into(), meta.wall_seconds.to_string());
    for (k, v) in Identity::KEYS.iter().zip(meta.identity.values()) {
        m.insert(k.to_string(), v);
    }
    let sum = tensors_sha256(&map);
    map.metadata.insert("tensors_sha256".into(), sum);
    Ok(safetensors_bytes(state, &map)?)
}

/// Reads the state file `state` (its content `bytes`): the tensors, verified against their
/// checksum, and the metadata, each field present and well-formed. Whether the checkpoint
/// belongs to the run is for the caller to check (see [`load`]).
pub fn read_state(state: &Path, bytes: &[u8]) -> Result<(TensorMap, StateMeta), TrainError> {
    let bad = |message: String| TrainError::Checkpoint {
        path: state.to_path_buf(),
        message,
    };
    let map = parse_safetensors(state, bytes).map_err(|e| bad(format!("unreadable: {e}")))?;
    let meta_of = |k: &str| {
        map.metadata
            .get(k)
            .cloned()
            .ok_or_else(|| bad(format!("no `{k}` metadata (not a vapt checkpoint, or damaged)")))
    };
    if meta_of("tensors_sha256")? != tensors_sha256(&map) {
        return Err(bad(
            "its tensors do not match their checksum (the file is damaged)".into(),
        ));
    }
    let number = |k: &str| {
        meta_of(k)?
            .parse::<usize>()
            .map_err(|_| bad(format!("`{k}` is not a number")))
    };
    let identity = Identity {
        config_sha256: meta_of("config_sha256")?,
        weights_sha256: Some(meta_of("weights_sha256")?).filter(|v| v != "none"),
        data_sha256: Some(meta_of("data_sha256")?).filter(|v| v != "none"),
    };
    let meta = CheckpointMeta {
        epochs_done: number("epochs_done")?,
        history: meta_of("history")?,
        wall_seconds: meta_of("wall_seconds")?.parse().unwrap_or(0.0),
        identity,
    };
    let optimizer = meta_of("optimizer")?;
    if optimizer.is_empty() || optimizer.contains(['/', '\\']) || optimizer.starts_with('.') {
        return Err(bad(format!("bad optimiser file name `{optimizer}`")));
    }
    let file = StateMeta {
        meta,
        optimizer,
        optimizer_bytes: number("optimizer_bytes")?,
        optimizer_sha256: meta_of("optimizer_sha256")?,
    };
    Ok((map, file))
}

impl CheckpointMeta {
    /// The metric history as rows, checked against the epoch counter and the run's `epochs`
    /// (`state` names the file in errors).
    pub fn rows(&self, state: &Path, epochs: usize) -> Result<Vec<EpochRow>, TrainError> {
        let bad = |message: String| TrainError::Checkpoint {
            path: state.to_path_buf(),
            message,
        };
        let rows: Vec<EpochRow> =
            serde_json::from_str(&self.history).map_err(|e| bad(format!("bad metric history: {e}")))?;
        let done = self.epochs_done;
        let in_order = rows.iter().enumerate().all(|(i, r)| r.epoch == i);
        if rows.len() != done || !in_order || done > epochs {
            return Err(bad(format!(
                "its epoch counter ({done}) does not match its metric history ({} rows, epochs {}) \
                 and the run's {epochs} epochs",
                rows.len(),
                if in_order { "in order" } else { "out of order" },
            )));
        }
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tensor_sum_is_that_of_names_shapes_and_values_joined() {
        let mut map = TensorMap::new("state");
        let big: Vec<f32> = (0..40_000).map(|i| i as f32 * 0.25 - 7.0).collect();
        map.insert("a.weight", RawTensor::new(vec![200, 200], big.clone()));
        map.insert("b", RawTensor::new(vec![2], vec![1.5, -2.0]));
        // The byte stream of the checkpoints written so far (one buffer), which must keep its sum.
        let mut joined = Vec::new();
        for (k, shape, data) in [
            ("a.weight", [200u64, 200].as_slice(), big.as_slice()),
            ("b", &[2], &[1.5, -2.0]),
        ] {
            joined.extend_from_slice(k.as_bytes());
            joined.extend(shape.iter().flat_map(|d| d.to_le_bytes()));
            joined.extend(data.iter().flat_map(|v| v.to_le_bytes()));
        }
        assert_eq!(tensors_sha256(&map), vapt_files::sha256_hex(&joined));
        map.insert("b", RawTensor::new(vec![2], vec![1.5, -2.5]));
        assert_ne!(tensors_sha256(&map), vapt_files::sha256_hex(&joined));
    }
}
