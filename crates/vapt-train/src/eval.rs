//! Scoring a model on a loader: logits of a batch, loss and top-1 over a split, and the frozen
//! backbone's features of every image (what a linear probe trains on).

use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor};
use vapt_data::{FeatureTable, Input, Loader};
use vapt_experts::PromptedVit;

use crate::error::TrainError;
use crate::loss::{count_correct, cross_entropy};

/// Logits of `model` for a batch input (features skip the backbone and go to the head).
pub fn logits<B: Backend>(model: &PromptedVit<B>, input: Input<B>) -> Tensor<B, 2> {
    match input {
        Input::Images(x) => model.forward(x),
        Input::Features(f) => model.classify(f),
    }
}

/// Mean loss and top-1 (%) of `model` over one pass of `loader` (call it on a non-autodiff model:
/// eval mode, no gradients); `on_batch(done, total)` hears about the progress.
pub fn evaluate<B: Backend>(
    model: &PromptedVit<B>,
    loader: &Loader,
    device: &B::Device,
    mut on_batch: impl FnMut(usize, usize),
) -> Result<(f64, f64), TrainError> {
    let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
    let total = loader.len();
    for batch in loader.epoch::<B>(0, device) {
        let batch = batch?;
        let n = batch.targets.dims()[0];
        let logits = logits(model, batch.input);
        let loss: f64 = cross_entropy(logits.clone(), batch.targets.clone())
            .into_scalar()
            .elem();
        loss_sum += loss * n as f64;
        correct += count_correct(logits, batch.targets);
        seen += n;
        on_batch(seen, total);
    }
    let n = seen.max(1) as f64;
    Ok((loss_sum / n, 100.0 * correct as f64 / n))
}

/// [`PromptedVit::features`] of every item of `loader`, in the loader's order of epoch 0 (give it
/// an unshuffled loader to get the split's order).
pub fn compute_features<B: Backend>(
    model: &PromptedVit<B>,
    loader: &Loader,
    device: &B::Device,
) -> Result<FeatureTable, TrainError> {
    let mut values = Vec::new();
    let mut labels = Vec::new();
    let mut dim = 0;
    for batch in loader.epoch::<B>(0, device) {
        let batch = batch?;
        let f = match batch.input {
            Input::Images(x) => model.features(x),
            Input::Features(f) => f,
        };
        dim = f.dims()[1];
        values.extend(
            f.into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .unwrap_or_default(),
        );
        labels.extend(
            batch
                .targets
                .into_data()
                .convert::<i64>()
                .into_vec::<i64>()
                .unwrap_or_default()
                .into_iter()
                .map(|l| l as usize),
        );
    }
    Ok(FeatureTable { dim, values, labels })
}
