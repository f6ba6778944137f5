use std::path::PathBuf;

/// What can go wrong starting workers.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A file or process could not be read, written or started.
    #[error("{path}: {source}")]
    Io {
        /// The file or program.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `sbatch` is not installed here.
    #[error(
        "sbatch not found on PATH: --slurm needs a Slurm client on this machine (Debian: \
         apt-get install slurm-client); `--dry-run` prints the job scripts without it"
    )]
    NoSbatch,
    /// `sbatch` refused a script.
    #[error("sbatch refused {script} (exit {status}):\n{stderr}")]
    Sbatch {
        /// The job script.
        script: PathBuf,
        /// sbatch's exit status.
        status: String,
        /// What sbatch said.
        stderr: String,
    },
    /// `sbatch --parsable` printed something that is not a job id.
    #[error("sbatch accepted {script} but printed no job id: `{stdout}`")]
    NoJobId {
        /// The job script.
        script: PathBuf,
        /// What sbatch printed.
        stdout: String,
    },
    /// A bad option.
    #[error("{0}")]
    Invalid(String),
}

impl ClusterError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
