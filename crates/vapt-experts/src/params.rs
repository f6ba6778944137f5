//! Parameter accounting: trainable and total parameters per module, from the configuration alone
//! (the experts' table, [`PromptConfig::expert_shapes`], and the backbone's,
//! [`vapt_vit::weights::native::native_params`]).

use serde::Serialize;
use vapt_vit::VitConfig;

use crate::config::PromptConfig;
use crate::method::{BackboneTraining, Method};

/// One row of the parameter report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParamRow {
    /// Module name (`prompt.static`, `vapt.3`, `vapt.mlp`, `adapter`, `lora`, `mlp`, `head`,
    /// `backbone`).
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
    /// The method as tables show it (`partial-2`, `mlp-3`).
    pub label: String,
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
        let mut backbone_trainable = 0;
        for (name, shape) in prompt.expert_shapes(vit) {
            let n: usize = shape.iter().product();
            if name.starts_with("backbone.") {
                backbone_trainable += n;
                continue;
            }
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
        if prompt.method.backbone_training() == BackboneTraining::Everything {
            backbone_trainable = backbone;
        }
        modules.push(ParamRow {
            module: "backbone".into(),
            trainable: backbone_trainable,
            total: backbone,
        });
        let trainable: usize = modules.iter().map(|r| r.trainable).sum();
        let total: usize = modules.iter().map(|r| r.total).sum();
        Self {
            method: prompt.method,
            label: prompt.label(),
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
