//! Running a sweep past one process. A sweep folder (see `vapt_train::sweep`) is the whole
//! state: any number of workers — Slurm array tasks, local processes, processes on other
//! machines sharing the filesystem — claim its points with file locks and write their results
//! there. This crate only starts workers:
//!
//! - [`slurm`]: job-array scripts (one task per point, logs in the sweep folder) and their
//!   submission with `sbatch`, stage after stage;
//! - [`pool`]: worker processes on one node, several per device, their output interleaved line
//!   by line behind a worker label.
//!
//! It knows nothing of models or backends: a worker is a command line (in vapt's binary,
//! `vapt --device D sweep work DIR`).

pub mod pool;
pub mod slurm;

mod error;

pub use error::ClusterError;
