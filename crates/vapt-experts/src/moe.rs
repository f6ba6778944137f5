//! The mixture-of-experts view of attention (SPEC §1).
//!
//! Every attention row is a softmax-gated mixture over experts: the CLS token, the Np prompt
//! experts and the N patch (pre-trained) experts. For each block and head this module reports the
//! gate mass that query rows put on each group — for the CLS query, and averaged over patch
//! queries — averaged over the batch.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use serde::Serialize;

use crate::model::PromptedVit;
use crate::trace::Trace;

/// Softmax gate mass on the three expert groups (sums to 1).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct GateMass {
    /// Mass on the prompt experts (key columns 1..=Np).
    pub prompt: f64,
    /// Mass on the patch experts (key columns 1+Np..T).
    pub patch: f64,
    /// Mass on the CLS key (column 0).
    pub cls: f64,
}

/// Gate masses of one head.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct HeadGates {
    /// For the CLS query row.
    pub cls_query: GateMass,
    /// Averaged over the N patch query rows.
    pub patch_query: GateMass,
}

/// Gate masses for every block (outer) and head (inner).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MoeView {
    /// Prompt experts per block.
    pub num_prompts: usize,
    /// `blocks[l][h]`.
    pub blocks: Vec<Vec<HeadGates>>,
}

/// Gate masses of one block from its attention probabilities `[B, H, T, T]` with `np` prompts
/// after CLS; averaged over the batch.
pub fn gate_masses<B: Backend>(probs: Tensor<B, 4>, np: usize) -> Vec<HeadGates> {
    let [_, h, t, _] = probs.dims();
    let n = t - 1 - np;
    // Column-group sums: [B, H, T, 3] as (prompt, patch, cls).
    let cls = probs.clone().narrow(3, 0, 1);
    let prompt = if np > 0 {
        probs.clone().narrow(3, 1, np).sum_dim(3)
    } else {
        cls.zeros_like()
    };
    let patch = probs.narrow(3, 1 + np, n).sum_dim(3);
    let groups = Tensor::cat(vec![prompt, patch, cls], 3); // [B, H, T, 3]
    let cls_q = groups.clone().narrow(2, 0, 1).mean_dim(0); // [1, H, 1, 3]
    let patch_q = groups.narrow(2, 1 + np, n).mean_dim(2).mean_dim(0); // [1, H, 1, 3]
    let to_vec = |t: Tensor<B, 4>| -> Vec<f64> {
        t.into_data()
            .convert::<f64>()
            .into_vec::<f64>()
            .unwrap_or_default()
    };
    let (cq, pq) = (to_vec(cls_q), to_vec(patch_q));
    (0..h)
        .map(|hh| {
            let m = |v: &[f64]| GateMass {
                prompt: v[hh * 3],
                patch: v[hh * 3 + 1],
                cls: v[hh * 3 + 2],
            };
            HeadGates {
                cls_query: m(&cq),
                patch_query: m(&pq),
            }
        })
        .collect()
}

impl<B: Backend> PromptedVit<B> {
    /// Runs `images` and returns the gate masses of every block and head.
    pub fn moe_view(&self, images: Tensor<B, 4>) -> MoeView {
        let mut trace = Trace::new(false, true);
        let _ = self.forward_traced(images, Some(&mut trace));
        let np = self.prompt_tokens();
        MoeView {
            num_prompts: np,
            blocks: trace.attn.into_iter().map(|p| gate_masses(p, np)).collect(),
        }
    }
}
