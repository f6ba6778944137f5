//! VTAB-1k in the community folder format (NOAH / SSF / FacT / V-PETL):
//!
//! ```text
//! <root>/<task>/train800.txt  val200.txt  train800val200.txt  test.txt
//! <root>/<task>/images/...    (paths in the lists are relative to the task folder)
//! ```
//! Each list line is `<relative path> <int label>`, whitespace-separated.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::DataError;
use crate::split::{Sample, Split};

/// VTAB task group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Group {
    /// Natural images.
    Natural,
    /// Specialized (medical, remote sensing).
    Specialized,
    /// Structured (counting, distance, orientation).
    Structured,
    /// Not part of VTAB (vapt's embedded task).
    Extra,
}

/// One registered task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TaskInfo {
    /// Folder name.
    pub name: &'static str,
    /// Number of classes.
    pub classes: usize,
    /// Group.
    pub group: Group,
}

const fn t(name: &'static str, classes: usize, group: Group) -> TaskInfo {
    TaskInfo { name, classes, group }
}

/// The 19 VTAB-1k tasks (folder names and class counts of `tune_vtab.py`; KITTI has 4 classes),
/// plus vapt's embedded `fashion-mnist-1k`.
pub const TASKS: [TaskInfo; 21] = [
    t("cifar", 100, Group::Natural),
    t("caltech101", 102, Group::Natural),
    t("dtd", 47, Group::Natural),
    t("oxford_flowers102", 102, Group::Natural),
    t("oxford_iiit_pet", 37, Group::Natural),
    t("svhn", 10, Group::Natural),
    t("sun397", 397, Group::Natural),
    t("patch_camelyon", 2, Group::Specialized),
    t("eurosat", 10, Group::Specialized),
    t("resisc45", 45, Group::Specialized),
    t("diabetic_retinopathy", 5, Group::Specialized),
    t("clevr_count", 8, Group::Structured),
    t("clevr_dist", 6, Group::Structured),
    t("dmlab", 6, Group::Structured),
    t("kitti", 4, Group::Structured),
    t("dsprites_loc", 16, Group::Structured),
    t("dsprites_ori", 16, Group::Structured),
    t("smallnorb_azi", 18, Group::Structured),
    t("smallnorb_ele", 9, Group::Structured),
    t("fashion-mnist-1k", 10, Group::Extra),
    t("mnist", 10, Group::Extra),
];

/// Looks a task up by folder name.
pub fn task(name: &str) -> Result<TaskInfo, DataError> {
    TASKS
        .iter()
        .copied()
        .find(|t| t.name == name)
        .ok_or_else(|| DataError::UnknownTask {
            name: name.to_string(),
            known: TASKS.iter().map(|t| t.name).collect::<Vec<_>>().join(", "),
        })
}

/// The four splits of the format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum VtabSplit {
    /// 800 training images (sweep).
    Train800,
    /// 200 validation images (sweep selection).
    Val200,
    /// The 1,000 images (final runs).
    Train800Val200,
    /// The test set.
    Test,
}

impl VtabSplit {
    /// All four.
    pub const ALL: [VtabSplit; 4] = [Self::Train800, Self::Val200, Self::Train800Val200, Self::Test];

    /// List file stem.
    pub fn name(self) -> &'static str {
        match self {
            Self::Train800 => "train800",
            Self::Val200 => "val200",
            Self::Train800Val200 => "train800val200",
            Self::Test => "test",
        }
    }
}

/// Reads one list file: `<relative path> <label>` per line; blank lines are skipped. Paths are
/// joined to `task_dir`; labels must lie below `classes`. Image existence is not checked here.
pub fn read_list(list: &Path, task_dir: &Path, classes: usize) -> Result<Vec<Sample>, DataError> {
    let bytes = std::fs::read(list).map_err(|e| DataError::io(list, e))?;
    parse_list(&bytes, list, task_dir, classes)
}

/// Parses the content of list file `list` (see [`read_list`]); a line that is not UTF-8 is an
/// error with its number.
pub fn parse_list(
    bytes: &[u8],
    list: &Path,
    task_dir: &Path,
    classes: usize,
) -> Result<Vec<Sample>, DataError> {
    let mut samples = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = i + 1;
        let err = |message: String| DataError::Line {
            path: list.to_path_buf(),
            line,
            message,
        };
        let raw = std::str::from_utf8(raw).map_err(|e| err(format!("not UTF-8 text ({e})")))?;
        let content = raw.trim();
        if content.is_empty() {
            continue;
        }
        let mut parts = content.split_whitespace();
        let (Some(rel), Some(label)) = (parts.next(), parts.next()) else {
            return Err(err(format!(
                "expected `<image path> <label>`, found `{content}` (no label)"
            )));
        };
        if parts.next().is_some() {
            return Err(err(format!(
                "expected two fields `<image path> <label>`, found `{content}` (a path with spaces?)"
            )));
        }
        let label: usize = label
            .parse()
            .map_err(|_| err(format!("label `{label}` is not a non-negative integer")))?;
        if label >= classes {
            return Err(err(format!(
                "label {label} is out of range: the task has {classes} classes"
            )));
        }
        samples.push(Sample {
            path: task_dir.join(rel),
            label,
            line: Some(line),
        });
    }
    if samples.is_empty() {
        return Err(DataError::EmptySplit {
            path: list.to_path_buf(),
        });
    }
    Ok(samples)
}

/// Opens split `split` of VTAB task `name` under `root` (the folder holding the task folders).
pub fn open(root: &Path, name: &str, split: VtabSplit) -> Result<Split, DataError> {
    let info = task(name)?;
    open_dir(&root.join(name), info.classes, split)
}

/// Opens split `split` of task `name`: one of the four VTAB-1k lists, or any other
/// `<root>/<name>/<split>.txt` in the same format (e.g. `train`, `val` of a larger task).
pub fn open_named(root: &Path, name: &str, split: &str) -> Result<Split, DataError> {
    let info = task(name)?;
    let dir = root.join(name);
    if let Some(s) = VtabSplit::ALL.into_iter().find(|s| s.name() == split) {
        return open_dir(&dir, info.classes, s);
    }
    let list = dir.join(format!("{split}.txt"));
    if !list.is_file() {
        return Err(DataError::MissingSplit {
            path: list,
            hint: String::new(),
        });
    }
    let samples = read_list(&list, &dir, info.classes)?;
    Ok(Split {
        name: split.to_string(),
        source: list,
        samples,
        num_classes: info.classes,
        class_names: Vec::new(),
    })
}

/// Opens a split of any folder in the VTAB format with `classes` classes (e.g. a user's task).
pub fn open_dir(task_dir: &Path, classes: usize, split: VtabSplit) -> Result<Split, DataError> {
    let list: PathBuf = task_dir.join(format!("{}.txt", split.name()));
    if !list.is_file() {
        let hint = match split {
            VtabSplit::Train800 | VtabSplit::Val200 => {
                " (some VTAB-1k copies ship only train800val200.txt and test.txt; the lr/wd sweep needs \
                 train800.txt and val200.txt)"
            }
            _ => "",
        };
        return Err(DataError::MissingSplit {
            path: list,
            hint: hint.to_string(),
        });
    }
    let samples = read_list(&list, task_dir, classes)?;
    Ok(Split {
        name: split.name().to_string(),
        source: list,
        samples,
        num_classes: classes,
        class_names: Vec::new(),
    })
}
