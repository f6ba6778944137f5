//! `vapt analyze`: the mixture-of-experts view of a trained model as a table and a PNG heatmap.

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

/// A colour ramp from dark blue (0) through teal and green to yellow (1), close to viridis.
pub fn colour(v: f64) -> [u8; 3] {
    const STOPS: [[f64; 3]; 5] = [
        [68.0, 1.0, 84.0],
        [59.0, 82.0, 139.0],
        [33.0, 145.0, 140.0],
        [94.0, 201.0, 98.0],
        [253.0, 231.0, 37.0],
    ];
    let x = v.clamp(0.0, 1.0) * (STOPS.len() - 1) as f64;
    let i = (x.floor() as usize).min(STOPS.len() - 2);
    let f = x - i as f64;
    let c = |k: usize| (STOPS[i][k] + f * (STOPS[i + 1][k] - STOPS[i][k])).round() as u8;
    [c(0), c(1), c(2)]
}

/// Writes two heatmaps side by side (left: CLS query, right: patch queries; rows = blocks from
/// the top, columns = heads; colour = prompt gate mass, scale 0..max) and a colour bar.
pub fn heatmap(view: &MoeView, path: &Path) -> Result<()> {
    const CELL: u32 = 24;
    const GAP: u32 = 12;
    let rows = view.blocks.len() as u32;
    let cols = view.blocks.iter().map(Vec::len).max().unwrap_or(0) as u32;
    let max = view
        .blocks
        .iter()
        .flatten()
        .flat_map(|g| [g.cls_query.prompt, g.patch_query.prompt])
        .fold(1e-9f64, f64::max);
    let panel = cols * CELL;
    let width = 2 * panel + 3 * GAP + CELL;
    let height = rows.max(1) * CELL;
    let mut img = image::RgbImage::from_pixel(width.max(1), height.max(1), image::Rgb([255, 255, 255]));
    for (b, heads) in view.blocks.iter().enumerate() {
        for (h, g) in heads.iter().enumerate() {
            for (p, v) in [g.cls_query.prompt, g.patch_query.prompt].into_iter().enumerate() {
                let x0 = p as u32 * (panel + GAP) + h as u32 * CELL;
                let y0 = b as u32 * CELL;
                let rgb = image::Rgb(colour(v / max));
                for y in y0..y0 + CELL - 1 {
                    for x in x0..x0 + CELL - 1 {
                        img.put_pixel(x, y, rgb);
                    }
                }
            }
        }
    }
    let bar_x = 2 * panel + 2 * GAP;
    for y in 0..height {
        let v = 1.0 - y as f64 / height.max(1) as f64;
        for x in bar_x..bar_x + CELL {
            img.put_pixel(x, y, image::Rgb(colour(v)));
        }
    }
    img.save(path)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vapt_experts::{GateMass, HeadGates};

    #[test]
    fn heatmap_has_one_cell_per_block_and_head_coloured_by_mass() {
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
        let view = MoeView {
            num_prompts: 4,
            blocks: vec![vec![g(0.0), g(0.5)], vec![g(1.0), g(0.25)]],
        };
        let dir = tempfile::tempdir().unwrap();
        let png = dir.path().join("moe.png");
        heatmap(&view, &png).unwrap();
        let img = image::open(&png).unwrap().to_rgb8();
        assert_eq!((img.width(), img.height()), (2 * 48 + 36 + 24, 48));
        assert_eq!(img.get_pixel(2, 2).0, colour(0.0), "block 0 head 0: mass 0");
        assert_eq!(
            img.get_pixel(26, 26).0,
            colour(0.25),
            "block 1 head 1: mass 0.25 of max 1"
        );
        assert_eq!(img.get_pixel(2, 26).0, colour(1.0), "block 1 head 0: the max");
        assert!(table(&view).contains("    1      0.625"), "{}", table(&view));
    }
}
