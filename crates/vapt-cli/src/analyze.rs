//! `vapt analyze`: the mixture-of-experts view of a trained model as a table, and as a labelled
//! figure (`vapt_train::figures::moe`) in PNG and/or SVG.

use std::path::Path;

use anyhow::{Context, Result};
use vapt_experts::MoeView;

/// One row per block: the prompt gate mass of the CLS query and of patch queries, averaged over
/// heads, then the per-head CLS values.
pub fn table(view: &MoeView) -> String {
    let mut out = format!(
        "prompt-expert gate mass ({} prompt tokens; mean over the images; 1 = all attention on prompts)\n",
        view.num_prompts
    );
    out.push_str("block  CLS query  patch queries  per head (CLS query)\n");
    for (b, heads) in view.blocks.iter().enumerate() {
        let h = heads.len().max(1) as f64;
        let cls: f64 = heads.iter().map(|g| g.cls_query.prompt).sum::<f64>() / h;
        let patch: f64 = heads.iter().map(|g| g.patch_query.prompt).sum::<f64>() / h;
        let per: Vec<String> = heads
            .iter()
            .map(|g| format!("{:.2}", g.cls_query.prompt))
            .collect();
        out.push_str(&format!("{b:>5}  {cls:>9.3}  {patch:>13.3}  {}\n", per.join(" ")));
    }
    out
}

/// Writes the MoE figure of `view` (from the run or artifact `source`) to the files given.
pub fn write_figure(view: &MoeView, source: &Path, png: Option<&Path>, svg: Option<&Path>) -> Result<()> {
    let chart = vapt_train::figures::moe(view, &source.display().to_string());
    if let Some(p) = png {
        std::fs::write(p, vapt_plot::png(&chart)?).with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = svg {
        std::fs::write(p, vapt_plot::svg(&chart)?).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vapt_experts::{GateMass, HeadGates};

    fn view() -> MoeView {
        let g = |v: f64| HeadGates {
            cls_query: GateMass {
                prompt: v,
                patch: 1.0 - v,
                cls: 0.0,
            },
            patch_query: GateMass {
                prompt: v / 2.0,
                patch: 1.0 - v / 2.0,
                cls: 0.0,
            },
        };
        MoeView {
            num_prompts: 4,
            blocks: vec![vec![g(0.0), g(0.5), g(0.75)], vec![g(1.0), g(0.25), g(0.125)]],
        }
    }

    #[test]
    fn the_figure_has_a_labelled_cell_per_block_and_head_in_both_panels() {
        let dir = tempfile::tempdir().unwrap();
        let (png, svg) = (dir.path().join("moe.png"), dir.path().join("moe.svg"));
        write_figure(&view(), Path::new("runs/demo"), Some(&png), Some(&svg)).unwrap();
        let svg = std::fs::read_to_string(&svg).unwrap();
        let texts = vapt_plot::texts(&svg);
        for needle in [
            "Attention on the 4 prompt experts, per block and head",
            "runs/demo",
            "CLS query",
            "patch queries (mean)",
            "block",
            "head",
            "gate mass on prompts",
        ] {
            assert!(texts.iter().any(|t| t == needle), "no `{needle}` in {texts:?}");
        }
        // CLS panel: 0.00 0.50 0.75 / 1.00 0.25 0.13 (0.125 rounds to even); patch panel: halves.
        let count = |v: &str| texts.iter().filter(|t| *t == v).count();
        assert_eq!(count("0.00"), 2, "block 0 head 0 in both panels");
        assert_eq!(count("0.75"), 1);
        assert_eq!(count("0.38"), 1, "0.375 in the patch panel");
        assert_eq!(count("0.50"), 2, "CLS block 0 head 1 and patch block 1 head 0");
        let img = image::open(&png).unwrap();
        assert!(img.width() > 400 && img.height() > 200);
        assert!(table(&view()).contains("    1      0.458"), "{}", table(&view()));
    }
}
