//! Named access to the trainable expert tensors, and parameter accounting.
//!
//! **The one place** where external tensor names (parity fixtures' `params.safetensors`, prompt
//! artifacts; SPEC §3.4) meet the module fields:
//!
//! | name | field | stored as |
//! |---|---|---|
//! | `prompt.static` | `prompts.prompt` | `[Np, D]` |
//! | `prompt.deep_static` | `prompts.deep` | `[rows, Np, D]` |
//! | `vapt.{k}.norm.weight`, `.bias` | `generators[k].norm.gamma`, `.beta` | `[D]` |
//! | `vapt.{k}.conv.kernel` | `generators[k].conv` | `[1, K, K]` (named shape `(K, K)`) or `[D, K, K]` |
//! | `vapt.{k}.token_proj.weight`, `.bias` | `generators[k].token_proj_weight`, `_bias` | `[Np, S]`, `[Np]` |
//! | `vapt.mlp.fc1.weight`, `fc2.weight`, `scale` | `shared_mlp.fc1`, `.fc2`, `.scale` | `[r, D]`, `[D, r]`, `[1]` |
//! | `vapt.{k}.mlp.*` | `generators[k].mlp.*` | as above |
//! | `head.weight`, `head.bias` | `head.weight`, `head.bias` | `[C, D]`, `[C]` |
//!
//! Shapes are those of [`PromptConfig::expert_shapes`]; only the shared conv kernel is reshaped.

use burn::module::Param;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use serde::Serialize;
use vapt_vit::{RawTensor, TensorMap, VitConfig};

use crate::config::{Method, PromptConfig};
use crate::model::{ProjectorMlp, PromptedVit};

/// A mutable reference to one parameter, whatever its rank.
pub enum Slot<'a, B: Backend> {
    /// Rank 1.
    R1(&'a mut Param<Tensor<B, 1>>),
    /// Rank 2.
    R2(&'a mut Param<Tensor<B, 2>>),
    /// Rank 3.
    R3(&'a mut Param<Tensor<B, 3>>),
}

fn replace<B: Backend, const D: usize>(p: &mut Param<Tensor<B, D>>, t: &RawTensor, device: &B::Device) {
    let shape = p.dims();
    let tensor = Tensor::<B, D>::from_data(TensorData::new(t.data.clone(), shape), device);
    let require_grad = p.val().is_require_grad();
    *p = Param::initialized(p.id, tensor.set_require_grad(require_grad));
}

impl<B: Backend> Slot<'_, B> {
    /// Current value, flattened into the module's own shape.
    pub fn value(&self) -> RawTensor {
        match self {
            Slot::R1(p) => RawTensor::from_tensor(p.val()),
            Slot::R2(p) => RawTensor::from_tensor(p.val()),
            Slot::R3(p) => RawTensor::from_tensor(p.val()),
        }
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        match self {
            Slot::R1(p) => p.dims().iter().product(),
            Slot::R2(p) => p.dims().iter().product(),
            Slot::R3(p) => p.dims().iter().product(),
        }
    }

    /// Replaces the value (same number of elements; reshaped to the module's shape), keeping the
    /// parameter id and its gradient requirement.
    pub fn set(&mut self, t: &RawTensor, device: &B::Device) {
        match self {
            Slot::R1(p) => replace(p, t, device),
            Slot::R2(p) => replace(p, t, device),
            Slot::R3(p) => replace(p, t, device),
        }
    }
}

fn mlp_slot<'a, B: Backend>(mlp: Option<&'a mut ProjectorMlp<B>>, field: &str) -> Option<Slot<'a, B>> {
    let mlp = mlp?;
    match field {
        "fc1.weight" => Some(Slot::R2(&mut mlp.fc1)),
        "fc2.weight" => Some(Slot::R2(&mut mlp.fc2)),
        "scale" => mlp.scale.as_mut().map(Slot::R1),
        _ => None,
    }
}

impl<B: Backend> PromptedVit<B> {
    /// The parameter named `name` (see the module table), if the model has it.
    pub fn slot(&mut self, name: &str) -> Option<Slot<'_, B>> {
        match name {
            "prompt.static" => return self.prompts.as_mut().map(|p| Slot::R2(&mut p.prompt)),
            "prompt.deep_static" => return self.prompts.as_mut()?.deep.as_mut().map(Slot::R3),
            "head.weight" => return self.head.as_mut().map(|h| Slot::R2(&mut h.weight)),
            "head.bias" => return self.head.as_mut().map(|h| Slot::R1(&mut h.bias)),
            _ => {}
        }
        let rest = name.strip_prefix("vapt.")?;
        if let Some(field) = rest.strip_prefix("mlp.") {
            return mlp_slot(self.shared_mlp.as_mut(), field);
        }
        let (k, field) = rest.split_once('.')?;
        let g = self.generators.get_mut(k.parse::<usize>().ok()?)?;
        match field {
            "norm.weight" => Some(Slot::R1(&mut g.norm.gamma)),
            "norm.bias" => g.norm.beta.as_mut().map(Slot::R1),
            "conv.kernel" => g.conv.as_mut().map(Slot::R3),
            "token_proj.weight" => Some(Slot::R2(&mut g.token_proj_weight)),
            "token_proj.bias" => Some(Slot::R1(&mut g.token_proj_bias)),
            f => mlp_slot(g.mlp.as_mut(), f.strip_prefix("mlp.")?),
        }
    }

    /// Every expert tensor and the head, in the external names and shapes.
    pub fn export_experts(&self) -> TensorMap {
        let mut model = self.clone();
        let mut map = TensorMap::new("<memory>");
        for (name, shape) in self.config.expert_shapes(&self.backbone.config) {
            if let Some(slot) = model.slot(&name) {
                map.insert(name, slot.value().reshaped(shape));
            }
        }
        map
    }

    /// Loads expert tensors and the head from `map` after checking that its names and shapes are
    /// exactly [`PromptConfig::expert_shapes`] (every problem reported at once, naming the file).
    pub fn import_experts(
        mut self,
        map: &TensorMap,
        device: &B::Device,
    ) -> Result<Self, vapt_vit::LoadError> {
        let expected = self.config.expert_shapes(&self.backbone.config);
        let model_name = format!(
            "{} experts on {}",
            self.config.method,
            self.backbone.config.display_name()
        );
        map.check(&expected, |_| false, "vapt experts", &model_name)?;
        for (name, _) in &expected {
            if let (Some(mut slot), Some(t)) = (self.slot(name), map.tensors.get(name)) {
                slot.set(t, device);
            }
        }
        Ok(self)
    }
}

/// Gradients of every expert tensor and the head after `loss.backward()`, in external names and
/// shapes; a tensor that received no gradient is reported as zeros.
pub fn expert_gradients<B: AutodiffBackend>(model: &PromptedVit<B>, grads: &B::Gradients) -> TensorMap {
    let mut m = model.clone();
    let mut out = TensorMap::new("<gradients>");
    for (name, shape) in model.config.expert_shapes(&model.backbone.config) {
        let Some(slot) = m.slot(&name) else { continue };
        let numel = slot.numel();
        let g = match slot {
            Slot::R1(p) => p.val().grad(grads).map(RawTensor::from_tensor),
            Slot::R2(p) => p.val().grad(grads).map(RawTensor::from_tensor),
            Slot::R3(p) => p.val().grad(grads).map(RawTensor::from_tensor),
        };
        let g = g.unwrap_or_else(|| RawTensor::new(vec![numel], vec![0.0; numel]));
        out.insert(name, g.reshaped(shape));
    }
    out
}

/// One row of the parameter report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParamRow {
    /// Module name (`prompt.static`, `vapt.3`, `vapt.mlp`, `head`, `backbone`).
    pub module: String,
    /// Parameters that train.
    pub trainable: usize,
    /// All parameters.
    pub total: usize,
}

/// Trainable / total parameters, per module and overall.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParamReport {
    /// Method.
    pub method: Method,
    /// Backbone name.
    pub backbone: String,
    /// Per-module rows.
    pub modules: Vec<ParamRow>,
    /// Sum of trainable parameters.
    pub trainable: usize,
    /// Sum of all parameters.
    pub total: usize,
    /// 100 · trainable / total.
    pub trainable_percent: f64,
    /// 100 · trainable / backbone parameters (the paper's "tuned %").
    pub percent_of_backbone: f64,
}

impl ParamReport {
    /// Computes the report from the configuration alone (no model needs to be built).
    pub fn new(prompt: &PromptConfig, vit: &VitConfig) -> Self {
        let mut modules: Vec<ParamRow> = Vec::new();
        for (name, shape) in prompt.expert_shapes(vit) {
            let n: usize = shape.iter().product();
            let module = match name.split('.').collect::<Vec<_>>()[..] {
                ["prompt", ..] => name.clone(),
                ["vapt", "mlp", ..] => "vapt.mlp".to_string(),
                ["vapt", k, ..] => format!("vapt.{k}"),
                [first, ..] => first.to_string(),
                [] => name.clone(),
            };
            match modules.iter_mut().find(|r| r.module == module) {
                Some(row) => {
                    row.trainable += n;
                    row.total += n;
                }
                None => modules.push(ParamRow {
                    module,
                    trainable: n,
                    total: n,
                }),
            }
        }
        let backbone = vit.num_backbone_params();
        let backbone_trainable = if prompt.method.frozen_backbone() {
            0
        } else {
            backbone
        };
        modules.push(ParamRow {
            module: "backbone".into(),
            trainable: backbone_trainable,
            total: backbone,
        });
        let trainable: usize = modules.iter().map(|r| r.trainable).sum();
        let total: usize = modules.iter().map(|r| r.total).sum();
        Self {
            method: prompt.method,
            backbone: vit.display_name(),
            trainable,
            total,
            trainable_percent: 100.0 * trainable as f64 / total as f64,
            percent_of_backbone: 100.0 * trainable as f64 / backbone as f64,
            modules,
        }
    }

    /// A one-line summary like peft's `print_trainable_parameters`.
    pub fn summary(&self) -> String {
        format!(
            "trainable params: {} || all params: {} || trainable%: {:.4}",
            group(self.trainable),
            group(self.total),
            self.trainable_percent
        )
    }

    /// A per-module table (plain text).
    pub fn table(&self) -> String {
        let mut s = format!("{:<20} {:>14} {:>14}\n", "module", "trainable", "total");
        for r in &self.modules {
            s += &format!(
                "{:<20} {:>14} {:>14}\n",
                r.module,
                group(r.trainable),
                group(r.total)
            );
        }
        s += &format!(
            "{:<20} {:>14} {:>14}\n",
            "all",
            group(self.trainable),
            group(self.total)
        );
        s
    }
}

/// `55608` → `55,608`.
pub fn group(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}
