//! A backbone's final-norm tokens checked against another implementation's: the check
//! `cargo xtask import-vit-s14` runs before it says done, and the test of the imported file.
//!
//! The reference (`reference.json` beside the real ViT-S/14) was computed by the original ONNX
//! graph on a synthetic input, `x[b, c, y, x] = 1.5 · sin(0.37·y + 0.11·x + 1.3·c + 0.5·b)`, fed as
//! an already normalised image; it holds, per image, the final LayerNorm of the CLS token
//! (`cls`), the mean of the patch tokens' (`patch_mean`) and row 17 of the token sequence
//! (`patch_17`: CLS is row 0, so this is patch 16 in row-major order).

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde::Deserialize;

use crate::model::Vit;

/// What the reference implementation output, per image `[B][D]`.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenReference {
    /// Final-norm CLS token.
    pub cls: Vec<Vec<f32>>,
    /// Mean over the final-norm patch tokens.
    pub patch_mean: Vec<Vec<f32>>,
    /// Final-norm row 17 of `[CLS, patches]` (patch 16, row-major).
    pub patch_17: Vec<Vec<f32>>,
}

/// The largest absolute difference of each compared output.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenDiff {
    /// CLS.
    pub cls: f32,
    /// Mean of the patch tokens.
    pub patch_mean: f32,
    /// Row 17 of the token sequence.
    pub patch_17: f32,
    /// The largest absolute reference value (for scale).
    pub largest: f32,
}

impl TokenDiff {
    /// The largest of the three differences.
    pub fn max(&self) -> f32 {
        self.cls.max(self.patch_mean).max(self.patch_17)
    }
}

/// The synthetic input `[B, 3, side, side]`: `1.5 · sin(0.37·y + 0.11·x + 1.3·c + 0.5·b)`.
pub fn sine_images<B: Backend>(batch: usize, side: usize, device: &B::Device) -> Tensor<B, 4> {
    let mut data = Vec::with_capacity(batch * 3 * side * side);
    for b in 0..batch {
        for c in 0..3 {
            for y in 0..side {
                for x in 0..side {
                    let v = 0.37 * y as f64 + 0.11 * x as f64 + 1.3 * c as f64 + 0.5 * b as f64;
                    data.push((1.5 * v.sin()) as f32);
                }
            }
        }
    }
    Tensor::from_data(TensorData::new(data, [batch, 3, side, side]), device)
}

/// Runs `vit` on the sine input of the reference's batch at its configured image size and
/// compares its final-norm tokens with `reference`. `Err` says why they cannot be compared (a
/// mean-pooling backbone, a reference of another width or batch, too few patches).
pub fn compare<B: Backend>(vit: &Vit<B>, reference: &TokenReference) -> Result<TokenDiff, String> {
    let batch = reference.cls.len();
    let side = vit.config.image_size;
    let device = vit.pos_embed.device();
    let mut x = vit.embed(sine_images::<B>(batch, side, &device));
    for block in &vit.blocks {
        x = block.forward(x);
    }
    let tokens = vit
        .normed_tokens(x)
        .ok_or("the backbone pools by mean (no final LayerNorm of every token)")?;
    let [b, t, d] = tokens.dims();
    if t < 18 || b != batch {
        return Err(format!(
            "{t} tokens for a batch of {b}; the reference needs {batch} images of 17+ patches"
        ));
    }
    let rows = |t: Tensor<B, 3>| -> Vec<f32> { t.into_data().convert::<f32>().to_vec().unwrap_or_default() };
    let cls = rows(tokens.clone().narrow(1, 0, 1));
    let patch_mean = rows(tokens.clone().narrow(1, 1, t - 1).mean_dim(1));
    let patch_17 = rows(tokens.narrow(1, 17, 1));
    let diff = |ours: &[f32], theirs: &[Vec<f32>]| -> Result<f32, String> {
        if theirs.iter().any(|r| r.len() != d) {
            return Err(format!("the reference's rows are not {d} wide"));
        }
        Ok(ours
            .iter()
            .zip(theirs.iter().flatten())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max))
    };
    let largest = [&reference.cls, &reference.patch_mean, &reference.patch_17]
        .iter()
        .flat_map(|r| r.iter().flatten())
        .fold(0.0f32, |m, v| m.max(v.abs()));
    Ok(TokenDiff {
        cls: diff(&cls, &reference.cls)?,
        patch_mean: diff(&patch_mean, &reference.patch_mean)?,
        patch_17: diff(&patch_17, &reference.patch_17)?,
        largest,
    })
}
