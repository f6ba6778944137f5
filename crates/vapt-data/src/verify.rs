//! `vapt data verify`: every listed file exists and decodes; counts per split and class; a SHA-256
//! manifest is written (`vapt-manifest.json`) or, when present, checked.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::DataError;
use crate::split::Split;
use crate::vtab::VtabSplit;

/// File name of the manifest inside a dataset folder.
pub const MANIFEST: &str = "vapt-manifest.json";

/// Counts of one split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitSummary {
    /// Split name.
    pub name: String,
    /// Images.
    pub images: usize,
    /// Images per class.
    pub class_counts: Vec<usize>,
}

/// The manifest: per-file SHA-256 (paths relative to the dataset folder) and split counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Split counts.
    pub splits: Vec<SplitSummary>,
    /// `relative path → sha256`.
    pub files: BTreeMap<String, String>,
}

/// What `verify` found.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    /// The manifest of the folder as it is now.
    pub manifest: Manifest,
    /// Where the manifest is.
    pub manifest_path: PathBuf,
    /// Whether it was written now (false: an existing one was checked and matched).
    pub written: bool,
    /// SHA-256 of the manifest file (identifies the data in run records).
    pub manifest_sha256: String,
}

/// The splits of a dataset folder: VTAB lists (any of the four present), FGVC json files, or a
/// class-per-folder tree.
pub fn discover(dir: &Path, num_classes: Option<usize>) -> Result<Vec<Split>, DataError> {
    let lists: Vec<VtabSplit> = VtabSplit::ALL
        .into_iter()
        .filter(|s| dir.join(format!("{}.txt", s.name())).is_file())
        .collect();
    if !lists.is_empty() {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let classes = match num_classes {
            Some(c) => c,
            None => crate::vtab::task(&name)?.classes,
        };
        return lists
            .into_iter()
            .map(|s| crate::vtab::open_dir(dir, classes, s))
            .collect();
    }
    if dir.join("train.json").is_file() {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let fgvc = match crate::fgvc::dataset(&name) {
            Ok(info) => crate::fgvc::Fgvc::open(dir, info)?,
            Err(_) => crate::fgvc::Fgvc::open_with_image_dir(dir, dir)?,
        };
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map_err(|e| DataError::io(dir, e))?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| n != MANIFEST)
            .filter_map(|n| n.strip_suffix(".json").map(str::to_string))
            .collect();
        names.sort();
        return names.iter().map(|n| fgvc.split(n)).collect();
    }
    Ok(vec![crate::folder::open(dir)?])
}

/// Verifies `dir` (see the module docs). An existing manifest that disagrees is an error listing
/// the differing files; nothing is overwritten.
pub fn verify(dir: &Path, num_classes: Option<usize>) -> Result<VerifyReport, DataError> {
    let splits = discover(dir, num_classes)?;
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    let mut summaries = Vec::new();
    for split in &splits {
        let hashes: Vec<(String, String)> = split
            .samples
            .par_iter()
            .map(|s| {
                if let Some(problem) = crate::images::not_a_file(&s.path) {
                    return Err(DataError::MissingImage {
                        path: s.path.clone(),
                        problem,
                        list: split.source.clone(),
                        line: s.line,
                    });
                }
                let bytes = std::fs::read(&s.path).map_err(|e| DataError::io(&s.path, e))?;
                crate::images::decode_bytes(&s.path, &bytes)?;
                let rel = s
                    .path
                    .strip_prefix(dir)
                    .unwrap_or(&s.path)
                    .to_string_lossy()
                    .replace('\\', "/");
                Ok((rel, vapt_files::sha256_hex(&bytes)))
            })
            .collect::<Result<_, DataError>>()?;
        files.extend(hashes);
        summaries.push(SplitSummary {
            name: split.name.clone(),
            images: split.len(),
            class_counts: split.class_counts(),
        });
    }
    let manifest = Manifest {
        splits: summaries,
        files,
    };
    let path = dir.join(MANIFEST);
    let text = serde_json::to_string_pretty(&manifest).unwrap_or_default() + "\n";
    if path.is_file() {
        let old_text = std::fs::read_to_string(&path).map_err(|e| DataError::io(&path, e))?;
        let old: Manifest = serde_json::from_str(&old_text).map_err(|e| DataError::Manifest {
            path: path.clone(),
            message: format!("not a valid manifest: {e}"),
        })?;
        if old != manifest {
            let mut diffs: Vec<String> = Vec::new();
            for (k, v) in &manifest.files {
                match old.files.get(k) {
                    None => diffs.push(format!("new file {k}")),
                    Some(o) if o != v => diffs.push(format!("changed {k}")),
                    _ => {}
                }
            }
            diffs.extend(
                old.files
                    .keys()
                    .filter(|k| !manifest.files.contains_key(*k))
                    .map(|k| format!("missing {k}")),
            );
            if old.splits != manifest.splits {
                diffs.push("split counts differ".into());
            }
            let shown: Vec<_> = diffs.iter().take(20).cloned().collect();
            return Err(DataError::Manifest {
                path,
                message: format!(
                    "the data no longer matches the manifest ({} differences): {}{}",
                    diffs.len(),
                    shown.join("; "),
                    if diffs.len() > 20 { "; ..." } else { "" }
                ),
            });
        }
        return Ok(VerifyReport {
            manifest,
            manifest_path: path,
            written: false,
            manifest_sha256: vapt_files::sha256_hex(old_text.as_bytes()),
        });
    }
    vapt_files::write_atomic(&path, text.as_bytes()).map_err(|e| DataError::io(&e.path, e.source))?;
    Ok(VerifyReport {
        manifest,
        manifest_path: path,
        written: true,
        manifest_sha256: vapt_files::sha256_hex(text.as_bytes()),
    })
}
