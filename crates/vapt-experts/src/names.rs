//! The one mapping between the experts' module paths and their external names (SPEC §3.4: the
//! parity fixtures' `params.safetensors`, prompt artifacts, gradients), and the import / export
//! built on it.
//!
//! An expert tensor's external name is its module path in [`PromptedVit`] — `prompt.static`,
//! `prompt.deep_static`, `head.weight`, `vapt.mlp.fc1.weight` — except that adaptive generator `k`
//! is `vapt.{k}.…` where the module path says `vapt.blocks.{k}.…`. Backbone tensors have no
//! external name. Shapes are those of [`crate::PromptConfig::expert_shapes`]; only the shared conv
//! kernel (`[1, K, K]` in the module, `(K, K)` by name) differs, and a read reshapes to it.

use burn::tensor::backend::{AutodiffBackend, Backend};
use vapt_vit::{named, LoadError, TensorMap};

use crate::model::PromptedVit;

/// The external name of the parameter at module path `path`: the path, without the `blocks.` /
/// `layers.` that follows an expert module's name (`vapt.blocks.3.norm.weight` → `vapt.3.norm.weight`,
/// `adapter.blocks.0.up.bias` → `adapter.0.up.bias`, `mlp.layers.1.fc.weight` → `mlp.1.fc.weight`).
/// Backbone paths (`backbone.blocks.11.…`) keep theirs.
pub fn external_name(path: &str) -> String {
    let mut parts: Vec<&str> = path.split('.').collect();
    if parts.len() > 2 && parts[0] != "backbone" && matches!(parts[1], "blocks" | "layers") {
        parts.remove(1);
    }
    parts.join(".")
}

/// `external_name`, for the parameters listed in `table` only.
fn named_in(table: &[(String, Vec<usize>)]) -> impl Fn(&str) -> Option<String> + '_ {
    move |path: &str| {
        let name = external_name(path);
        table.iter().any(|(n, _)| *n == name).then_some(name)
    }
}

/// Reshapes every tensor of `map` to its shape in `expected` (same number of elements).
fn to_external_shapes(mut map: TensorMap, expected: &[(String, Vec<usize>)]) -> TensorMap {
    for (name, shape) in expected {
        if let Some(t) = map.tensors.remove(name) {
            map.insert(name.clone(), t.reshaped(shape.clone()));
        }
    }
    map
}

impl<B: Backend> PromptedVit<B> {
    /// Every tensor of the trainable-only artifact ([`crate::PromptConfig::artifact_shapes`]:
    /// experts, head, trained backbone tensors, buffers), in the external names and shapes.
    pub fn export_experts(&self) -> TensorMap {
        let expected = self.config.artifact_shapes(&self.backbone.config);
        to_external_shapes(named::read(self, named_in(&expected)), &expected)
    }

    /// Loads the artifact's tensors from `map` after checking that its names and shapes are
    /// exactly [`crate::PromptConfig::artifact_shapes`] (every problem reported at once, naming
    /// the file).
    pub fn import_experts(self, map: &TensorMap) -> Result<Self, LoadError> {
        let expected = self.config.artifact_shapes(&self.backbone.config);
        let model_name = format!(
            "{} experts on {}",
            self.config.method,
            self.backbone.config.display_name()
        );
        map.check(&expected, |_| false, "vapt experts", &model_name)?;
        let (model, used) =
            named::write(self, map, named_in(&expected)).map_err(|problems| LoadError::Format {
                path: map.source.clone(),
                message: problems.join("; "),
            })?;
        if used.len() != expected.len() {
            return Err(LoadError::Format {
                path: map.source.clone(),
                message: format!(
                    "the model has {} of the {} expert tensors (module paths out of step with \
                     `expert_shapes`)",
                    used.len(),
                    expected.len()
                ),
            });
        }
        Ok(model)
    }
}

/// Gradients of every expert tensor and the head after `loss.backward()`, in external names and
/// shapes; a tensor that received no gradient is reported as zeros.
pub fn expert_gradients<B: AutodiffBackend>(model: &PromptedVit<B>, grads: &B::Gradients) -> TensorMap {
    let expected = model.config.expert_shapes(&model.backbone.config);
    to_external_shapes(named::read_grads(model, grads, named_in(&expected)), &expected)
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;
    use vapt_vit::{named, VitConfig};

    use super::*;
    use crate::{Method, PromptConfig};

    /// The module's artifact tensors, named externally, are exactly the table of
    /// `artifact_shapes` (same names, same sizes), for every method and the knobs that change them;
    /// its other parameters are the frozen backbone's.
    #[test]
    fn module_paths_give_exactly_the_expert_table() {
        let vit = VitConfig::new(16, 3, 2, 32, 4).with_image_size(16);
        let mut configs: Vec<PromptConfig> = Method::all().map(|m| PromptConfig::new(m, 3, 5)).collect();
        let mut knobs = PromptConfig::new(Method::Vapt, 2, 0);
        knobs.vapt.vpt_depth = 2;
        knobs.vapt.channelwise = false;
        knobs.vapt.share_projector = false;
        knobs.vapt.learnable_scale = true;
        configs.push(knobs.clone());
        knobs.vapt.conv = false;
        knobs.vapt.feat_projector = false;
        configs.push(knobs);
        let mut lora = PromptConfig::new(Method::Lora, 0, 4);
        lora.lora.targets = vapt_vit::Projection::all().collect();
        lora.lora.rank = 3;
        configs.push(lora);
        let mut partial = PromptConfig::new(Method::Partial, 0, 4);
        partial.partial_blocks = 2;
        configs.push(partial);
        let mut mlp = PromptConfig::new(Method::Mlp, 0, 4);
        mlp.mlp_layers = 1;
        configs.push(mlp);
        for cfg in configs {
            let model = PromptedVit::new(
                vit.init::<Flex>(&Default::default()),
                cfg.clone(),
                &Default::default(),
            )
            .unwrap();
            let table: Vec<(String, usize)> = cfg
                .artifact_shapes(&vit)
                .into_iter()
                .map(|(n, s)| (n, s.iter().product()))
                .collect();
            let ours: Vec<(String, usize)> = named::shapes(&model)
                .into_iter()
                .map(|(p, s)| (external_name(&p), s.iter().product()))
                .filter(|(n, _)| !n.starts_with("backbone.") || table.iter().any(|(t, _)| t == n))
                .collect();
            let sorted = |mut v: Vec<(String, usize)>| {
                v.sort();
                v
            };
            assert_eq!(sorted(ours), sorted(table), "{cfg:?}");
        }
    }
}
