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

/// The external name of the expert parameter at module path `path` (`None` for the backbone).
pub fn external_name(path: &str) -> Option<String> {
    if path.starts_with("backbone.") {
        return None;
    }
    Some(match path.strip_prefix("vapt.blocks.") {
        Some(rest) => format!("vapt.{rest}"),
        None => path.to_string(),
    })
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
    /// Every expert tensor and the head, in the external names and shapes.
    pub fn export_experts(&self) -> TensorMap {
        let expected = self.config.expert_shapes(&self.backbone.config);
        to_external_shapes(named::read(self, external_name), &expected)
    }

    /// Loads expert tensors and the head from `map` after checking that its names and shapes are
    /// exactly [`crate::PromptConfig::expert_shapes`] (every problem reported at once, naming the
    /// file).
    pub fn import_experts(self, map: &TensorMap) -> Result<Self, LoadError> {
        let expected = self.config.expert_shapes(&self.backbone.config);
        let model_name = format!(
            "{} experts on {}",
            self.config.method,
            self.backbone.config.display_name()
        );
        map.check(&expected, |_| false, "vapt experts", &model_name)?;
        let (model, used) = named::write(self, map, external_name).map_err(|problems| LoadError::Format {
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
    to_external_shapes(named::read_grads(model, grads, external_name), &expected)
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;
    use vapt_vit::{named, VitConfig};

    use super::*;
    use crate::{Method, PromptConfig};

    /// The module's trainable tensors, named externally, are exactly the table of
    /// `expert_shapes` (same names, same sizes), for every method and the knobs that change them.
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
        for cfg in configs {
            let model = PromptedVit::new(
                vit.init::<Flex>(&Default::default()),
                cfg.clone(),
                &Default::default(),
            )
            .unwrap();
            let ours: Vec<(String, usize)> = named::shapes(&model)
                .into_iter()
                .filter_map(|(p, s)| Some((external_name(&p)?, s.iter().product())))
                .collect();
            let table: Vec<(String, usize)> = cfg
                .expert_shapes(&vit)
                .into_iter()
                .map(|(n, s)| (n, s.iter().product()))
                .collect();
            let sorted = |mut v: Vec<(String, usize)>| {
                v.sort();
                v
            };
            assert_eq!(sorted(ours), sorted(table), "{cfg:?}");
        }
    }
}
