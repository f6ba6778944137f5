//! Format, error and loader tests on folders built inside the tests and on the shipped
//! `datasets/fashion-mnist-1k`.

use std::path::{Path, PathBuf};

use burn::backend::Flex;

use crate::error::DataError;
use crate::fgvc::Fgvc;
use crate::images::{make_batch, ImageSet};
use crate::transform::Transform;
use crate::vtab::{self, VtabSplit};

fn write_png(path: &Path, w: u32, h: u32, value: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_pixel(w, h, image::Rgb([value, value / 2, 255 - value]))
        .save(path)
        .unwrap();
}

/// A VTAB-format task folder: 3 classes, 6 train800 images (PNG and JPEG), 3 val200, 3 test.
fn vtab_folder() -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let task = root.path().join("mytask");
    let mut lists: Vec<(&str, Vec<String>)> = Vec::new();
    for (split, n) in [("train800", 6), ("val200", 3), ("test", 3)] {
        let mut lines = Vec::new();
        for i in 0..n {
            let ext = if i % 2 == 0 { "png" } else { "jpg" };
            let rel = format!("images/{split}/{i:06}.{ext}");
            write_png(&task.join(&rel), 10 + i as u32, 8, (i * 40) as u8);
            lines.push(format!("{rel} {}", i % 3));
        }
        lists.push((split, lines));
    }
    let tv = [lists[0].1.clone(), lists[1].1.clone()].concat();
    lists.push(("train800val200", tv));
    for (split, lines) in lists {
        std::fs::write(task.join(format!("{split}.txt")), lines.join("\n") + "\n").unwrap();
    }
    (root, task)
}

#[test]
fn open_named_reads_standard_and_custom_split_lists() {
    let (root, task) = vtab_folder();
    let mnist = root.path().join("mnist");
    std::fs::rename(&task, &mnist).unwrap();
    assert_eq!(vtab::open_named(root.path(), "mnist", "val200").unwrap().len(), 3);
    std::fs::copy(mnist.join("train800.txt"), mnist.join("train.txt")).unwrap();
    let train = vtab::open_named(root.path(), "mnist", "train").unwrap();
    assert_eq!(
        (train.name.as_str(), train.len(), train.num_classes),
        ("train", 6, 10)
    );
    let err = vtab::open_named(root.path(), "mnist", "holdout")
        .unwrap_err()
        .to_string();
    assert!(err.contains("holdout.txt"), "{err}");
}

#[test]
fn reads_a_vtab_folder() {
    let (_root, task) = vtab_folder();
    let train = vtab::open_dir(&task, 3, VtabSplit::Train800).unwrap();
    assert_eq!(train.len(), 6);
    assert_eq!(train.class_counts(), vec![2, 2, 2]);
    assert_eq!(train.samples[4].label, 1);
    assert_eq!(train.samples[4].line, Some(5));
    assert!(train.samples[1].path.ends_with("images/train800/000001.jpg"));
    assert_eq!(
        vtab::open_dir(&task, 3, VtabSplit::Train800Val200).unwrap().len(),
        9
    );
    let set = ImageSet::new(
        vtab::open_dir(&task, 3, VtabSplit::Test).unwrap(),
        Transform::vtab(16, [0.0; 3], [1.0; 3]),
        0,
    );
    set.preload().unwrap();
    let img = set.image(2).unwrap();
    assert_eq!((img.width, img.height), (12, 8));
    let item = set.item(0).unwrap();
    assert_eq!(item.pixels.len(), 3 * 16 * 16);
    // PNG, constant colour (0, 0, 255) → exact after resize: R = 0, B = 1.
    assert!(item.pixels[..256].iter().all(|&v| v == 0.0));
    assert!(item.pixels[512..].iter().all(|&v| v == 1.0));
}

#[test]
fn reads_a_fgvc_tree_and_remaps_ids_from_train() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for (name, v) in [("a.png", 0u8), ("b.png", 50), ("c.png", 100), ("d.png", 150)] {
        write_png(&root.join("images/x").join(name), 6, 6, v);
    }
    std::fs::write(
        root.join("train.json"),
        r#"{"x/a.png": 7, "x/b.png": 3, "x/c.png": 9}"#,
    )
    .unwrap();
    std::fs::write(root.join("val.json"), r#"{"x/d.png": 9}"#).unwrap();
    std::fs::write(root.join("test.json"), r#"{"x/d.png": 4}"#).unwrap();
    let fgvc = Fgvc::open_with_image_dir(root, &root.join("images")).unwrap();
    assert_eq!(fgvc.num_classes(), 3);
    let train = fgvc.split("train").unwrap();
    let labels: Vec<usize> = train.samples.iter().map(|s| s.label).collect();
    assert_eq!(labels, vec![1, 0, 2]); // ids 7, 3, 9 -> sorted [3, 7, 9]
    assert_eq!(fgvc.split("val").unwrap().samples[0].label, 2);
    let err = fgvc.split("test").unwrap_err().to_string();
    assert!(
        err.contains("test.json") && err.contains("class id 4 does not occur in train.json"),
        "{err}"
    );
    assert!(matches!(crate::fgvc::dataset("cub"), Ok(d) if d.classes == 200));
    // verify: a FGVC-like folder without the unknown test id; twice (the manifest is not a split).
    std::fs::write(root.join("test.json"), r#"{"x/d.png": 3}"#).unwrap();
    let img_root = root.join("images");
    for f in ["train.json", "val.json", "test.json"] {
        std::fs::copy(root.join(f), img_root.join(f)).unwrap();
    }
    let first = crate::verify::verify(&img_root, None).unwrap();
    let names: Vec<&str> = first.manifest.splits.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, vec!["test", "train", "val"]);
    assert!(first.written);
    let second = crate::verify::verify(&img_root, None).unwrap();
    assert!(!second.written);
    assert_eq!(second.manifest.splits.len(), 3);
}

#[test]
fn reads_a_class_per_folder_tree() {
    let dir = tempfile::tempdir().unwrap();
    write_png(&dir.path().join("cat/1.png"), 4, 4, 1);
    write_png(&dir.path().join("cat/2.png"), 4, 4, 2);
    write_png(&dir.path().join("dog/1.png"), 4, 4, 3);
    std::fs::write(dir.path().join("dog/notes.txt"), "not an image").unwrap();
    let split = crate::folder::open(dir.path()).unwrap();
    assert_eq!(split.class_names, vec!["cat", "dog"]);
    assert_eq!(split.class_counts(), vec![2, 1]);
}

#[test]
fn a_folder_task_opens_its_split_folders_and_checks_their_classes() {
    use crate::task::{DataConfig, DataFormat, Task};
    let root = tempfile::tempdir().unwrap();
    for (split, class, n) in [
        ("train", "cat", 2),
        ("train", "dog", 1),
        ("test", "cat", 1),
        ("test", "dog", 1),
    ] {
        for i in 0..n {
            write_png(
                &root.path().join(format!("pets/{split}/{class}/{i}.png")),
                4,
                4,
                9,
            );
        }
    }
    let data = DataConfig {
        root: root.path().to_path_buf(),
        task: "pets".into(),
        format: "folder".parse::<DataFormat>().unwrap(),
        train_split: DataFormat::Folder.default_train_split().into(),
        eval_split: "test".into(),
    };
    let task = Task::open(&data).unwrap();
    let (train, test) = task.splits(&data).unwrap();
    assert_eq!((train.len(), test.len(), train.num_classes), (3, 2, 2));
    let labels: Vec<usize> = train.samples.iter().map(|s| s.label).collect();
    assert_eq!(labels, [0, 0, 1], "classes are the sorted folder names");
    assert_eq!(
        DataFormat::Folder.transform(true, 8, [0.5; 3], [0.5; 3]),
        Transform::vtab(8, [0.5; 3], [0.5; 3])
    );
    // An evaluation split with other classes is refused, naming it.
    write_png(&root.path().join("pets/test/bird/0.png"), 4, 4, 9);
    let err = task.splits(&data).unwrap_err().to_string();
    assert!(
        err.contains("test") && err.contains("bird") && err.contains("train"),
        "{err}"
    );
    let missing = DataConfig {
        task: "nope".into(),
        ..data
    };
    let err = Task::open(&missing).unwrap_err().to_string();
    assert!(err.contains("nope") && err.contains("<split>/<class>"), "{err}");
}

fn shipped() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../datasets/fashion-mnist-1k")
}

#[test]
fn reads_the_shipped_fashion_mnist_1k() {
    let root = shipped().parent().unwrap().to_path_buf();
    let info = vtab::task("fashion-mnist-1k").unwrap();
    assert_eq!(info.classes, 10);
    for (split, n) in [
        (VtabSplit::Train800, 800),
        (VtabSplit::Val200, 200),
        (VtabSplit::Train800Val200, 1000),
        (VtabSplit::Test, 2000),
    ] {
        let s = vtab::open(&root, "fashion-mnist-1k", split).unwrap();
        assert_eq!(s.len(), n);
        assert_eq!(s.class_counts(), vec![n / 10; 10], "{split:?}");
    }
    let test = vtab::open(&root, "fashion-mnist-1k", VtabSplit::Test).unwrap();
    assert_eq!(test.samples[0].label, 9); // the first Fashion-MNIST test image is an ankle boot
    let set = ImageSet::new(test, Transform::vtab(32, [0.5; 3], [0.5; 3]), 0);
    let img = set.image(0).unwrap();
    assert_eq!((img.width, img.height), (28, 28));
    // Greyscale became RGB: the three channels are equal.
    assert!(img.data.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]));
    let item = set.item(0).unwrap();
    assert_eq!(item.pixels.len(), 3 * 32 * 32);
    assert!(item.pixels.iter().all(|v| (-1.0..=1.0).contains(v)));
    // The manifest shipped with the folder matches the files.
    let report = crate::verify::verify(&shipped(), None).unwrap();
    assert!(!report.written, "the shipped folder must carry its manifest");
    assert_eq!(report.manifest.files.len(), 3000);
}

#[test]
fn batches_land_on_the_device_with_the_right_shapes() {
    let (_root, task) = vtab_folder();
    let set = ImageSet::new(
        vtab::open_dir(&task, 3, VtabSplit::Train800).unwrap(),
        Transform::vtab(8, [0.0; 3], [1.0; 3]),
        0,
    );
    let items = set.items(&[0, 1, 2, 3], 0).unwrap();
    let batch = make_batch::<Flex>(&items, 8, &Default::default());
    assert_eq!(batch.images.dims(), [4, 3, 8, 8]);
    let labels = batch
        .targets
        .into_data()
        .convert::<i64>()
        .into_vec::<i64>()
        .unwrap();
    assert_eq!(labels, vec![0, 1, 2, 0]);
    let px = batch
        .images
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap();
    assert_eq!(&px[..3 * 64], &items[0].pixels[..]);
}

#[test]
fn an_image_loader_gives_every_item_of_the_epoch_in_its_order_with_that_epochs_crops() {
    use crate::loader::{Input, Loader};
    let (_root, task) = vtab_folder();
    let split = vtab::open_dir(&task, 3, VtabSplit::Train800).unwrap();
    // Textured images, so that crops and flips show.
    for s in &split.samples {
        image::RgbImage::from_fn(16, 12, |x, y| {
            image::Rgb([(x * 15) as u8, (y * 20) as u8, (x * y) as u8])
        })
        .save(&s.path)
        .unwrap();
    }
    // A random transform: each epoch crops and flips anew, seeded by (seed, epoch, index).
    let set = std::sync::Arc::new(ImageSet::new(
        split,
        Transform::fgvc_train(8, [0.0; 3], [1.0; 3]),
        7,
    ));
    let loader = Loader::images(set.clone(), 4, Some(3));
    assert_eq!((loader.len(), loader.steps()), (6, 2));
    let dev = Default::default();
    let mut got = Vec::new();
    for batch in loader.epoch::<Flex>(2, &dev) {
        let Input::Images(x) = batch.unwrap().input else {
            panic!("an image loader gives images")
        };
        got.extend(x.into_data().convert::<f32>().into_vec::<f32>().unwrap());
    }
    let order = loader.order(2);
    assert_ne!(order, (0..6).collect::<Vec<_>>(), "shuffled");
    let pixels = |epoch: u64| -> Vec<f32> {
        let items = set.items(&order, epoch).unwrap();
        items.into_iter().flat_map(|i| i.pixels).collect()
    };
    assert_eq!(got, pixels(2));
    assert_ne!(got, pixels(3), "another epoch, other crops");
    // Stopping after the first batch ends the epoch's worker.
    let mut batches = loader.epoch::<Flex>(0, &dev);
    assert!(batches.next().is_some());
    drop(batches);
}

// ---------------------------------------------------------------------------------------------
// Bad input: every case is an error naming the file (and line), never a panic.
// ---------------------------------------------------------------------------------------------

fn assert_names(err: &DataError, needles: &[&str]) {
    let msg = err.to_string();
    for n in needles {
        assert!(msg.contains(n), "`{msg}` lacks `{n}`");
    }
}

#[test]
fn missing_image_names_the_image_and_the_list_line() {
    let (_root, task) = vtab_folder();
    std::fs::remove_file(task.join("images/test/000001.jpg")).unwrap();
    let set = ImageSet::new(
        vtab::open_dir(&task, 3, VtabSplit::Test).unwrap(),
        Transform::vtab(8, [0.0; 3], [1.0; 3]),
        0,
    );
    let err = set.preload().unwrap_err();
    assert!(matches!(err, DataError::MissingImage { .. }));
    assert_names(&err, &["000001.jpg", "test.txt:2", "does not exist"]);
}

/// A folder, a symbolic link loop and a dangling link in a list each say what they are.
#[test]
fn an_unreadable_list_entry_says_what_it_is() {
    let (_root, task) = vtab_folder();
    let images = task.join("images/test");
    let cases = [
        (0, "is a folder"),
        (1, "is a symbolic link loop"),
        (2, "is a symbolic link to nothing"),
    ];
    std::fs::remove_file(images.join("000000.png")).unwrap();
    std::fs::create_dir(images.join("000000.png")).unwrap();
    std::fs::remove_file(images.join("000001.jpg")).unwrap();
    std::os::unix::fs::symlink(images.join("000001.jpg"), images.join("000001.jpg")).unwrap();
    std::fs::remove_file(images.join("000002.png")).unwrap();
    std::os::unix::fs::symlink(images.join("gone.png"), images.join("000002.png")).unwrap();
    let set = ImageSet::new(
        vtab::open_dir(&task, 3, VtabSplit::Test).unwrap(),
        Transform::vtab(8, [0.0; 3], [1.0; 3]),
        0,
    );
    for (i, problem) in cases {
        let err = set.image(i).unwrap_err();
        assert_names(&err, &[&format!("test.txt:{}", i + 1), problem]);
    }
}

/// A list line that is not UTF-8 is an error with its line number.
#[test]
fn a_list_line_that_is_not_utf8_names_its_line() {
    let (_root, task) = vtab_folder();
    std::fs::write(task.join("val200.txt"), b"a.png 0\nb\xff.png 1\n").unwrap();
    let err = vtab::open_dir(&task, 3, VtabSplit::Val200).unwrap_err();
    assert_names(&err, &["val200.txt:2", "not UTF-8"]);
}

#[test]
fn undecodable_image_names_the_file() {
    let (_root, task) = vtab_folder();
    std::fs::write(task.join("images/test/000002.png"), b"\x89PNG but not really").unwrap();
    let set = ImageSet::new(
        vtab::open_dir(&task, 3, VtabSplit::Test).unwrap(),
        Transform::vtab(8, [0.0; 3], [1.0; 3]),
        0,
    );
    let err = set.image(2).unwrap_err();
    assert!(matches!(err, DataError::Decode { .. }));
    assert_names(&err, &["000002.png", "cannot decode"]);
}

#[test]
fn list_line_without_label_names_file_and_line() {
    let (_root, task) = vtab_folder();
    std::fs::write(
        task.join("val200.txt"),
        "images/val200/000000.png 0\nimages/val200/000001.jpg\n",
    )
    .unwrap();
    let err = vtab::open_dir(&task, 3, VtabSplit::Val200).unwrap_err();
    assert_names(&err, &["val200.txt:2", "no label"]);
}

#[test]
fn label_out_of_range_names_file_and_line() {
    let (_root, task) = vtab_folder();
    std::fs::write(task.join("val200.txt"), "a.png 0\n\nb.png 3\n").unwrap();
    let err = vtab::open_dir(&task, 3, VtabSplit::Val200).unwrap_err();
    assert_names(&err, &["val200.txt:3", "label 3 is out of range", "3 classes"]);
    std::fs::write(task.join("val200.txt"), "a.png -1\n").unwrap();
    let err = vtab::open_dir(&task, 3, VtabSplit::Val200).unwrap_err();
    assert_names(&err, &["val200.txt:1", "not a non-negative integer"]);
}

#[test]
fn json_with_a_non_integer_label_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("train.json"), r#"{"a.jpg": 1, "b.jpg": "two"}"#).unwrap();
    let err = Fgvc::open_with_image_dir(dir.path(), dir.path()).unwrap_err();
    assert_names(&err, &["train.json", "b.jpg", "not an integer"]);
    std::fs::write(dir.path().join("train.json"), "[1, 2]").unwrap();
    let err = Fgvc::open_with_image_dir(dir.path(), dir.path()).unwrap_err();
    assert_names(&err, &["train.json", "expected one object"]);
}

#[test]
fn empty_split_names_the_file() {
    let (_root, task) = vtab_folder();
    std::fs::write(task.join("test.txt"), "\n\n").unwrap();
    let err = vtab::open_dir(&task, 3, VtabSplit::Test).unwrap_err();
    assert!(matches!(err, DataError::EmptySplit { .. }));
    assert_names(&err, &["test.txt", "empty"]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("train.json"), "{}").unwrap();
    assert!(matches!(
        Fgvc::open_with_image_dir(dir.path(), dir.path()),
        Err(DataError::EmptySplit { .. })
    ));
}

#[test]
fn unknown_task_lists_the_known_ones() {
    let err = vtab::open(Path::new("/nonexistent"), "imagenet", VtabSplit::Test).unwrap_err();
    assert_names(&err, &["unknown task `imagenet`", "cifar", "smallnorb_ele"]);
    let err = crate::fgvc::dataset("inat").unwrap_err();
    assert_names(&err, &["unknown task `inat`", "CUB_200_2011"]);
}

#[test]
fn missing_sweep_lists_are_explained() {
    let (_root, task) = vtab_folder();
    std::fs::remove_file(task.join("train800.txt")).unwrap();
    let err = vtab::open_dir(&task, 3, VtabSplit::Train800).unwrap_err();
    assert_names(&err, &["train800.txt", "only train800val200.txt and test.txt"]);
}

#[test]
fn manifest_detects_a_changed_file_and_is_never_overwritten() {
    let (_root, task) = vtab_folder();
    let first = crate::verify::verify(&task, Some(3)).unwrap();
    assert!(first.written);
    assert_eq!(
        crate::verify::verify(&task, Some(3)).unwrap().manifest_sha256,
        first.manifest_sha256
    );
    write_png(&task.join("images/test/000000.png"), 10, 8, 99);
    let before = std::fs::read(task.join(crate::verify::MANIFEST)).unwrap();
    let err = crate::verify::verify(&task, Some(3)).unwrap_err();
    assert_names(&err, &["vapt-manifest.json", "changed images/test/000000.png"]);
    assert_eq!(std::fs::read(task.join(crate::verify::MANIFEST)).unwrap(), before);
}

/// `/dev/zero` (endless), a folder, and a file over the size limit are refused by name before
/// anything is read.
#[test]
fn non_regular_and_oversized_files_are_refused_before_reading() {
    let err = crate::images::decode(Path::new("/dev/zero"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/dev/zero") && err.contains("not a regular file"),
        "{err}"
    );
    let tmp = tempfile::tempdir().unwrap();
    let err = crate::images::decode(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("not a regular file"), "{err}");
    let big = tmp.path().join("big.png");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(crate::images::MAX_IMAGE_FILE_BYTES + 1).unwrap();
    let err = crate::images::decode(&big).unwrap_err().to_string();
    assert!(
        err.contains("big.png") && err.contains("larger than any image"),
        "{err}"
    );
}

/// A 3000 × 2000 image costs the cache its 224² resize, not its 18 MB of pixels, and gives the
/// same items as the uncached transform; a small image is kept as it is.
#[test]
fn the_cache_keeps_the_smaller_of_the_original_and_its_resize() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("images");
    std::fs::create_dir_all(&root).unwrap();
    let big = image::RgbImage::from_fn(3000, 2000, |x, y| {
        image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x + y) % 7) as u8])
    });
    big.save(root.join("big.png")).unwrap();
    write_png(&root.join("small.png"), 32, 32, 90);
    let sample = |name: &str, label| crate::Sample {
        path: root.join(name),
        label,
        line: None,
    };
    let split = crate::Split {
        name: "test".into(),
        source: root.clone(),
        samples: vec![sample("big.png", 0), sample("small.png", 1)],
        num_classes: 2,
        class_names: Vec::new(),
    };
    let t = Transform::vtab(224, [0.5; 3], [0.5; 3]);
    let set = ImageSet::new(split, t.clone(), 0);
    set.preload().unwrap();
    assert_eq!(set.cached_bytes(), 224 * 224 * 3 * 4 + 32 * 32 * 3);
    for i in 0..2 {
        let direct = t.apply(&set.image(i).unwrap(), &mut crate::transform::SplitMix64(1));
        assert!(set.item_at(i, 0).unwrap().pixels == direct, "image {i}");
    }
}
