//! Class-per-subfolder image trees (`<root>/<class>/<image>`), for users' own data. Classes are
//! the sorted subfolder names; files with a known image extension are taken, sorted by path.

use std::path::Path;

use crate::error::DataError;
use crate::split::{Sample, Split};

const EXTENSIONS: [&str; 6] = ["jpg", "jpeg", "png", "bmp", "gif", "tif"];

/// Reads `root` as one split named after the folder.
pub fn open(root: &Path) -> Result<Split, DataError> {
    let read = |dir: &Path| -> Result<Vec<std::path::PathBuf>, DataError> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| DataError::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        v.sort();
        Ok(v)
    };
    let classes: Vec<_> = read(root)?.into_iter().filter(|p| p.is_dir()).collect();
    let mut samples = Vec::new();
    let mut class_names = Vec::new();
    for (label, dir) in classes.iter().enumerate() {
        class_names.push(
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        for file in read(dir)? {
            let ext = file.extension().map(|e| e.to_string_lossy().to_ascii_lowercase());
            if ext.is_some_and(|e| EXTENSIONS.contains(&e.as_str())) {
                samples.push(Sample {
                    path: file,
                    label,
                    line: None,
                });
            }
        }
    }
    if samples.is_empty() {
        return Err(DataError::EmptySplit {
            path: root.to_path_buf(),
        });
    }
    Ok(Split {
        name: root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        source: root.to_path_buf(),
        samples,
        num_classes: classes.len(),
        class_names,
    })
}
