//! The training loss and the top-1 count.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Int, Tensor};

/// Mean softmax cross-entropy over the batch: `mean_b(logsumexp(z_b) − z_b[y_b])` (SPEC §4.3,
/// unit class weights).
pub fn cross_entropy<B: Backend>(logits: Tensor<B, 2>, labels: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    let [b, _] = logits.dims();
    let logp = log_softmax(logits, 1);
    let picked = logp.gather(1, labels.reshape([b, 1]));
    picked.mean().neg()
}

/// How many rows of `logits` have their largest value at the target class.
pub fn count_correct<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> usize {
    let n = targets.dims()[0];
    let pred = logits.argmax(1).reshape([n]);
    let c: i64 = pred.equal(targets).int().sum().into_scalar().elem();
    c as usize
}
