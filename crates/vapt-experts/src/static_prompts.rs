//! VPT's static prompts (SPEC §2): the block-0 prompt inserted after CLS and, for deep methods, one
//! prompt set per later block that replaces the prompt slots (VPT-deep: every block; VAPT: blocks
//! 1..vpt_depth−1).

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use vapt_kernels::nn::Dropout;
use vapt_vit::VitConfig;

/// Static prompts; module paths `prompt.static` and `prompt.deep_static`.
#[derive(Module, Debug)]
pub struct StaticPrompts<B: Backend> {
    /// `prompt.static`, `[Np, D]`.
    pub r#static: Param<Tensor<B, 2>>,
    /// `prompt.deep_static`, `[rows, Np, D]` (row j is used before block j+1).
    pub deep_static: Option<Param<Tensor<B, 3>>>,
    /// Prompt dropout (training only).
    pub drop: Dropout,
}

/// Uniform init bound of static prompts: √(6 / (3·p² + D)) (VPT's xavier-uniform).
pub fn prompt_init_bound(vit: &VitConfig) -> f64 {
    (6.0 / (3 * vit.patch_size * vit.patch_size + vit.hidden) as f64).sqrt()
}

/// The static-prompt tensors for `np` prompts of width `d` with `rows` deep rows, with their
/// shapes.
pub fn shapes(np: usize, rows: usize, d: usize) -> Vec<(String, Vec<usize>)> {
    let mut v = vec![("prompt.static".to_string(), vec![np, d])];
    if rows > 0 {
        v.push(("prompt.deep_static".to_string(), vec![rows, np, d]));
    }
    v
}

impl<B: Backend> StaticPrompts<B> {
    /// `np` fresh prompts (and `rows` deep rows of them) drawn from U(−v, v) (see
    /// [`prompt_init_bound`]), with prompt dropout `dropout`.
    pub fn new(np: usize, rows: usize, dropout: f64, vit: &VitConfig, device: &B::Device) -> Self {
        let d = vit.hidden;
        let v = prompt_init_bound(vit);
        let uniform = Distribution::Uniform(-v, v);
        Self {
            r#static: Param::from_tensor(Tensor::random([np, d], uniform, device)),
            deep_static: (rows > 0)
                .then(|| Param::from_tensor(Tensor::random([rows, np, d], uniform, device))),
            drop: Dropout::new(dropout),
        }
    }

    /// `x` `[B, 1+N, D]` (CLS, patches) with the block-0 prompts inserted after CLS, after dropout:
    /// `[B, 1+Np+N, D]`. Prompts come after the position embedding, so they get none.
    pub fn insert(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, t, d] = x.dims();
        let [np, _] = self.r#static.dims();
        let prompts = self
            .drop
            .forward(self.r#static.val().unsqueeze::<3>().expand([b, np, d]));
        Tensor::cat(vec![x.clone().narrow(1, 0, 1), prompts, x.narrow(1, 1, t - 1)], 1)
    }

    /// The deep prompts used before block `row + 1`, broadcast over the batch and after dropout:
    /// `[batch, Np, D]`.
    pub fn deep(&self, row: usize, batch: usize) -> Option<Tensor<B, 3>> {
        let deep = self.deep_static.as_ref()?.val();
        let [_, np, d] = deep.dims();
        Some(self.drop.forward(deep.narrow(0, row, 1).expand([batch, np, d])))
    }
}
