//! What happens to the prompt slots before each block, decided once when a model is built: the
//! per-block plan that the forward pass follows without looking at the method again.

use serde::{Deserialize, Serialize};

use crate::config::PromptConfig;
use crate::method::Method;

/// The prompt slots (tokens 1..=Np) before one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlockInput {
    /// Left as the previous block wrote them (or no prompts at all).
    Keep,
    /// Replaced by row `r` of `prompt.deep_static` (VPT-deep; VAPT before `vpt_depth`).
    Static(usize),
    /// Replaced by adaptive generator `k`'s prompts (VAPT from `vpt_depth` on).
    Adaptive(usize),
}

/// The plan for a backbone of `depth` blocks. Block 0 always keeps: its prompts are inserted with
/// the embedding.
pub fn plan(cfg: &PromptConfig, depth: usize) -> Vec<BlockInput> {
    let static_rows = cfg.num_deep_static(depth);
    (0..depth)
        .map(|i| match i {
            0 => BlockInput::Keep,
            _ if !cfg.method.has_prompts() => BlockInput::Keep,
            _ if i - 1 < static_rows => BlockInput::Static(i - 1),
            _ if cfg.method == Method::Vapt => BlockInput::Adaptive(i - cfg.vapt.vpt_depth),
            _ => BlockInput::Keep,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use BlockInput::*;

    #[test]
    fn plans_follow_the_official_schedules() {
        let p = |m: Method, depth: usize| {
            let mut c = PromptConfig::new(m, 5, 0);
            c.vapt.vpt_depth = depth;
            plan(&c, 5)
        };
        assert_eq!(p(Method::Linear, 1), [Keep; 5]);
        assert_eq!(p(Method::VptShallow, 1), [Keep; 5]);
        assert_eq!(
            p(Method::VptDeep, 1),
            [Keep, Static(0), Static(1), Static(2), Static(3)]
        );
        assert_eq!(
            p(Method::Vapt, 1),
            [Keep, Adaptive(0), Adaptive(1), Adaptive(2), Adaptive(3)]
        );
        assert_eq!(
            p(Method::Vapt, 3),
            [Keep, Static(0), Static(1), Adaptive(0), Adaptive(1)]
        );
    }
}
