//! Errors in a prompt-expert configuration.

/// Errors in a prompt-expert configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A method name that is not one of the known ones (the name given, the known names).
    #[error("unknown method `{0}`: expected {1}")]
    UnknownMethod(String, String),
    /// An activation name that is not known.
    #[error("unknown activation `{0}`: expected relu, gelu, sigmoid, attention or identity")]
    UnknownActivation(String),
    /// Inconsistent knobs.
    #[error("invalid prompt configuration: {0}")]
    Invalid(String),
}
