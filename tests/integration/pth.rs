//! PyTorch checkpoints as weights: every container and layout a user meets (written here by
//! `vapt_tests::torch`, as `torch.save` writes them), each loading to the same model as the same
//! tensors in a timm safetensors file, or failing with an error that names the file and the key.

use std::path::Path;

use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use vapt_tests::torch::{save, tensors, timm_state_dict, Format, Value};
use vapt_vit::weights::write_safetensors;
use vapt_vit::{load_pretrained, BackboneKind, LoadOptions, RawTensor, TensorMap, Vit, VitConfig};

type B = Flex;

fn arch() -> VitConfig {
    VitConfig::new(16, 2, 2, 32, 4).with_image_size(16)
}

/// A timm-layout state dict for [`arch`] (`head` adds a pre-training head).
fn state_dict(head: bool) -> Vec<(String, RawTensor)> {
    let mut out = timm_state_dict(&arch());
    if head {
        out.push(("head.weight".into(), RawTensor::new(vec![3, 16], vec![0.5; 48])));
        out.push(("head.bias".into(), RawTensor::new(vec![3], vec![0.1; 3])));
    }
    out
}

fn load(
    path: &Path,
    kind: Option<BackboneKind>,
) -> Result<(Vit<B>, vapt_vit::PretrainedCfg), vapt_vit::LoadError> {
    let opts = LoadOptions {
        arch: Some(arch()),
        kind,
        ..Default::default()
    };
    load_pretrained::<B>(path, &opts, &Default::default())
}

/// The backbone's features of two fixed images.
fn features(vit: &Vit<B>) -> Vec<f32> {
    let pixels: Vec<f32> = (0..2 * 3 * 16 * 16)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
        .collect();
    let x = Tensor::<B, 4>::from_data(TensorData::new(pixels, [2, 3, 16, 16]), &Default::default());
    vit.forward(x).into_data().to_vec::<f32>().unwrap_or_default()
}

/// The same tensors as a timm safetensors file, loaded as a backbone of `kind`.
fn reference(dir: &Path, sd: &[(String, RawTensor)], kind: BackboneKind) -> Vec<f32> {
    let mut map = TensorMap::new("reference");
    for (k, t) in sd {
        map.insert(k.clone(), t.clone());
    }
    let path = dir.join("reference.safetensors");
    write_safetensors(&path, &map).unwrap();
    let (vit, _) = load(&path, Some(kind)).unwrap();
    features(&vit)
}

#[test]
fn moco_v3_checkpoints_load_from_state_dict_with_module_prefixes() {
    let dir = tempfile::tempdir().unwrap();
    let sd = state_dict(true);
    let file = Value::dict([
        ("epoch".into(), Value::Int(90)),
        ("arch".into(), Value::Str("vit_base".into())),
        ("state_dict".into(), tensors(&sd, "module.", false)),
        (
            "optimizer".into(),
            Value::dict([(
                "state".into(),
                Value::dict([("0".into(), Value::tensor(&[3], vec![0.0; 3]))]),
            )]),
        ),
    ]);
    let path = dir.path().join("linear-vit-b-300ep.pth.tar");
    save(&path, &file, Format::Zip);
    let (vit, pre) = load(&path, None).unwrap();
    assert_eq!(vit.config.kind, BackboneKind::MocoV3, "read off the file");
    assert_eq!(pre.source, "pytorch checkpoint (timm keys)");
    for entry in ["head.weight", "head.bias", "optimizer.state.0"] {
        assert!(
            pre.ignored.iter().any(|k| k == entry),
            "{entry} not reported: {:?}",
            pre.ignored
        );
    }
    assert_eq!(
        features(&vit),
        reference(dir.path(), &sd, BackboneKind::Supervised)
    );
}

#[test]
fn mae_checkpoints_load_from_model_and_pool_with_fc_norm() {
    let dir = tempfile::tempdir().unwrap();
    let sd = state_dict(false);
    let path = dir.path().join("mae_pretrain_vit_base.pth");
    save(
        &path,
        &Value::dict([("model".into(), tensors(&sd, "", false))]),
        Format::Zip,
    );
    let (vit, pre) = load(&path, None).unwrap();
    assert_eq!(vit.config.kind, BackboneKind::Mae);
    assert_eq!(
        pre.ignored,
        ["norm.bias", "norm.weight"],
        "MAE's model drops its final norm"
    );
    let fc_norm = vit.fc_norm.as_ref().expect("mean pooling through fc_norm");
    assert!(vit.norm.is_none());
    let (w, b) = (
        fc_norm.weight.val().into_data().to_vec::<f32>().unwrap(),
        fc_norm.bias.val().into_data().to_vec::<f32>().unwrap(),
    );
    assert!(
        w.iter().all(|&v| v == 1.0) && b.iter().all(|&v| v == 0.0),
        "fc_norm at its init"
    );
    assert_eq!(features(&vit), reference(dir.path(), &sd, BackboneKind::Mae));
    // The same file under `model` with a head (DeiT-style) is a supervised backbone.
    let with_head = state_dict(true);
    save(
        &path,
        &Value::dict([("model".into(), tensors(&with_head, "", false))]),
        Format::Zip,
    );
    assert_eq!(load(&path, None).unwrap().0.config.kind, BackboneKind::Supervised);
}

#[test]
fn bare_legacy_and_half_precision_state_dicts_load() {
    let dir = tempfile::tempdir().unwrap();
    let sd = state_dict(false);
    let want = reference(dir.path(), &sd, BackboneKind::Supervised);
    for (name, format) in [("bare.pth", Format::Zip), ("legacy.pth", Format::Legacy)] {
        let path = dir.path().join(name);
        save(&path, &tensors(&sd, "", false), format);
        let (vit, pre) = load(&path, None).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(vit.config.kind, BackboneKind::Supervised, "{name}");
        assert!(pre.ignored.is_empty(), "{name}: {:?}", pre.ignored);
        assert_eq!(features(&vit), want, "{name}");
    }
    // f16 storage becomes f32: the values are exactly the f16-rounded ones (these are).
    let path = dir.path().join("half.pth");
    save(&path, &tensors(&sd, "", true), Format::Zip);
    let (vit, _) = load(&path, None).unwrap();
    let qkv = vit.blocks[1].attn.query.bias.as_ref().unwrap().val();
    let got = qkv.into_data().to_vec::<f32>().unwrap();
    let stored = &sd.iter().find(|(k, _)| k == "blocks.1.attn.qkv.bias").unwrap().1;
    for (g, s) in got.iter().zip(&stored.data) {
        assert!((g - s).abs() <= s.abs() * 1e-3, "{g} vs {s}");
    }
}

#[test]
fn damaged_or_foreign_checkpoints_are_errors_naming_the_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut sd = state_dict(false);
    // A wrong shape: every problem in one error, naming the file and the key.
    sd[4].1 = RawTensor::new(vec![3], vec![0.0; 3]);
    let key = sd[4].0.clone();
    let path = dir.path().join("wrong.pth");
    save(&path, &tensors(&sd, "", false), Format::Zip);
    let err = load(&path, None).unwrap_err().to_string();
    assert!(
        err.contains("wrong.pth") && err.contains(&key) && err.contains("wrong shape"),
        "{err}"
    );
    // Truncated: half of a good file.
    let good = dir.path().join("good.pth");
    save(&good, &tensors(&state_dict(false), "", false), Format::Zip);
    let bytes = std::fs::read(&good).unwrap();
    let cut = dir.path().join("truncated.pth");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = load(&cut, None).unwrap_err().to_string();
    assert!(err.contains("truncated.pth"), "{err}");
    // A pickle that holds no state dict.
    let other = dir.path().join("numbers.pth");
    save(&other, &Value::Int(7), Format::Zip);
    let err = load(&other, None).unwrap_err().to_string();
    assert!(err.contains("numbers.pth") && err.contains("PyTorch"), "{err}");
    let other = dir.path().join("config.pth");
    save(
        &other,
        &Value::dict([("arch".into(), Value::Str("vit".into()))]),
        Format::Legacy,
    );
    let err = load(&other, None).unwrap_err().to_string();
    assert!(err.contains("config.pth") && err.contains("state dict"), "{err}");
}

/// Copies the zip `from` to `to`, each entry's bytes passed through `edit` (`None` drops it).
fn rewrite_zip(from: &Path, to: &Path, edit: impl Fn(&str, Vec<u8>) -> Option<Vec<u8>>) {
    let mut zip = zip::ZipArchive::new(std::fs::File::open(from).unwrap()).unwrap();
    let mut out = zip::ZipWriter::new(std::fs::File::create(to).unwrap());
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).unwrap();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
        if let Some(bytes) = edit(entry.name(), bytes) {
            out.start_file(entry.name(), opts).unwrap();
            std::io::Write::write_all(&mut out, &bytes).unwrap();
        }
    }
    out.finish().unwrap();
}

/// Every tensor is checked against its own storage before the reader runs, which would read a
/// strided view as if it were row-major, pad a short storage with zeros and read a missing one
/// as zeros: a backbone silently not the file's.
#[test]
fn tensors_that_do_not_match_their_storage_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let sd = state_dict(false);
    let key = "blocks.0.mlp.fc1.weight";
    let i = sd.iter().position(|(k, _)| k == key).unwrap();
    let good = dir.path().join("good.pth");
    save(&good, &tensors(&sd, "", false), Format::Zip);
    assert!(load(&good, None).is_ok(), "the untouched file loads");
    // A transposed view (torch.save keeps the strides of a view).
    let Value::Dict(mut items) = tensors(&sd, "", false) else {
        panic!("a dict")
    };
    let [rows, cols] = sd[i].1.shape[..] else {
        panic!("a matrix")
    };
    items[i].1 = Value::view(&[rows, cols], &[1, rows], sd[i].1.data.clone());
    for format in [Format::Zip, Format::Legacy] {
        let view = dir.path().join(format!("view-{format:?}.pth"));
        save(&view, &Value::Dict(items.clone()), format);
        let err = load(&view, None).unwrap_err().to_string();
        assert!(
            err.contains(&format!("view-{format:?}.pth"))
                && err.contains(key)
                && err.contains("strides [1, 32]")
                && err.contains(".contiguous()"),
            "{err}"
        );
    }
    // Its storage cut to 4 bytes while the others (larger) are intact, or gone.
    let storage = format!("archive/data/{i}");
    for (name, cut, why) in [
        ("short.pth", Some(4), "holds 4 bytes"),
        ("missing.pth", None, "is missing"),
    ] {
        let path = dir.path().join(name);
        rewrite_zip(&good, &path, |entry, bytes| match entry == storage {
            true => cut.map(|c| bytes[..c].to_vec()),
            false => Some(bytes),
        });
        let err = load(&path, None).unwrap_err().to_string();
        assert!(
            err.contains(name) && err.contains(key) && err.contains(why),
            "{err}"
        );
    }
}
