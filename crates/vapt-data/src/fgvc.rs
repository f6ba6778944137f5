//! FGVC in VPT's json format: `<root>/{train,val,test,trainval}.json` (and `train_{p}.json` for
//! data-fraction runs), each one JSON object mapping an image path (relative to the dataset's image
//! directory) to an integer class id.
//!
//! Class ids are remapped to 0..C−1 **once**, from `train.json` (sorted unique ids), and that map is
//! applied to every split; an id absent from `train.json` is an error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::DataError;
use crate::split::{Sample, Split};

/// One FGVC dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FgvcInfo {
    /// Name used on the command line.
    pub name: &'static str,
    /// Number of classes.
    pub classes: usize,
    /// Image directory relative to the dataset root.
    pub image_dir: &'static str,
}

/// The five FGVC datasets.
pub const DATASETS: [FgvcInfo; 5] = [
    FgvcInfo {
        name: "CUB_200_2011",
        classes: 200,
        image_dir: "images",
    },
    FgvcInfo {
        name: "nabirds",
        classes: 555,
        image_dir: "images",
    },
    FgvcInfo {
        name: "OxfordFlowers",
        classes: 102,
        image_dir: "",
    },
    FgvcInfo {
        name: "StanfordDogs",
        classes: 120,
        image_dir: "Images",
    },
    FgvcInfo {
        name: "StanfordCars",
        classes: 196,
        image_dir: "",
    },
];

/// Looks a dataset up by name (case-insensitive; `cub`, `flowers`, `dogs`, `cars` also work).
pub fn dataset(name: &str) -> Result<FgvcInfo, DataError> {
    let key = name.to_ascii_lowercase();
    let alias = match key.as_str() {
        "cub" | "cub200" | "cub-200-2011" => "cub_200_2011",
        "flowers" | "oxford_flowers" => "oxfordflowers",
        "dogs" | "stanford_dogs" => "stanforddogs",
        "cars" | "stanford_cars" => "stanfordcars",
        other => other,
    };
    DATASETS
        .iter()
        .copied()
        .find(|d| d.name.to_ascii_lowercase() == alias)
        .ok_or_else(|| DataError::UnknownTask {
            name: name.to_string(),
            known: DATASETS.iter().map(|d| d.name).collect::<Vec<_>>().join(", "),
        })
}

fn read_json(path: &Path) -> Result<Vec<(String, i64)>, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    parse_json(&bytes, path)
}

/// Parses the content of split file `path` (VPT's FGVC json: one object mapping image path →
/// integer class id) into `(path, id)` pairs in key order.
pub fn parse_json(bytes: &[u8], path: &Path) -> Result<Vec<(String, i64)>, DataError> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| DataError::Json {
        path: path.to_path_buf(),
        message: format!("invalid JSON: {e}"),
    })?;
    let obj = value.as_object().ok_or_else(|| DataError::Json {
        path: path.to_path_buf(),
        message: "expected one object mapping image path -> integer class id".into(),
    })?;
    let mut out = Vec::with_capacity(obj.len());
    for (k, v) in obj {
        let id = v.as_i64().ok_or_else(|| DataError::Json {
            path: path.to_path_buf(),
            message: format!("entry `{k}`: class id {v} is not an integer"),
        })?;
        out.push((k.clone(), id));
    }
    if out.is_empty() {
        return Err(DataError::EmptySplit {
            path: path.to_path_buf(),
        });
    }
    // serde_json keeps keys sorted (BTreeMap), so the order is deterministic.
    Ok(out)
}

/// A dataset root with the class map built from `train.json`.
#[derive(Debug, Clone)]
pub struct Fgvc {
    /// Dataset root (holding the json files).
    pub root: PathBuf,
    /// Image directory.
    pub image_dir: PathBuf,
    /// Original id → label.
    pub class_map: BTreeMap<i64, usize>,
}

impl Fgvc {
    /// Opens `root` for dataset `info`.
    pub fn open(root: &Path, info: FgvcInfo) -> Result<Self, DataError> {
        Self::open_with_image_dir(root, &root.join(info.image_dir))
    }

    /// Opens a VPT-json dataset whose images live in `image_dir`.
    pub fn open_with_image_dir(root: &Path, image_dir: &Path) -> Result<Self, DataError> {
        let train = root.join("train.json");
        if !train.is_file() {
            return Err(DataError::MissingSplit {
                path: train,
                hint: " (the class-id map is built from train.json)".into(),
            });
        }
        let mut ids: Vec<i64> = read_json(&train)?.into_iter().map(|(_, id)| id).collect();
        ids.sort_unstable();
        ids.dedup();
        let class_map = ids
            .into_iter()
            .enumerate()
            .map(|(label, id)| (id, label))
            .collect();
        Ok(Self {
            root: root.to_path_buf(),
            image_dir: image_dir.to_path_buf(),
            class_map,
        })
    }

    /// Number of classes (distinct ids in `train.json`).
    pub fn num_classes(&self) -> usize {
        self.class_map.len()
    }

    /// Opens `<root>/<name>.json` (`train`, `val`, `test`, `trainval`, `train_0.1`, ...).
    pub fn split(&self, name: &str) -> Result<Split, DataError> {
        let path = self.root.join(format!("{name}.json"));
        if !path.is_file() {
            return Err(DataError::MissingSplit {
                path,
                hint: String::new(),
            });
        }
        let mut samples = Vec::new();
        for (rel, id) in read_json(&path)? {
            let label = *self.class_map.get(&id).ok_or_else(|| DataError::Json {
                path: path.clone(),
                message: format!("entry `{rel}`: class id {id} does not occur in train.json"),
            })?;
            samples.push(Sample {
                path: self.image_dir.join(&rel),
                label,
                line: None,
            });
        }
        Ok(Split {
            name: name.to_string(),
            source: path,
            samples,
            num_classes: self.num_classes(),
            class_names: self.class_map.keys().map(|id| id.to_string()).collect(),
        })
    }
}
