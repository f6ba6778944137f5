//! Batches for training and evaluation: one [`Loader`] over either decoded images (an
//! [`ImageSet`]) or cached feature rows (a [`FeatureTable`], linear probing), in a shuffled
//! (seed, epoch) or sequential order. Image batches are decoded and transformed on a worker thread
//! one batch ahead of the consumer; a batch leaves this crate once, as tensors on the device.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::error::DataError;
use crate::images::{make_batch, ImageItem, ImageSet};
use crate::transform::SplitMix64;

/// The model input of a batch.
#[derive(Debug, Clone)]
pub enum Input<B: Backend> {
    /// Images `[B, 3, S, S]`.
    Images(Tensor<B, 4>),
    /// Precomputed head inputs `[B, D]` (the frozen backbone's features).
    Features(Tensor<B, 2>),
}

/// One batch on a device.
#[derive(Debug, Clone)]
pub struct Batch<B: Backend> {
    /// The model input.
    pub input: Input<B>,
    /// `[B]` class indices.
    pub targets: Tensor<B, 1, Int>,
}

/// The head's input for every image of a split, computed once (linear probing on a frozen
/// backbone with a deterministic transform).
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureTable {
    /// Feature width.
    pub dim: usize,
    /// `[N, dim]`, row-major.
    pub values: Vec<f32>,
    /// Labels.
    pub labels: Vec<usize>,
}

impl FeatureTable {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Rows `indices` as a batch.
    pub fn batch<B: Backend>(&self, indices: &[usize], device: &B::Device) -> Batch<B> {
        let mut v = Vec::with_capacity(indices.len() * self.dim);
        for &i in indices {
            v.extend_from_slice(&self.values[i * self.dim..(i + 1) * self.dim]);
        }
        let labels: Vec<i64> = indices.iter().map(|&i| self.labels[i] as i64).collect();
        Batch {
            input: Input::Features(Tensor::from_data(
                TensorData::new(v, [indices.len(), self.dim]),
                device,
            )),
            targets: Tensor::from_data(TensorData::new(labels, [indices.len()]), device),
        }
    }
}

/// The seed of epoch `epoch` of a run seeded `seed`: the shuffle's, and (in training) Burn's
/// generator's for that epoch.
pub fn epoch_seed(seed: u64, epoch: usize) -> u64 {
    SplitMix64(seed ^ (epoch as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03)).next_u64()
}

/// The order of `n` items in `epoch`: a Fisher–Yates shuffle seeded by (seed, epoch).
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = SplitMix64(epoch_seed(seed, epoch));
    for i in (1..n).rev() {
        let j = rng.below(i + 1);
        order.swap(i, j);
    }
    order
}

#[derive(Debug, Clone)]
enum Source {
    Images(Arc<ImageSet>),
    Features(Arc<FeatureTable>),
}

/// Batches of one split, epoch by epoch.
#[derive(Debug, Clone)]
pub struct Loader {
    source: Source,
    batch_size: usize,
    /// Seed of the per-epoch shuffle; `None`: the split's own order.
    shuffle: Option<u64>,
}

impl Loader {
    /// Batches of `batch_size` images of `set` (the last one partial), shuffled per epoch with
    /// `shuffle`'s seed or in order.
    pub fn images(set: Arc<ImageSet>, batch_size: usize, shuffle: Option<u64>) -> Self {
        Self {
            source: Source::Images(set),
            batch_size: batch_size.max(1),
            shuffle,
        }
    }

    /// Batches of rows of `table`, as [`Self::images`].
    pub fn features(table: Arc<FeatureTable>, batch_size: usize, shuffle: Option<u64>) -> Self {
        Self {
            source: Source::Features(table),
            batch_size: batch_size.max(1),
            shuffle,
        }
    }

    /// Items per epoch.
    pub fn len(&self) -> usize {
        match &self.source {
            Source::Images(set) => set.len(),
            Source::Features(t) => t.len(),
        }
    }

    /// Whether the split is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Batches per epoch.
    pub fn steps(&self) -> usize {
        self.len().div_ceil(self.batch_size)
    }

    /// The item order of `epoch`.
    pub fn order(&self, epoch: usize) -> Vec<usize> {
        match self.shuffle {
            Some(seed) => epoch_order(self.len(), seed, epoch),
            None => (0..self.len()).collect(),
        }
    }

    /// The batches of `epoch` on `device`. Images are prepared one batch ahead on a worker
    /// thread; dropping the iterator stops it.
    pub fn epoch<B: Backend>(&self, epoch: usize, device: &B::Device) -> Batches<B> {
        let chunks: Vec<Vec<usize>> = self
            .order(epoch)
            .chunks(self.batch_size)
            .map(<[usize]>::to_vec)
            .collect();
        let inner = match &self.source {
            Source::Features(table) => Inner::Features {
                table: table.clone(),
                chunks: chunks.into_iter(),
            },
            Source::Images(set) => {
                let (tx, rx) = sync_channel::<Result<Vec<ImageItem>, DataError>>(2);
                let worker_set = set.clone();
                let worker = std::thread::spawn(move || {
                    for chunk in chunks {
                        if tx.send(worker_set.items(&chunk, epoch as u64)).is_err() {
                            return;
                        }
                    }
                });
                Inner::Images {
                    size: set.transform.output_size(),
                    rx: Some(rx),
                    worker: Some(worker),
                }
            }
        };
        Batches {
            inner,
            device: device.clone(),
        }
    }
}

enum Inner {
    Images {
        size: usize,
        rx: Option<Receiver<Result<Vec<ImageItem>, DataError>>>,
        worker: Option<JoinHandle<()>>,
    },
    Features {
        table: Arc<FeatureTable>,
        chunks: std::vec::IntoIter<Vec<usize>>,
    },
}

/// The batches of one epoch (see [`Loader::epoch`]).
pub struct Batches<B: Backend> {
    inner: Inner,
    device: B::Device,
}

impl<B: Backend> Iterator for Batches<B> {
    type Item = Result<Batch<B>, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.inner {
            Inner::Features { table, chunks } => chunks.next().map(|c| Ok(table.batch(&c, &self.device))),
            Inner::Images { size, rx, .. } => {
                let items = rx.as_ref()?.recv().ok()?;
                Some(items.map(|items| {
                    let b = make_batch::<B>(&items, *size, &self.device);
                    Batch {
                        input: Input::Images(b.images),
                        targets: b.targets,
                    }
                }))
            }
        }
    }
}

impl<B: Backend> Drop for Batches<B> {
    fn drop(&mut self) {
        if let Inner::Images { rx, worker, .. } = &mut self.inner {
            // Closing the channel stops the worker after the batch it is preparing.
            drop(rx.take());
            if let Some(w) = worker.take() {
                let _ = w.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use burn::backend::Flex;

    use super::*;

    #[test]
    fn shuffles_are_permutations_fixed_by_seed_and_epoch() {
        let a = epoch_order(50, 42, 3);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_eq!(a, epoch_order(50, 42, 3));
        assert_ne!(a, epoch_order(50, 42, 4));
        assert_ne!(a, epoch_order(50, 43, 3));
    }

    #[test]
    fn feature_batches_cover_every_row_once_in_order_or_shuffled() {
        let table = Arc::new(FeatureTable {
            dim: 2,
            values: (0..14).map(|v| v as f32).collect(),
            labels: (0..7).collect(),
        });
        let dev = Default::default();
        for shuffle in [None, Some(5)] {
            let loader = Loader::features(table.clone(), 3, shuffle);
            assert_eq!((loader.len(), loader.steps()), (7, 3));
            let mut seen = Vec::new();
            for batch in loader.epoch::<Flex>(1, &dev) {
                let batch = batch.unwrap();
                let Input::Features(x) = batch.input else {
                    panic!("a feature loader gives features")
                };
                let labels = batch
                    .targets
                    .into_data()
                    .convert::<i64>()
                    .to_vec::<i64>()
                    .unwrap();
                let x = x.into_data().to_vec::<f32>().unwrap();
                for (j, &l) in labels.iter().enumerate() {
                    assert_eq!(x[2 * j], 2.0 * l as f32, "row {l} carries its own features");
                }
                seen.extend(labels);
            }
            assert_eq!(seen.len(), 7);
            if shuffle.is_none() {
                assert_eq!(seen, (0..7).collect::<Vec<i64>>());
            } else {
                assert_eq!(
                    seen,
                    loader.order(1).iter().map(|&i| i as i64).collect::<Vec<_>>()
                );
            }
        }
    }
}
