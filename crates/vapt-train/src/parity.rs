//! Numeric parity against fixtures produced by the authors' code (`tests/fixtures/parity`).
//!
//! A fixture folder holds `config.json` (sizes, knobs, tolerance rule), the backbone
//! (`backbone.npz` in Google's layout, or the PyTorch checkpoint its `backbone_file` names), `params.safetensors` (every trainable tensor, SPEC §3.4 names) and `io.safetensors`
//! (input, labels, expected `out.*` and `grad.*`). [`run_parity`] builds the model the config
//! describes — any configuration the format can express — runs the forward in eval mode (every
//! dropout off), the backward of the mean cross-entropy, and compares every stored tensor with
//! `max|ours − expected| ≤ atol + rtol · max|expected|` (first matching prefix).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, Tensor, TensorData};
use serde_json::Value;
use vapt_vit::weights::read_any;
use vapt_vit::{load_pretrained, LoadOptions, RawTensor, VitConfig};

use vapt_experts::{
    expert_gradients, Activation, AdapterConfig, LoraConfig, MethodSpec, PromptConfig, PromptedVit, Trace,
    VaptConfig,
};
use vapt_vit::Projection;

use crate::error::TrainError;
use crate::loss::cross_entropy;

/// A tolerance rule for tensors whose name starts with `prefix`.
#[derive(Debug, Clone, PartialEq)]
pub struct ToleranceRule {
    /// Name prefix.
    pub prefix: String,
    /// Absolute part.
    pub atol: f64,
    /// Part relative to the tensor's largest expected magnitude.
    pub rtol: f64,
}

/// A parsed fixture folder.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// The folder.
    pub dir: PathBuf,
    /// Its name (`config.json: name`).
    pub name: String,
    /// The backbone architecture.
    pub vit: VitConfig,
    /// The prompt configuration (dropouts off: fixtures are eval mode).
    pub prompt: PromptConfig,
    /// Tolerance rules, first match wins.
    pub tolerances: Vec<ToleranceRule>,
    /// The backbone file (`config.json: backbone_file`, default `backbone.npz`).
    pub backbone_file: PathBuf,
}

fn field<'a>(cfg: &'a Value, path: &Path, key: &str) -> Result<&'a Value, TrainError> {
    cfg.get(key).ok_or_else(|| TrainError::Config {
        path: path.to_path_buf(),
        message: format!("missing field `{key}`"),
    })
}

fn usize_field(cfg: &Value, path: &Path, key: &str) -> Result<usize, TrainError> {
    field(cfg, path, key)?
        .as_u64()
        .map(|v| v as usize)
        .ok_or_else(|| TrainError::Config {
            path: path.to_path_buf(),
            message: format!("field `{key}` must be a non-negative integer"),
        })
}

fn opt<'a>(cfg: &'a Value, key: &str) -> Option<&'a Value> {
    cfg.get(key).filter(|v| !v.is_null())
}

impl Fixture {
    /// Reads `dir/config.json`.
    pub fn read(dir: &Path) -> Result<Self, TrainError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|source| TrainError::Io {
            path: path.clone(),
            source,
        })?;
        let cfg: Value = serde_json::from_str(&text).map_err(|e| TrainError::Config {
            path: path.clone(),
            message: format!("invalid JSON: {e}"),
        })?;
        let u = |k: &str| usize_field(&cfg, &path, k);
        let mut vit = VitConfig::new(
            u("hidden")?,
            u("layers")?,
            u("heads")?,
            u("mlp_dim")?,
            u("patch_size")?,
        )
        .with_image_size(u("image_size")?)
        .with_dropout(0.0, 0.0);
        if let Some(eps) = opt(&cfg, "backbone_layernorm_eps").and_then(Value::as_f64) {
            vit.layer_norm_eps = eps;
        }
        if let Some(kind) = opt(&cfg, "backbone").and_then(Value::as_str) {
            vit.kind = kind.parse().map_err(|message| TrainError::Config {
                path: path.clone(),
                message: format!("field `backbone`: {message}"),
            })?;
        }
        let backbone_file = dir.join(
            opt(&cfg, "backbone_file")
                .and_then(Value::as_str)
                .unwrap_or("backbone.npz"),
        );
        let method_name = field(&cfg, &path, "method")?.as_str().unwrap_or_default();
        let spec: MethodSpec =
            method_name
                .parse()
                .map_err(|source: vapt_experts::ConfigError| TrainError::Config {
                    path: path.clone(),
                    message: source.to_string(),
                })?;
        let defaults = VaptConfig::default();
        let b = |k: &str, d: bool| opt(&cfg, k).and_then(Value::as_bool).unwrap_or(d);
        let n = |k: &str, d: usize| {
            opt(&cfg, k)
                .and_then(Value::as_u64)
                .map(|v| v as usize)
                .unwrap_or(d)
        };
        let activation = match opt(&cfg, "activation").and_then(Value::as_str) {
            // The official code treats any unknown name as the identity.
            Some(a) => a.parse().unwrap_or(Activation::Identity),
            None => defaults.activation,
        };
        let vapt = VaptConfig {
            vpt_depth: n("vpt_depth", defaults.vpt_depth),
            conv: b("conv", defaults.conv),
            kernel: n("kernel", defaults.kernel),
            padding: n("padding", defaults.padding),
            channelwise: b("channelwise", defaults.channelwise),
            hidden_dim: n("hidden_dim", defaults.hidden_dim),
            activation,
            feat_projector: b("feat_projector", defaults.feat_projector),
            share_projector: b("shared_projector", defaults.share_projector),
            learnable_scale: b("learnable_scale", defaults.learnable_scale),
            norm_eps: opt(&cfg, "vapt_layernorm_eps")
                .and_then(Value::as_f64)
                .unwrap_or(defaults.norm_eps),
            ..defaults
        };
        let base = PromptConfig::default();
        let mut prompt = PromptConfig {
            num_prompts: n("num_prompts", 0),
            prompt_dropout: 0.0,
            num_classes: u("num_classes")?,
            vapt,
            partial_blocks: n("partial_blocks", base.partial_blocks),
            // The authors' MLP_NUM counts the hidden layers.
            mlp_layers: opt(&cfg, "mlp_num")
                .and_then(Value::as_u64)
                .map(|h| h as usize + 1)
                .unwrap_or_else(|| n("mlp_layers", base.mlp_layers)),
            adapter: AdapterConfig {
                reduction: n("reduction_factor", base.adapter.reduction),
                ..base.adapter.clone()
            },
            lora: lora_knobs(&cfg, &path, base.lora.clone())?,
            ..base
        };
        prompt.set_method(spec);
        let prompt = prompt.without_dropout();
        if let Some(dim) = opt(&cfg, "adapter_dim").and_then(Value::as_u64) {
            if prompt.adapter.dim(vit.hidden) != dim as usize {
                return Err(TrainError::Config {
                    path: path.clone(),
                    message: format!(
                        "adapter_dim {dim} is not hidden {} / reduction_factor {}",
                        vit.hidden, prompt.adapter.reduction
                    ),
                });
            }
        }
        prompt.validate(&vit).map_err(|source| TrainError::Config {
            path: path.clone(),
            message: source.to_string(),
        })?;
        let rules = cfg
            .pointer("/suggested_tolerance/by_prefix")
            .and_then(Value::as_array)
            .ok_or_else(|| TrainError::Config {
                path: path.clone(),
                message: "missing `suggested_tolerance.by_prefix`".into(),
            })?;
        let tolerances = rules
            .iter()
            .map(|r| {
                Some(ToleranceRule {
                    prefix: r.get("prefix")?.as_str()?.to_string(),
                    atol: r.get("atol")?.as_f64()?,
                    rtol: r.get("rtol")?.as_f64()?,
                })
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| TrainError::Config {
                path: path.clone(),
                message: "every tolerance rule needs `prefix`, `atol` and `rtol`".into(),
            })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            name: opt(&cfg, "name")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| dir.display().to_string()),
            vit,
            prompt,
            tolerances,
            backbone_file,
        })
    }

    fn tolerance(&self, name: &str) -> Option<&ToleranceRule> {
        self.tolerances.iter().find(|r| name.starts_with(&r.prefix))
    }
}

/// LoRA knobs of a fixture (`lora_rank`, `lora_alpha`, `lora_targets`), over `base`.
fn lora_knobs(cfg: &Value, path: &Path, base: LoraConfig) -> Result<LoraConfig, TrainError> {
    let bad = |message: String| TrainError::Config {
        path: path.to_path_buf(),
        message,
    };
    let targets = match opt(cfg, "lora_targets").and_then(Value::as_array) {
        Some(list) => list
            .iter()
            .map(|t| t.as_str().unwrap_or_default().parse::<Projection>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("field `lora_targets`: {e}")))?,
        None => base.targets,
    };
    Ok(LoraConfig {
        rank: opt(cfg, "lora_rank")
            .and_then(Value::as_u64)
            .map_or(base.rank, |r| r as usize),
        alpha: opt(cfg, "lora_alpha")
            .and_then(Value::as_f64)
            .unwrap_or(base.alpha),
        targets,
        dropout: 0.0,
    })
}

/// The comparison of one tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct ParityLine {
    /// Tensor name (`out.logits`, `grad.prompt.static`, ...).
    pub name: String,
    /// max |ours − expected| (infinite when the tensor could not be computed).
    pub max_abs_err: f64,
    /// Allowed error `atol + rtol · max|expected|`.
    pub allowed: f64,
    /// `max_abs_err / allowed`.
    pub fraction: f64,
    /// Why the tensor failed outright (not computed, wrong size, no rule), if it did.
    pub problem: Option<String>,
}

impl ParityLine {
    /// Whether this tensor is within tolerance.
    pub fn pass(&self) -> bool {
        self.problem.is_none() && self.fraction <= 1.0
    }
}

/// All comparisons of a fixture.
#[derive(Debug, Clone)]
pub struct ParityReport {
    /// Fixture name.
    pub name: String,
    /// One line per stored tensor.
    pub lines: Vec<ParityLine>,
}

impl ParityReport {
    /// Whether every tensor passed (and there was at least one).
    pub fn pass(&self) -> bool {
        !self.lines.is_empty() && self.lines.iter().all(ParityLine::pass)
    }

    /// Largest fraction of tolerance used.
    pub fn worst(&self) -> f64 {
        self.lines.iter().map(|l| l.fraction).fold(0.0, f64::max)
    }

    /// The final line: `parity: PASS|FAIL <n> tensors, worst <r> of tolerance`.
    pub fn verdict(&self) -> String {
        format!(
            "parity: {} {} tensors, worst {:.3} of tolerance",
            if self.pass() { "PASS" } else { "FAIL" },
            self.lines.len(),
            self.worst()
        )
    }
}

fn flat<B: burn::tensor::backend::Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    RawTensor::from_tensor(t).data
}

/// Runs fixture `dir` on backend `B` and compares every stored tensor.
pub fn run_parity<B: AutodiffBackend>(dir: &Path, device: &B::Device) -> Result<ParityReport, TrainError> {
    let fx = Fixture::read(dir)?;
    let opts = LoadOptions {
        arch: Some(fx.vit.clone()),
        ..Default::default()
    };
    // The kind is read off the file, as for any user's checkpoint, and checked against the fixture.
    let (backbone, _) = load_pretrained::<B>(&fx.backbone_file, &opts, device)?;
    if backbone.config.kind != fx.vit.kind {
        return Err(TrainError::Config {
            path: fx.backbone_file.clone(),
            message: format!(
                "reads as a {} backbone, but config.json says {}",
                backbone.config.kind, fx.vit.kind
            ),
        });
    }
    let model =
        PromptedVit::new(backbone, fx.prompt.clone(), device).map_err(|source| TrainError::Config {
            path: dir.join("config.json"),
            message: source.to_string(),
        })?;
    let (params, _) = read_any(&dir.join("params.safetensors"))?;
    let model = model.import_experts(&params)?;
    let (io, _) = read_any(&dir.join("io.safetensors"))?;
    let io_path = dir.join("io.safetensors");
    let get = |k: &str| -> Result<&RawTensor, TrainError> {
        io.tensors.get(k).ok_or_else(|| TrainError::Config {
            path: io_path.clone(),
            message: format!("missing tensor `{k}`"),
        })
    };
    let input = get("input")?;
    let images = Tensor::<B, 4>::from_data(TensorData::new(input.data.clone(), input.shape.clone()), device);
    let labels: Vec<i64> = get("labels")?.data.iter().map(|&v| v as i64).collect();
    let labels = Tensor::<B, 1, Int>::from_data(TensorData::new(labels.clone(), [labels.len()]), device);

    let mut trace = Trace::new(true, true);
    let logits = model.forward_traced(images, Some(&mut trace));
    let loss = cross_entropy(logits, labels);
    let grads = loss.backward();

    let mut ours: BTreeMap<String, Vec<f32>> = trace
        .tensors
        .into_iter()
        .map(|(k, (_, t))| (k, flat(t)))
        .collect();
    ours.insert("out.loss".into(), flat(loss));
    let rows: Vec<usize> = io
        .tensors
        .get("out.attn_rows")
        .map(|t| t.data.iter().map(|&v| v as usize).collect())
        .unwrap_or_default();
    for (l, probs) in trace.attn.into_iter().enumerate() {
        let [b, h, t, _] = probs.dims();
        if !rows.is_empty() && rows.iter().all(|&r| r < t) {
            let sel: Vec<Tensor<B, 4>> = rows.iter().map(|&r| probs.clone().narrow(2, r, 1)).collect();
            ours.insert(format!("out.attn.{l}"), flat(Tensor::cat(sel, 2)));
        }
        ours.insert(
            format!("out.attn_colsum.{l}"),
            flat(probs.sum_dim(2).reshape([b, h, t])),
        );
    }
    for (name, g) in expert_gradients(&model, &grads).tensors {
        ours.insert(format!("grad.{name}"), g.data);
    }

    let mut lines = Vec::new();
    for (name, expected) in io
        .tensors
        .iter()
        .filter(|(k, _)| (k.starts_with("out.") || k.starts_with("grad.")) && *k != "out.attn_rows")
    {
        let max_exp = expected.data.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64));
        let mut line = ParityLine {
            name: name.clone(),
            max_abs_err: f64::INFINITY,
            allowed: 0.0,
            fraction: f64::INFINITY,
            problem: None,
        };
        match (fx.tolerance(name), ours.get(name)) {
            (None, _) => line.problem = Some("no tolerance rule in config.json".into()),
            (_, None) => line.problem = Some("not computed by vapt".into()),
            (Some(_), Some(v)) if v.len() != expected.data.len() => {
                line.problem = Some(format!("{} values, expected {}", v.len(), expected.data.len()))
            }
            (Some(rule), Some(v)) => {
                let err = v
                    .iter()
                    .zip(&expected.data)
                    .fold(0.0f64, |m, (a, b)| m.max((*a as f64 - *b as f64).abs()));
                line.allowed = rule.atol + rule.rtol * max_exp;
                line.max_abs_err = err;
                line.fraction = err / line.allowed;
                if !err.is_finite() {
                    line.problem = Some("non-finite values".into());
                }
            }
        }
        lines.push(line);
    }
    Ok(ParityReport { name: fx.name, lines })
}
