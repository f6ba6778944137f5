//! The methods vapt trains on a frozen backbone, named once.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// What is trained on top of the backbone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Linear probe: frozen backbone, only the head trains.
    Linear,
    /// Full fine-tuning: every backbone parameter trains (backbone dropout active).
    Full,
    /// VPT-shallow: Np static prompts inserted after CLS before block 0.
    VptShallow,
    /// VPT-deep: a fresh set of static prompts replaces the prompt slots before every block.
    VptDeep,
    /// VAPT: static prompts at block 0 (and blocks 1..vpt_depth−1), adaptive prompts after.
    Vapt,
    /// Partial-k: the last k blocks and the final norm train (`partial_blocks`).
    Partial,
    /// MLP-k: a k-layer MLP head on the frozen features (`mlp_layers`).
    Mlp,
    /// Bias tuning (BitFit; the authors' `tinytl-bias`): every backbone bias trains.
    Bias,
    /// VPT-deep prompts and every backbone bias (the paper's prompt + bias row).
    #[serde(rename = "vpt-deep+bias")]
    VptDeepBias,
    /// Pfeiffer adapters after every block's MLP.
    Adapter,
    /// LoRA: low-rank updates on the chosen projections.
    Lora,
}

/// Which backbone tensors a method trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackboneTraining {
    /// None (the backbone is frozen).
    Nothing,
    /// Every one (full fine-tuning).
    Everything,
    /// The last `partial_blocks` blocks and the final norm.
    LastBlocks,
    /// Every bias.
    Biases,
}

/// Every method with its name (as in configs and `--method`), the other spellings `--method`
/// accepts, and whether a `-k` suffix sets its size (`partial-2`, `mlp-3`). The one place method
/// names are written.
const METHODS: [(Method, &str, &[&str], bool); 11] = [
    (Method::Linear, "linear", &["linear-probe"], false),
    (
        Method::Full,
        "full",
        &["finetune", "full-finetune", "end2end"],
        false,
    ),
    (Method::VptShallow, "vpt-shallow", &["shallow"], false),
    (Method::VptDeep, "vpt-deep", &["vpt", "deep"], false),
    (Method::Vapt, "vapt", &["adaptive"], false),
    (Method::Partial, "partial", &[], true),
    (Method::Mlp, "mlp", &[], true),
    (Method::Bias, "bias", &["bitfit", "tinytl-bias"], false),
    (
        Method::VptDeepBias,
        "vpt-deep+bias",
        &["prompt+bias", "vpt+bias"],
        false,
    ),
    (Method::Adapter, "adapter", &["adapters", "pfeiffer"], false),
    (Method::Lora, "lora", &[], false),
];

impl Method {
    /// Every method, in the order of the table.
    pub fn all() -> impl Iterator<Item = Method> {
        METHODS.iter().map(|m| m.0)
    }

    /// Kebab-case name (`vpt-deep`).
    pub fn name(self) -> &'static str {
        METHODS
            .iter()
            .find(|m| m.0 == self)
            .map(|m| m.1)
            .unwrap_or_else(|| unreachable!("every method is in the table"))
    }

    /// Whether the method inserts prompt tokens.
    pub fn has_prompts(self) -> bool {
        matches!(
            self,
            Method::VptShallow | Method::VptDeep | Method::Vapt | Method::VptDeepBias
        )
    }

    /// Whether the method's prompts are replaced before every block (VPT-deep).
    pub fn deep_prompts(self) -> bool {
        matches!(self, Method::VptDeep | Method::VptDeepBias)
    }

    /// Whether the backbone behaves as in eval (no dropout): every method but `full`, as the
    /// authors' code keeps a frozen encoder in eval mode.
    pub fn frozen_backbone(self) -> bool {
        self != Method::Full
    }

    /// Which backbone tensors train.
    pub fn backbone_training(self) -> BackboneTraining {
        match self {
            Method::Full => BackboneTraining::Everything,
            Method::Partial => BackboneTraining::LastBlocks,
            Method::Bias | Method::VptDeepBias => BackboneTraining::Biases,
            _ => BackboneTraining::Nothing,
        }
    }

    /// Whether only the head trains on the frozen backbone's features (which can then be computed
    /// once: linear and MLP probes).
    pub fn head_only(self) -> bool {
        matches!(self, Method::Linear | Method::Mlp)
    }
}

/// A method as written on the command line: its name, and for `partial` and `mlp` an optional
/// `-k` (`partial-2`: the last two blocks; `mlp-3`: three layers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodSpec {
    /// The method.
    pub method: Method,
    /// The `-k` suffix, if given.
    pub k: Option<usize>,
}

impl FromStr for MethodSpec {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let key = s.trim().to_ascii_lowercase().replace('_', "-");
        let find = |name: &str| {
            METHODS
                .iter()
                .find(|(_, n, aliases, _)| *n == name || aliases.contains(&name))
        };
        if let Some(m) = find(&key) {
            return Ok(MethodSpec { method: m.0, k: None });
        }
        if let Some((name, k)) = key.rsplit_once('-') {
            if let (Some(m), Ok(k)) = (find(name), k.parse::<usize>()) {
                if m.3 && k > 0 {
                    return Ok(MethodSpec {
                        method: m.0,
                        k: Some(k),
                    });
                }
            }
        }
        Err(ConfigError::UnknownMethod(s.to_string(), method_names()))
    }
}

impl FromStr for Method {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(s.parse::<MethodSpec>()?.method)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `linear, full, …, adapter or lora`, for messages (sized methods as `partial-k`).
pub fn method_names() -> String {
    let names: Vec<String> = METHODS
        .iter()
        .map(|m| {
            if m.3 {
                format!("{}-k", m.1)
            } else {
                m.1.to_string()
            }
        })
        .collect();
    match names.split_last() {
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_aliases_round_trip() {
        for m in Method::all() {
            assert_eq!(m.name().parse::<Method>(), Ok(m));
            assert_eq!(serde_json::to_string(&m).unwrap(), format!("\"{}\"", m.name()));
        }
        assert_eq!("VPT_deep".parse::<Method>(), Ok(Method::VptDeep));
        assert_eq!("linear-probe".parse::<Method>(), Ok(Method::Linear));
        assert_eq!("prompt+bias".parse::<Method>(), Ok(Method::VptDeepBias));
        assert_eq!(
            "partial-2".parse::<MethodSpec>(),
            Ok(MethodSpec {
                method: Method::Partial,
                k: Some(2)
            })
        );
        assert_eq!("mlp".parse::<MethodSpec>().map(|m| m.k), Ok(None));
        assert!(
            "lora-2".parse::<MethodSpec>().is_err(),
            "only sized methods take -k"
        );
        assert!("partial-0".parse::<MethodSpec>().is_err());
        assert_eq!(
            method_names(),
            "linear, full, vpt-shallow, vpt-deep, vapt, partial-k, mlp-k, bias, vpt-deep+bias, \
             adapter or lora"
        );
        let err = "loraa".parse::<Method>().unwrap_err().to_string();
        assert!(err.contains("vpt-shallow") && err.contains("partial-k"), "{err}");
    }
}
