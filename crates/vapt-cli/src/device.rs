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
/// which cargo feature to enable, and a device that is not there (no WGPU adapter, no CUDA driver
/// or GPU) is an error that says what is missing — found by probing before any model is built,
/// since Burn's runtimes panic instead.
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
    probe_wgpu(index)?;
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
    probe_cuda(index)?;
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

/// Drives a future that resolves without waiting (wgpu's native adapter calls) to completion.
#[cfg(feature = "wgpu")]
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = future.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Checks that Burn's WGPU backend will find the adapter `wgpu[:index]` asks for (the default
/// adapter, or the index-th discrete GPU), as Burn selects it, without Burn's panic.
#[cfg(feature = "wgpu")]
fn probe_wgpu(index: Option<usize>) -> Result<()> {
    use burn::backend::wgpu::graphics::{AutoGraphicsApi, GraphicsApi};
    let backend = AutoGraphicsApi::backend();
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: backend.into(),
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let adapters = block_on(instance.enumerate_adapters(backend.into()));
    let infos: Vec<wgpu::AdapterInfo> = adapters.iter().map(|a| a.get_info()).collect();
    if infos.is_empty() {
        anyhow::bail!(
            "--device wgpu: no WGPU adapter found ({backend:?}: no driver answered). Install a \
             {backend:?} driver for your GPU; on a machine without one, Mesa's software driver \
             works (Debian/Ubuntu: `apt-get install mesa-vulkan-drivers libvulkan1`). Or use \
             --device cpu."
        );
    }
    if let Some(i) = index {
        let discrete = infos
            .iter()
            .filter(|a| a.device_type == wgpu::DeviceType::DiscreteGpu)
            .count();
        let other = infos
            .iter()
            .filter(|a| a.device_type == wgpu::DeviceType::Other)
            .count();
        if i >= discrete && i >= other {
            let found: Vec<String> = infos
                .iter()
                .map(|a| format!("{} ({:?})", a.name, a.device_type))
                .collect();
            anyhow::bail!(
                "--device wgpu:{i}: there is no discrete GPU number {i} ({discrete} found); the \
                 adapters are: {}. Use --device wgpu for the default adapter.",
                found.join(", ")
            );
        }
    }
    Ok(())
}

/// Checks that the CUDA driver loads, initialises and has device `index`, before Burn's CUDA
/// runtime would panic.
#[cfg(feature = "cuda")]
fn probe_cuda(index: usize) -> Result<()> {
    // SAFETY: loading the NVIDIA driver library runs its initialisers, as Burn's runtime would.
    let lib = ["libcuda.so.1", "libcuda.so", "nvcuda.dll", "libcuda.dylib"]
        .iter()
        .find_map(|name| unsafe { libloading::Library::new(name) }.ok());
    let Some(lib) = lib else {
        anyhow::bail!(
            "--device cuda:{index}: no CUDA driver (libcuda.so.1 not found). Install the NVIDIA \
             driver (`nvidia-smi` should list the GPU), or use --device cpu or --device wgpu."
        );
    };
    // SAFETY: the two driver API entry points with their documented C signatures.
    let (init, count) = unsafe {
        let init = lib.get::<unsafe extern "C" fn(u32) -> i32>(b"cuInit\0");
        let count = lib.get::<unsafe extern "C" fn(*mut i32) -> i32>(b"cuDeviceGetCount\0");
        match (init, count) {
            (Ok(i), Ok(c)) => (*i, *c),
            _ => {
                anyhow::bail!("--device cuda:{index}: the CUDA driver library lacks cuInit/cuDeviceGetCount")
            }
        }
    };
    // SAFETY: cuInit takes flags (0) and cuDeviceGetCount writes one int.
    let status = unsafe { init(0) };
    if status != 0 {
        anyhow::bail!(
            "--device cuda:{index}: the CUDA driver did not initialise (CUresult {status}; 100 means \
             no CUDA-capable GPU is visible): check `nvidia-smi` and CUDA_VISIBLE_DEVICES"
        );
    }
    let mut n = 0i32;
    // SAFETY: as above.
    let status = unsafe { count(&mut n) };
    if status != 0 || index >= n.max(0) as usize {
        anyhow::bail!("--device cuda:{index}: {n} CUDA device(s) visible; use an index below {n}");
    }
    Ok(())
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
