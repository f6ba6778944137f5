//! Parameters by name: a module's float parameters under their paths (`blocks.3.attn.query.weight`,
//! the field names from the root, `.`-separated, vectors by index), read, written and shaped.
//!
//! vapt's modules name their fields after the tensors they hold, so a path *is* a tensor's name in
//! vapt's native weight layout, in prompt artifacts and in checkpoints; these functions are the one
//! way those files meet the modules. A raw-identifier field (`r#static`) is named without its `r#`.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};

use super::tensor::{RawTensor, TensorMap};

/// The path of the parameter being visited, kept from Burn's enter/exit calls.
#[derive(Debug, Default)]
struct Path(Vec<String>);

impl Path {
    fn enter(&mut self, name: &str) {
        self.0.push(name.trim_start_matches("r#").to_string());
    }

    fn exit(&mut self) {
        self.0.pop();
    }

    fn current(&self) -> String {
        self.0.join(".")
    }
}

/// Implements the path bookkeeping of a visitor or mapper whose `path` field is a [`Path`].
macro_rules! track_path {
    () => {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.enter(name);
        }

        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.exit();
        }
    };
}

/// Every float parameter's path and shape, in module order, without initialising lazy ones.
pub fn shapes<B: Backend, M: Module<B>>(module: &M) -> Vec<(String, Vec<usize>)> {
    struct Shapes {
        path: Path,
        out: Vec<(String, Vec<usize>)>,
    }
    impl<B: Backend> ModuleVisitor<B> for Shapes {
        track_path!();
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.out.push((self.path.current(), param.lazy_shape().to_vec()));
        }
    }
    let mut v = Shapes {
        path: Path::default(),
        out: Vec::new(),
    };
    module.visit(&mut v);
    v.out
}

/// The values of the parameters whose path `name` maps to a key (`None`: left out), read back to
/// the host under that key.
pub fn read<B: Backend, M: Module<B>>(module: &M, name: impl Fn(&str) -> Option<String>) -> TensorMap {
    struct Read<F> {
        path: Path,
        name: F,
        out: TensorMap,
    }
    impl<B: Backend, F: Fn(&str) -> Option<String>> ModuleVisitor<B> for Read<F> {
        track_path!();
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(key) = (self.name)(&self.path.current()) {
                self.out.insert(key, RawTensor::from_tensor(param.val()));
            }
        }
    }
    let mut v = Read {
        path: Path::default(),
        name,
        out: TensorMap::new("<memory>"),
    };
    module.visit(&mut v);
    v.out
}

/// The gradients in `grads` of the parameters whose path `name` maps to a key, under that key;
/// a parameter without a gradient reads as zeros of its shape.
pub fn read_grads<B: AutodiffBackend, M: Module<B>>(
    module: &M,
    grads: &B::Gradients,
    name: impl Fn(&str) -> Option<String>,
) -> TensorMap {
    struct Grads<'a, B: AutodiffBackend, F> {
        path: Path,
        name: F,
        grads: &'a B::Gradients,
        out: TensorMap,
    }
    impl<B: AutodiffBackend, F: Fn(&str) -> Option<String>> ModuleVisitor<B> for Grads<'_, B, F> {
        track_path!();
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(key) = (self.name)(&self.path.current()) {
                let t = param.val();
                let g = match t.grad(self.grads) {
                    Some(g) => RawTensor::from_tensor(g),
                    None => {
                        let shape = t.dims().to_vec();
                        RawTensor::new(shape.clone(), vec![0.0; shape.iter().product()])
                    }
                };
                self.out.insert(key, g);
            }
        }
    }
    let mut v = Grads::<B, _> {
        path: Path::default(),
        name,
        grads,
        out: TensorMap::new("<gradients>"),
    };
    module.visit(&mut v);
    v.out
}

/// Replaces every parameter whose path `name` maps to a key of `values` with that tensor (same
/// number of elements, reshaped to the parameter's shape; device, id and gradient requirement kept;
/// a lazy parameter is never initialised). Returns the module and the keys it used; a key whose
/// tensor has the wrong size is left alone and listed in the error.
pub fn write<B: Backend, M: Module<B>>(
    module: M,
    values: &TensorMap,
    name: impl Fn(&str) -> Option<String>,
) -> Result<(M, Vec<String>), Vec<String>> {
    struct Write<'a, F> {
        path: Path,
        name: F,
        values: &'a TensorMap,
        used: Vec<String>,
        problems: Vec<String>,
    }
    impl<B: Backend, F: Fn(&str) -> Option<String>> ModuleMapper<B> for Write<'_, F> {
        track_path!();
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let Some(key) = (self.name)(&self.path.current()) else {
                return param;
            };
            let Some(t) = self.values.tensors.get(&key) else {
                return param;
            };
            let shape = param.lazy_shape();
            if t.numel() != shape.num_elements() {
                self.problems.push(format!(
                    "{key}: {} values, the model's `{}` has shape {:?}",
                    t.numel(),
                    self.path.current(),
                    shape.as_slice()
                ));
                return param;
            }
            self.used.push(key);
            let device = param.lazy_device();
            let tensor = Tensor::<B, D>::from_data(TensorData::new(t.data.clone(), shape), &device);
            let id = param.id;
            param.transform_for_load(tensor, id)
        }
    }
    let mut m = Write {
        path: Path::default(),
        name,
        values,
        used: Vec::new(),
        problems: Vec::new(),
    };
    let module = module.map(&mut m);
    if m.problems.is_empty() {
        Ok((module, m.used))
    } else {
        Err(m.problems)
    }
}

/// Sets every parameter's gradient requirement to `trains(path)`: how a method unfreezes part of
/// a frozen module (the last blocks, every bias).
pub fn set_trainable<B: Backend, M: Module<B>>(module: M, trains: impl Fn(&str) -> bool) -> M {
    struct Trainable<F> {
        path: Path,
        trains: F,
    }
    impl<B: Backend, F: Fn(&str) -> bool> ModuleMapper<B> for Trainable<F> {
        track_path!();
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let on = (self.trains)(&self.path.current());
            param.set_require_grad(on)
        }
    }
    module.map(&mut Trainable {
        path: Path::default(),
        trains,
    })
}

/// The paths of the parameters that require a gradient, in module order.
pub fn trainable_paths<B: Backend, M: Module<B>>(module: &M) -> Vec<String> {
    struct Trainable {
        path: Path,
        out: Vec<String>,
    }
    impl<B: Backend> ModuleVisitor<B> for Trainable {
        track_path!();
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if param.is_require_grad() {
                self.out.push(self.path.current());
            }
        }
    }
    let mut v = Trainable {
        path: Path::default(),
        out: Vec::new(),
    };
    module.visit(&mut v);
    v.out
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;

    use super::*;
    use crate::VitConfig;

    #[test]
    fn paths_read_back_what_was_written_without_touching_other_parameters() {
        let dev = Default::default();
        let vit = VitConfig::new(8, 2, 2, 16, 4)
            .with_image_size(8)
            .init::<Flex>(&dev);
        let names: Vec<String> = shapes(&vit).into_iter().map(|(k, _)| k).collect();
        assert!(
            names.contains(&"blocks.1.attn.query.weight".to_string()),
            "{names:?}"
        );
        assert!(names.contains(&"blocks.0.norm2.bias".to_string()));
        let mut values = TensorMap::new("test");
        values.insert(
            "q1",
            RawTensor::new(vec![8, 8], (0..64).map(|v| v as f32).collect()),
        );
        let (vit, used) = write(vit, &values, |p| {
            (p == "blocks.1.attn.query.weight").then(|| "q1".to_string())
        })
        .unwrap();
        assert_eq!(used, ["q1"]);
        let back = read(&vit, |p| {
            p.starts_with("blocks.1.attn.query.").then(|| p.to_string())
        });
        assert_eq!(back.tensors.len(), 2, "weight and bias");
        assert_eq!(back.tensors["blocks.1.attn.query.weight"], values.tensors["q1"]);
        let wrong = TensorMap {
            tensors: [("q1".to_string(), RawTensor::new(vec![3], vec![0.0; 3]))].into(),
            ..TensorMap::new("test")
        };
        let err = write(vit, &wrong, |p| (p == "norm.weight").then(|| "q1".to_string())).unwrap_err();
        assert!(
            err[0].contains("norm.weight") && err[0].contains("3 values"),
            "{err:?}"
        );
    }
}
