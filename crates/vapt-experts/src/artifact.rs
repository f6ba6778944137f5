//! The prompt-only artifact: the trained expert tensors and head as safetensors, with a JSON
//! header that pins the backbone they belong to. A few hundred KB instead of a whole model.
//!
//! Metadata keys: `vapt.artifact` (format version), `vapt.prompt_config` (the [`PromptConfig`]),
//! `vapt.backbone` (the backbone [`VitConfig`]) and `vapt.backbone_sha256` (SHA-256 of the backbone
//! weights file, when known).

use std::path::Path;

use burn::tensor::backend::Backend;
use vapt_vit::weights::read_any;
use vapt_vit::weights::write_safetensors;
use vapt_vit::{LoadError, VitConfig};

use crate::config::PromptConfig;
use crate::model::PromptedVit;

/// Format version written to `vapt.artifact`.
pub const ARTIFACT_VERSION: &str = "1";

/// Errors from saving or loading a prompt artifact; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// Reading, writing or tensor-level problems.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The header is missing or malformed.
    #[error("{path}: not a vapt prompt artifact: {message}", path = .path.display())]
    Header {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The artifact was trained on another backbone.
    #[error("{path}: these prompts were trained on {expected}, but the backbone given is {found}", path = .path.display())]
    BackboneMismatch {
        /// The file.
        path: std::path::PathBuf,
        /// The backbone recorded in the artifact.
        expected: String,
        /// The backbone offered.
        found: String,
    },
}

/// What an artifact's header says.
#[derive(Debug, Clone, PartialEq)]
pub struct ArtifactHeader {
    /// Method and knobs.
    pub prompt: PromptConfig,
    /// The backbone architecture.
    pub backbone: VitConfig,
    /// SHA-256 of the backbone weights, if it was known when saving.
    pub backbone_sha256: Option<String>,
}

/// Writes the experts and head of `model` to `path` (atomically).
pub fn save_artifact<B: Backend>(
    model: &PromptedVit<B>,
    backbone_sha256: Option<&str>,
    path: &Path,
) -> Result<(), ArtifactError> {
    let mut map = model.export_experts();
    let json = |v: Result<String, serde_json::Error>| {
        v.map_err(|e| ArtifactError::Header {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    };
    map.metadata
        .insert("vapt.artifact".into(), ARTIFACT_VERSION.into());
    map.metadata.insert(
        "vapt.prompt_config".into(),
        json(serde_json::to_string(&model.config))?,
    );
    map.metadata.insert(
        "vapt.backbone".into(),
        json(serde_json::to_string(&model.backbone.config))?,
    );
    if let Some(sha) = backbone_sha256 {
        map.metadata
            .insert("vapt.backbone_sha256".into(), sha.to_string());
    }
    Ok(write_safetensors(path, &map)?)
}

/// Reads only the header of an artifact.
pub fn read_header(path: &Path) -> Result<(ArtifactHeader, vapt_vit::TensorMap), ArtifactError> {
    let (map, _) = read_any(path)?;
    let header_err = |message: String| ArtifactError::Header {
        path: path.to_path_buf(),
        message,
    };
    if map.metadata.get("vapt.artifact").map(String::as_str) != Some(ARTIFACT_VERSION) {
        return Err(header_err(format!(
            "metadata `vapt.artifact` is {:?}, expected \"{ARTIFACT_VERSION}\"",
            map.metadata.get("vapt.artifact")
        )));
    }
    let get = |k: &str| {
        map.metadata
            .get(k)
            .ok_or_else(|| header_err(format!("no `{k}` metadata")))
    };
    let prompt: PromptConfig = serde_json::from_str(get("vapt.prompt_config")?)
        .map_err(|e| header_err(format!("bad `vapt.prompt_config`: {e}")))?;
    let backbone: VitConfig = serde_json::from_str(get("vapt.backbone")?)
        .map_err(|e| header_err(format!("bad `vapt.backbone`: {e}")))?;
    let backbone_sha256 = map.metadata.get("vapt.backbone_sha256").cloned();
    Ok((
        ArtifactHeader {
            prompt,
            backbone,
            backbone_sha256,
        },
        map,
    ))
}

/// Loads an artifact onto `backbone` (whose weights file hash is `backbone_sha256`, if known).
///
/// The backbone's architecture must equal the recorded one (dropout aside), and when both hashes
/// are known they must be equal.
pub fn load_artifact<B: Backend>(
    path: &Path,
    backbone: vapt_vit::Vit<B>,
    backbone_sha256: Option<&str>,
    device: &B::Device,
) -> Result<PromptedVit<B>, ArtifactError> {
    let (header, map) = read_header(path)?;
    let shape = |c: &VitConfig| {
        (
            c.image_size,
            c.patch_size,
            c.in_channels,
            c.hidden,
            c.depth,
            c.heads,
            c.mlp_dim,
            c.kind,
        )
    };
    if shape(&header.backbone) != shape(&backbone.config) {
        return Err(ArtifactError::BackboneMismatch {
            path: path.to_path_buf(),
            expected: header.backbone.display_name(),
            found: backbone.config.display_name(),
        });
    }
    if let (Some(want), Some(have)) = (header.backbone_sha256.as_deref(), backbone_sha256) {
        if want != have {
            return Err(ArtifactError::BackboneMismatch {
                path: path.to_path_buf(),
                expected: format!("weights with SHA-256 {want}"),
                found: format!("weights with SHA-256 {have}"),
            });
        }
    }
    let model = PromptedVit::new(backbone, header.prompt, device).map_err(|e| ArtifactError::Header {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(model.import_experts(&map)?)
}
