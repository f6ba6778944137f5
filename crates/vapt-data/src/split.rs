//! A split: a list of (image path, label) with the file it came from.

use std::path::PathBuf;

use serde::Serialize;

/// One labelled image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sample {
    /// Absolute (or root-joined) image path.
    pub path: PathBuf,
    /// Class index in 0..num_classes.
    pub label: usize,
    /// Line of the list file that named it (1-based), if it came from a list.
    pub line: Option<usize>,
}

/// A labelled set of images.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Split {
    /// Split name (`train800`, `test`, `val`, ...).
    pub name: String,
    /// The file that defined it (list, json) or the folder.
    pub source: PathBuf,
    /// The images.
    pub samples: Vec<Sample>,
    /// Number of classes of the task (labels lie below it).
    pub num_classes: usize,
    /// Class names, when known (image folders, FGVC ids), in label order.
    pub class_names: Vec<String>,
}

impl Split {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Images per class (index = label).
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes];
        for s in &self.samples {
            if let Some(c) = counts.get_mut(s.label) {
                *c += 1;
            }
        }
        counts
    }
}
