//! Recording a forward pass: the per-block intermediates the parity fixtures store (`out.*`) and
//! every block's attention probabilities (the MoE view). A forward pass reports to a [`Recorder`],
//! which does nothing — not even compute what it would record — unless a [`Trace`] asked for it.

use std::collections::BTreeMap;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::adaptive::GeneratorTrace;

/// Tensors recorded during a forward pass (for parity checks and the MoE view).
#[derive(Debug)]
pub struct Trace<B: Backend> {
    /// Record the per-block intermediates named as in the parity fixtures (`out.*`).
    pub intermediates: bool,
    /// Keep every block's attention probabilities `[B, H, T, T]`.
    pub attention: bool,
    /// Recorded tensors by fixture name, flattened, with their shapes.
    pub tensors: BTreeMap<String, (Vec<usize>, Tensor<B, 1>)>,
    /// Attention probabilities per block (when `attention`).
    pub attn: Vec<Tensor<B, 4>>,
}

impl<B: Backend> Trace<B> {
    /// A trace recording the intermediates and/or attention.
    pub fn new(intermediates: bool, attention: bool) -> Self {
        Self {
            intermediates,
            attention,
            tensors: BTreeMap::new(),
            attn: Vec::new(),
        }
    }
}

/// What a forward pass reports to; inert without a trace.
pub struct Recorder<'a, B: Backend> {
    trace: Option<&'a mut Trace<B>>,
    /// Prompt tokens after CLS.
    np: usize,
}

impl<'a, B: Backend> Recorder<'a, B> {
    /// A recorder into `trace` (none: records nothing) for a sequence with `np` prompt tokens.
    pub fn new(trace: Option<&'a mut Trace<B>>, np: usize) -> Self {
        Self { trace, np }
    }

    /// Whether per-block intermediates are wanted (generators then keep theirs).
    pub fn intermediates(&self) -> bool {
        self.trace.as_ref().is_some_and(|t| t.intermediates)
    }

    /// Whether the blocks must return their attention probabilities.
    pub fn attention(&self) -> bool {
        self.trace.as_ref().is_some_and(|t| t.attention)
    }

    /// Records `make()` under `name` when intermediates are wanted.
    pub fn tensor<const D: usize>(&mut self, name: impl Into<String>, make: impl FnOnce() -> Tensor<B, D>) {
        if let Some(t) = self.trace.as_deref_mut().filter(|t| t.intermediates) {
            let tensor = make();
            let shape = tensor.dims().to_vec();
            let n: usize = shape.iter().product();
            t.tensors.insert(name.into(), (shape, tensor.reshape([n])));
        }
    }

    /// The input `x` `[B, T, D]` of block `i`: its prompt tokens, CLS token and patch mean.
    pub fn block_input(&mut self, i: usize, x: &Tensor<B, 3>) {
        if !self.intermediates() {
            return;
        }
        let [b, t, d] = x.dims();
        let np = self.np;
        if np > 0 {
            self.tensor(format!("out.prompts.{i}"), || x.clone().narrow(1, 1, np));
        }
        self.tensor(format!("out.block_in_cls.{i}"), || {
            x.clone().narrow(1, 0, 1).reshape([b, d])
        });
        self.tensor(format!("out.block_in_patch_mean.{i}"), || {
            x.clone()
                .narrow(1, 1 + np, t - 1 - np)
                .mean_dim(1)
                .reshape([b, d])
        });
    }

    /// The intermediates of adaptive generator `k` (the first two channels of the grids).
    pub fn generator(&mut self, k: usize, g: Option<GeneratorTrace<B>>) {
        let Some(g) = g else { return };
        let [b, d, g1, g2] = g.norm_grid.dims();
        let c = 2.min(d);
        let c01 = g.norm_grid.narrow(1, 0, c);
        if g1 == 1 {
            // Without conv the grid is the token sequence: [B, 2, N].
            self.tensor(format!("out.vapt.{k}.norm_grid_c01"), || c01.reshape([b, c, g2]));
        } else {
            self.tensor(format!("out.vapt.{k}.norm_grid_c01"), || c01);
        }
        if let Some(conv) = g.conv {
            self.tensor(format!("out.vapt.{k}.conv_c01"), || conv.narrow(1, 0, c));
        }
        self.tensor(format!("out.vapt.{k}.token_proj"), || g.token_proj);
    }

    /// The adapter branch `up(GELU(down(m)))` of block `i`, `[B, T, D]`: at CLS and averaged over
    /// the patch rows.
    pub fn adapter(&mut self, i: usize, branch: &Tensor<B, 3>) {
        let [b, t, d] = branch.dims();
        let np = self.np;
        self.tensor(format!("out.adapter.{i}.delta_cls"), || {
            branch.clone().narrow(1, 0, 1).reshape([b, d])
        });
        if t > 1 + np {
            self.tensor(format!("out.adapter.{i}.delta_patch_mean"), || {
                branch
                    .clone()
                    .narrow(1, 1 + np, t - 1 - np)
                    .mean_dim(1)
                    .reshape([b, d])
            });
        }
    }

    /// The attention probabilities of the next block.
    pub fn attention_probs(&mut self, probs: Tensor<B, 4>) {
        if let Some(t) = self.trace.as_deref_mut() {
            t.attn.push(probs);
        }
    }
}
