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
}

/// Every method with its name (kebab-case, as in configs and `--method`) and the other spellings
/// `--method` accepts. The one place method names are written.
const METHODS: [(Method, &str, &[&str]); 5] = [
    (Method::Linear, "linear", &["linear-probe"]),
    (Method::Full, "full", &["finetune", "full-finetune", "end2end"]),
    (Method::VptShallow, "vpt-shallow", &["shallow"]),
    (Method::VptDeep, "vpt-deep", &["vpt", "deep"]),
    (Method::Vapt, "vapt", &["adaptive"]),
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
        matches!(self, Method::VptShallow | Method::VptDeep | Method::Vapt)
    }

    /// Whether the backbone is frozen (and behaves as in eval: no dropout).
    pub fn frozen_backbone(self) -> bool {
        self != Method::Full
    }
}

impl FromStr for Method {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let key = s.trim().to_ascii_lowercase().replace('_', "-");
        METHODS
            .iter()
            .find(|(_, name, aliases)| *name == key || aliases.contains(&key.as_str()))
            .map(|m| m.0)
            .ok_or_else(|| ConfigError::UnknownMethod(s.to_string(), method_names()))
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `linear, full, vpt-shallow, vpt-deep or vapt`, for messages.
pub fn method_names() -> String {
    let names: Vec<&str> = METHODS.iter().map(|m| m.1).collect();
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
        assert_eq!(method_names(), "linear, full, vpt-shallow, vpt-deep or vapt");
        let err = "lora".parse::<Method>().unwrap_err().to_string();
        assert!(err.contains("vpt-shallow"), "{err}");
    }
}
