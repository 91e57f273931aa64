//! `vigil-train reference-bundle`: an untrained reference-architecture bundle for benchmarks.

use std::path::PathBuf;

use clap::Args;
use vigil_model::onnx::reference::ArchSpec;

use crate::family::kind::ModelKind;

#[derive(Args)]
pub struct ReferenceBundleArgs {
    /// Model family.
    #[arg(long, value_enum, default_value = "dae")]
    model: ModelKind,
    /// Image channels: 1 (gray) or 3 (RGB).
    #[arg(long, default_value_t = 3)]
    channels: usize,
    /// Input side in pixels (a power of two, at least 32).
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Bundle folder to write.
    #[arg(long)]
    out: PathBuf,
}

/// Writes the bundle with random weights.
pub fn run(a: ReferenceBundleArgs) -> anyhow::Result<()> {
    let spec = ArchSpec { channels: a.channels, size: a.size, ..ArchSpec::default() };
    let bundle = crate::export::reference::write_reference_bundle(&a.out, a.model.family(), &spec, a.seed)?;
    eprintln!("wrote bundle {}", bundle.path.display());
    Ok(())
}
