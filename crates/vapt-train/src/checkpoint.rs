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
use vapt_vit::weights::{parse_safetensors, write_safetensors};
use vapt_vit::{named, RawTensor, TensorMap};

use crate::error::TrainError;
use crate::files::write_atomic;

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

/// What a checkpoint holds besides tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointMeta {
    /// Epochs completed.
    pub epochs_done: usize,
    /// JSON of the run's metric history (opaque here).
    pub history: String,
    /// Wall seconds spent so far (summed over sessions).
    pub wall_seconds: f64,
}

/// Saves a checkpoint after `meta.epochs_done` epochs into `dir`: the optimiser state first
/// (`optim-<epoch>.bin`), then the trainable tensors and `meta` (`state.safetensors`, the commit
/// point), then removes older optimiser files. A kill at any moment leaves a consistent pair.
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
    map.metadata
        .insert("epochs_done".into(), meta.epochs_done.to_string());
    map.metadata.insert("optimizer".into(), optim_name.clone());
    map.metadata.insert("history".into(), meta.history.clone());
    map.metadata
        .insert("wall_seconds".into(), meta.wall_seconds.to_string());
    // Atomic (temporary file + rename): the commit point of the checkpoint.
    write_safetensors(&dir.join(STATE_FILE), &map)?;

    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with("optim-") && name != optim_name {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    Ok(())
}

/// Loads the checkpoint in `dir` (if any) into `module`; returns the module, the optimiser record
/// and the metadata. `Ok(None)` when there is no checkpoint.
#[allow(clippy::type_complexity)]
pub fn load<B: Backend, M: Module<B>, R: Record<B>>(
    dir: &Path,
    module: M,
    device: &B::Device,
) -> Result<Option<(M, R, CheckpointMeta)>, TrainError> {
    let state = dir.join(STATE_FILE);
    if !state.is_file() {
        return Ok(None);
    }
    let bad = |message: String| TrainError::Checkpoint {
        path: state.clone(),
        message,
    };
    let bytes = std::fs::read(&state).map_err(|e| TrainError::io(&state, e))?;
    let map = parse_safetensors(&state, &bytes)?;
    let meta_of = |k: &str| {
        map.metadata
            .get(k)
            .cloned()
            .ok_or_else(|| bad(format!("no `{k}` metadata")))
    };
    let epochs_done: usize = meta_of("epochs_done")?
        .parse()
        .map_err(|_| bad("`epochs_done` is not a number".into()))?;
    let wall_seconds: f64 = meta_of("wall_seconds")?.parse().unwrap_or(0.0);
    let meta = CheckpointMeta {
        epochs_done,
        history: meta_of("history")?,
        wall_seconds,
    };
    let optim_path = dir.join(meta_of("optimizer")?);
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
    let optim_bytes = std::fs::read(&optim_path).map_err(|e| TrainError::io(&optim_path, e))?;
    let record: R = BinBytesRecorder::<FullPrecisionSettings>::default()
        .load(optim_bytes, device)
        .map_err(|e| TrainError::Checkpoint {
            path: optim_path.clone(),
            message: e.to_string(),
        })?;
    Ok(Some((module, record, meta)))
}
