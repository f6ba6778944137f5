//! Extension points inside a block, for methods that add trainable paths to the frozen backbone's
//! computation rather than tokens to its sequence: a low-rank update on a projection (LoRA), a
//! bottleneck on the MLP's output (adapters).
//!
//! The backbone knows nothing of those methods: a block asks a [`BlockDelta`] for an addition to
//! each projection's output and hands it the MLP output before the residual. [`NoDelta`] is the
//! plain block.

use std::fmt;
use std::str::FromStr;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::config::VitConfig;

/// A linear projection inside a block, named as its module (`attn.query`, `mlp.fc1`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Projection {
    /// `attn.query`.
    Query,
    /// `attn.key`.
    Key,
    /// `attn.value`.
    Value,
    /// `attn.out`, the attention's output projection.
    Out,
    /// `mlp.fc1`.
    Fc1,
    /// `mlp.fc2`.
    Fc2,
}

/// Every projection with its name and the short spellings accepted on the command line (peft's
/// `q`, `k`, `v`, `o`). The one place projection names are written.
const PROJECTIONS: [(Projection, &str, &str); 6] = [
    (Projection::Query, "query", "q"),
    (Projection::Key, "key", "k"),
    (Projection::Value, "value", "v"),
    (Projection::Out, "out", "o"),
    (Projection::Fc1, "fc1", "fc1"),
    (Projection::Fc2, "fc2", "fc2"),
];

impl Projection {
    /// Every projection, in block order.
    pub fn all() -> impl Iterator<Item = Projection> {
        PROJECTIONS.iter().map(|p| p.0)
    }

    /// The module name (`query`, `fc1`).
    pub fn name(self) -> &'static str {
        PROJECTIONS
            .iter()
            .find(|p| p.0 == self)
            .map(|p| p.1)
            .unwrap_or_else(|| unreachable!("every projection is in the table"))
    }

    /// The module path inside block `i` (`blocks.3.attn.query`).
    pub fn path(self, block: usize) -> String {
        let group = match self {
            Projection::Fc1 | Projection::Fc2 => "mlp",
            _ => "attn",
        };
        format!("blocks.{block}.{group}.{}", self.name())
    }

    /// (input, output) widths on a backbone of `cfg`.
    pub fn dims(self, cfg: &VitConfig) -> (usize, usize) {
        match self {
            Projection::Fc1 => (cfg.hidden, cfg.mlp_dim),
            Projection::Fc2 => (cfg.mlp_dim, cfg.hidden),
            _ => (cfg.hidden, cfg.hidden),
        }
    }
}

impl FromStr for Projection {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let key = s.trim().to_ascii_lowercase();
        PROJECTIONS
            .iter()
            .find(|(_, name, short)| *name == key || *short == key)
            .map(|p| p.0)
            .ok_or_else(|| {
                let names: Vec<String> = PROJECTIONS.iter().map(|p| format!("{} ({})", p.1, p.2)).collect();
                format!("unknown projection `{s}`: expected one of {}", names.join(", "))
            })
    }
}

impl fmt::Display for Projection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a method adds inside one block.
pub trait BlockDelta<B: Backend> {
    /// An addition to projection `p`'s output for its input `x` (`None`: nothing added).
    fn projection(&self, p: Projection, x: &Tensor<B, 3>) -> Option<Tensor<B, 3>> {
        let _ = (p, x);
        None
    }

    /// The MLP's output `m` as the residual receives it (adapters act here).
    fn mlp_output(&self, m: Tensor<B, 3>) -> Tensor<B, 3> {
        m
    }
}

/// The plain block: nothing added.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoDelta;

impl<B: Backend> BlockDelta<B> for NoDelta {}
