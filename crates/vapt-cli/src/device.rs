//! The one place where a `--device` string becomes a concrete Burn backend.
//!
//! Everything below the binary is generic over `B: Backend` / `B: AutodiffBackend`; this module
//! maps `cpu` → `Autodiff<Flex>`, `wgpu[:N]` → `Autodiff<Wgpu>`, `cuda[:N]` → `Autodiff<Cuda>` and
//! hands a [`Job`] the matching type and device.

use std::fmt;
use std::str::FromStr;

use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;

/// A device requested on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// Burn's pure-Rust CPU backend (`Flex`); always built.
    Cpu,
    /// WGPU: `None` is the default adapter, `Some(n)` the n-th discrete GPU.
    Wgpu(Option<usize>),
    /// CUDA device `n`.
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        let (kind, index) = match lower.split_once(':') {
            Some((k, i)) => {
                let i: usize = i
                    .parse()
                    .map_err(|_| format!("bad device index in `{s}`: expected e.g. cuda:0"))?;
                (k.to_string(), Some(i))
            }
            None => (lower.clone(), None),
        };
        match (kind.as_str(), index) {
            ("cpu" | "flex", None) => Ok(DeviceSpec::Cpu),
            ("wgpu" | "vulkan" | "metal", i) => Ok(DeviceSpec::Wgpu(i)),
            ("cuda" | "gpu", i) => Ok(DeviceSpec::Cuda(i.unwrap_or(0))),
            _ => Err(format!(
                "unknown device `{s}`: expected cpu, wgpu, wgpu:N, cuda or cuda:N"
            )),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Wgpu(None) => write!(f, "wgpu"),
            DeviceSpec::Wgpu(Some(i)) => write!(f, "wgpu:{i}"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// Work that runs on whichever backend the user picked.
pub trait Job {
    /// What the job returns.
    type Output;
    /// Runs on backend `B` (autodiff-wrapped) and `device`.
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Self::Output>;
}

/// Runs `job` on the backend named by `spec`; a backend not compiled in is an error that says
/// which cargo feature to enable.
pub fn dispatch<J: Job>(spec: DeviceSpec, job: J) -> Result<J::Output> {
    use burn::backend::{Autodiff, Flex};
    match spec {
        DeviceSpec::Cpu => job.run::<Autodiff<Flex>>(Default::default()),
        DeviceSpec::Wgpu(index) => run_wgpu(index, job),
        DeviceSpec::Cuda(index) => run_cuda(index, job),
    }
}

#[cfg(feature = "wgpu")]
fn run_wgpu<J: Job>(index: Option<usize>, job: J) -> Result<J::Output> {
    use burn::backend::wgpu::{Wgpu, WgpuDevice};
    let device = match index {
        None => WgpuDevice::DefaultDevice,
        Some(i) => WgpuDevice::DiscreteGpu(i),
    };
    job.run::<burn::backend::Autodiff<Wgpu>>(device)
}

#[cfg(not(feature = "wgpu"))]
fn run_wgpu<J: Job>(_index: Option<usize>, _job: J) -> Result<J::Output> {
    anyhow::bail!(
        "--device wgpu: this vapt was built without WGPU support. Rebuild with the `wgpu` feature \
         (on by default): `cargo build --release -p vapt-cli --features wgpu`"
    )
}

#[cfg(feature = "cuda")]
fn run_cuda<J: Job>(index: usize, job: J) -> Result<J::Output> {
    use burn::backend::cuda::{Cuda, CudaDevice};
    job.run::<burn::backend::Autodiff<Cuda>>(CudaDevice { index })
}

#[cfg(not(feature = "cuda"))]
fn run_cuda<J: Job>(index: usize, _job: J) -> Result<J::Output> {
    anyhow::bail!(
        "--device cuda:{index}: this vapt was built without CUDA support. Rebuild with the `cuda` \
         feature: `cargo build --release -p vapt-cli --features cuda` (no CUDA toolkit is needed to \
         build; the driver's libcuda is loaded at run time)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!("cpu".parse::<DeviceSpec>(), Ok(DeviceSpec::Cpu));
        assert_eq!("CUDA".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("cuda:3".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(3)));
        assert_eq!("wgpu".parse::<DeviceSpec>(), Ok(DeviceSpec::Wgpu(None)));
        assert_eq!("wgpu:1".parse::<DeviceSpec>(), Ok(DeviceSpec::Wgpu(Some(1))));
        assert!("tpu"
            .parse::<DeviceSpec>()
            .unwrap_err()
            .contains("unknown device"));
        assert!("cuda:x"
            .parse::<DeviceSpec>()
            .unwrap_err()
            .contains("bad device index"));
        assert_eq!(DeviceSpec::Cuda(2).to_string(), "cuda:2");
    }
}
