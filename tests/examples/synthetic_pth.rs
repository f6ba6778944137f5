//! Writes a synthetic PyTorch checkpoint of any size, in the container and key layout of a released
//! self-supervised checkpoint, for measuring how long loading a real-sized `.pth` takes (no Python,
//! no download):
//!
//! ```sh
//! cargo run --release -p vapt-tests --example synthetic_pth -- mae B/16 /tmp/mae-b16.pth
//! vapt inspect /tmp/mae-b16.pth            # prints the load time
//! ```
//!
//! `mae`: `{"model": <timm keys>}` without a head, as `mae_pretrain_vit_base.pth`; `moco`:
//! `{"epoch", "arch", "state_dict": <"module." + timm keys, with a head>}`, as MoCo v3's
//! `linear-vit-b-300ep.pth.tar`. Values are deterministic, not pre-trained.

use std::path::PathBuf;
use std::process::ExitCode;

use vapt_tests::torch::{save, tensors, timm_state_dict, Format, Value};
use vapt_vit::{RawTensor, VitConfig};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [kind, variant, out] = args.as_slice() else {
        eprintln!("usage: synthetic_pth mae|moco VARIANT OUT.pth");
        return ExitCode::FAILURE;
    };
    let cfg = match VitConfig::from_variant(variant) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let out = PathBuf::from(out);
    if out.exists() {
        eprintln!("{}: exists; not overwriting it", out.display());
        return ExitCode::FAILURE;
    }
    let mut sd = timm_state_dict(&cfg);
    let value = match kind.as_str() {
        "mae" => Value::dict([("model".into(), tensors(&sd, "", false))]),
        "moco" => {
            let d = cfg.hidden;
            sd.push((
                "head.weight".into(),
                RawTensor::new(vec![1000, d], vec![0.0; 1000 * d]),
            ));
            sd.push(("head.bias".into(), RawTensor::new(vec![1000], vec![0.0; 1000])));
            Value::dict([
                ("epoch".into(), Value::Int(300)),
                ("arch".into(), Value::Str("vit_base".into())),
                ("state_dict".into(), tensors(&sd, "module.", false)),
            ])
        }
        other => {
            eprintln!("unknown kind `{other}` (expected mae or moco)");
            return ExitCode::FAILURE;
        }
    };
    save(&out, &value, Format::Zip);
    println!(
        "{}: {} tensors of {}",
        out.display(),
        sd.len(),
        cfg.display_name()
    );
    ExitCode::SUCCESS
}
