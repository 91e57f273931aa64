//! Choosing where to train: a hardware GPU through wgpu (Vulkan on Linux), or burn's
//! pure-Rust CPU backend. A software adapter (Mesa's llvmpipe, lavapipe, swrast) is not a GPU.

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

/// `--device` on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "snake_case")]
pub enum DeviceChoice {
    /// A hardware GPU when one exists, else the CPU.
    #[default]
    Auto,
    /// A hardware GPU, or an error.
    Gpu,
    /// burn's CPU backend (flex).
    Cpu,
}

/// The device chosen and how to describe it.
#[derive(Debug, Clone)]
pub struct Chosen {
    /// The autodiff-capable device to train on.
    pub device: Device,
    /// For logs and the manifest: `cpu (flex)` or the adapter's name.
    pub description: String,
}

/// Why no GPU can be used.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The build has no GPU support.
    #[error(
        "this vigil-train was built without GPU support (cargo feature `gpu`); use --device cpu or rebuild with the default features"
    )]
    NoGpuSupport,
    /// No adapter, or only a software one.
    #[error("no hardware GPU: {0}; use --device cpu (or --device auto, which falls back to the CPU)")]
    NoGpu(String),
}

fn cpu() -> Chosen {
    Chosen { device: Device::flex().autodiff(), description: "cpu (flex)".into() }
}

#[cfg(feature = "gpu")]
fn gpu() -> Result<Chosen, DeviceError> {
    use burn::tensor::DeviceKind;
    use burn::tensor::wgpu::{WgpuBackend, wgpu};
    let api = if cfg!(target_os = "macos") {
        WgpuBackend::Metal
    } else if cfg!(windows) {
        WgpuBackend::Dx12
    } else {
        WgpuBackend::Vulkan
    };
    // Asking for the API explicitly keeps wgpu from falling back to GL on a software renderer.
    match Device::wgpu_options().device_kind(DeviceKind::DefaultDevice).graphics_api(api).init_with_setup() {
        Ok((device, setup)) => {
            let info = setup.adapter.get_info();
            if info.device_type == wgpu::DeviceType::Cpu {
                Err(DeviceError::NoGpu(format!(
                    "the only adapter is {} ({:?}), a software renderer",
                    info.name, info.backend
                )))
            } else {
                Ok(Chosen {
                    device: device.autodiff(),
                    description: format!("gpu: {} ({:?}, {:?})", info.name, info.device_type, info.backend),
                })
            }
        }
        Err(e) => Err(DeviceError::NoGpu(format!("no {api:?} adapter ({e})"))),
    }
}

#[cfg(not(feature = "gpu"))]
fn gpu() -> Result<Chosen, DeviceError> {
    Err(DeviceError::NoGpuSupport)
}

/// Picks the device and logs which, and why.
pub fn choose(choice: DeviceChoice) -> Result<Chosen, DeviceError> {
    let chosen = match choice {
        DeviceChoice::Cpu => cpu(),
        DeviceChoice::Gpu => gpu()?,
        DeviceChoice::Auto => match gpu() {
            Ok(g) => g,
            Err(e) => {
                tracing::info!("device auto: training on the CPU because {e}");
                cpu()
            }
        },
    };
    tracing::info!("training on {}", chosen.description);
    Ok(chosen)
}
