//! A task as a run names it ([`DataConfig`]: root, task, format, splits), opened once, and the
//! recipe's transform for its splits.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::DataError;
use crate::fgvc::{self, Fgvc};
use crate::split::Split;
use crate::transform::Transform;
use crate::{folder, vtab};

/// Dataset layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataFormat {
    /// VTAB-1k community folder lists (`<root>/<task>/train800.txt` ...): resize to the input size,
    /// no augmentation.
    Vtab,
    /// VPT's FGVC json (`<root>/<dataset>/train.json` ...): random crop + flip for training,
    /// centre crop for evaluation.
    Fgvc,
    /// Class-per-subfolder trees, one per split (`<root>/<task>/<split>/<class>/<image>`), with
    /// the same class folders in every split: resize to the input size, no augmentation.
    Folder,
}

impl std::str::FromStr for DataFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "vtab" => Ok(Self::Vtab),
            "fgvc" => Ok(Self::Fgvc),
            "folder" => Ok(Self::Folder),
            _ => Err(format!(
                "unknown data format `{s}`: expected vtab, fgvc or folder"
            )),
        }
    }
}

impl DataFormat {
    /// The recipe's preprocessing of a training (`train`) or evaluation split at `size` pixels,
    /// normalised with `mean` / `std`.
    pub fn transform(self, train: bool, size: usize, mean: [f32; 3], std: [f32; 3]) -> Transform {
        match (self, train) {
            (DataFormat::Vtab | DataFormat::Folder, _) => Transform::vtab(size, mean, std),
            (DataFormat::Fgvc, true) => Transform::fgvc_train(size, mean, std),
            (DataFormat::Fgvc, false) => Transform::fgvc_eval(size, mean, std),
        }
    }

    /// The split a run trains on by default (`train800val200`; FGVC and folders: `train`).
    pub fn default_train_split(self) -> &'static str {
        match self {
            DataFormat::Vtab => "train800val200",
            DataFormat::Fgvc | DataFormat::Folder => "train",
        }
    }
}

/// Where a run's images come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// The folder holding the task folders.
    pub root: PathBuf,
    /// Task (VTAB name such as `cifar`, `dtd`, `fashion-mnist-1k`), FGVC dataset (`CUB_200_2011`,
    /// `nabirds`, ...) or a folder name.
    pub task: String,
    /// Layout of the task folder.
    pub format: DataFormat,
    /// Split trained on (`train800val200` for final VTAB runs, `train800` in sweeps; FGVC `train`).
    pub train_split: String,
    /// Split scored at the end (`test`; `val200` in VTAB sweeps; FGVC `val` or `test`).
    pub eval_split: String,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            root: PathBuf::from("datasets"),
            task: "fashion-mnist-1k".into(),
            format: DataFormat::Vtab,
            train_split: "train800val200".into(),
            eval_split: "test".into(),
        }
    }
}

/// The task a data configuration names, opened once (for FGVC: the class map from `train.json`).
#[derive(Debug, Clone)]
pub enum Task {
    /// A VTAB-format task folder.
    Vtab {
        /// The folder holding the task folders.
        root: PathBuf,
        /// The task's registry name.
        name: &'static str,
    },
    /// An FGVC dataset.
    Fgvc(Fgvc),
    /// Class-per-subfolder trees, one per split, under this folder.
    Folder(PathBuf),
}

impl Task {
    /// Opens the task of `data` (checks the name; FGVC reads its class map).
    pub fn open(data: &DataConfig) -> Result<Self, DataError> {
        Ok(match data.format {
            DataFormat::Vtab => Task::Vtab {
                root: data.root.clone(),
                name: vtab::task(&data.task)?.name,
            },
            DataFormat::Fgvc => {
                let info = fgvc::dataset(&data.task)?;
                Task::Fgvc(Fgvc::open(&data.root.join(info.name), info)?)
            }
            DataFormat::Folder => {
                let dir = data.root.join(&data.task);
                if !dir.is_dir() {
                    return Err(DataError::MissingSplit {
                        path: dir,
                        hint: " (a folder task is <root>/<task>/<split>/<class>/<image>)".into(),
                    });
                }
                Task::Folder(dir)
            }
        })
    }

    /// Split `name` (a VTAB list such as `train800`, any other `<name>.txt`, an FGVC json, or a
    /// split folder).
    pub fn split(&self, name: &str) -> Result<Split, DataError> {
        match self {
            Task::Vtab { root, name: task } => vtab::open_named(root, task, name),
            Task::Fgvc(set) => set.split(name),
            Task::Folder(dir) => folder::open(&dir.join(name)),
        }
    }

    /// The training and evaluation splits of `data`; for folders, the evaluation split must have
    /// the training split's classes.
    pub fn splits(&self, data: &DataConfig) -> Result<(Split, Split), DataError> {
        let train = self.split(&data.train_split)?;
        let eval = self.split(&data.eval_split)?;
        if let Task::Folder(_) = self {
            if eval.class_names != train.class_names {
                return Err(DataError::Manifest {
                    path: eval.source.clone(),
                    message: format!(
                        "class folders {:?} differ from the training split's {:?} ({})",
                        eval.class_names,
                        train.class_names,
                        train.source.display()
                    ),
                });
            }
        }
        Ok((train, eval))
    }

    /// The task's folder.
    pub fn dir(&self) -> PathBuf {
        match self {
            Task::Vtab { root, name } => root.join(name),
            Task::Fgvc(set) => set.root.clone(),
            Task::Folder(dir) => dir.clone(),
        }
    }

    /// SHA-256 of the task folder's `vapt-manifest.json`, if it has one.
    pub fn manifest_sha256(&self) -> Option<String> {
        std::fs::read(self.dir().join(crate::verify::MANIFEST))
            .ok()
            .map(|b| vapt_files::sha256_hex(&b))
    }
}
