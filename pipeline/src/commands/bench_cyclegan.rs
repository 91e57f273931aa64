//! `vigil-train bench-cyclegan`: thresholds calibrated on a CycleGAN's defects against those
//! calibrated on normals alone and on the few real defects it learnt from.

use std::path::PathBuf;

use clap::Args;

use crate::bench::cyclegan::{BenchRequest, bench};
use crate::commands::args::BenchArgs;
use crate::commands::console::{print_json, stop_on_ctrl_c};
use crate::config::TrainConfig;
use crate::device::DeviceChoice;
use crate::family::cyclegan::config::CycleConfig;
use crate::family::kind::ModelKind;

#[derive(Args)]
pub struct BenchCycleganArgs {
    /// A data set in MVTec AD layout with defect types under test/.
    #[arg(long)]
    data: PathBuf,
    /// Real defects per type the CycleGAN learns from.
    #[arg(long, default_value_t = 5)]
    per_type: usize,
    /// Defective images the generator writes.
    #[arg(long, default_value_t = 100)]
    generated: usize,
    /// The family calibrated (its defaults).
    #[arg(long, value_enum, default_value = "padim")]
    model: ModelKind,
    /// A TOML file of CycleGAN options (default: its defaults).
    #[arg(long)]
    cyclegan_config: Option<PathBuf>,
    /// Where to train.
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceChoice,
    /// Where the runs go (default: a temporary folder, removed afterwards).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Runs the comparison, one JSON line per calibration.
pub fn run(a: BenchCycleganArgs) -> anyhow::Result<()> {
    let BenchCycleganArgs { data, per_type, generated, model, cyclegan_config, device, out } = a;
    anyhow::ensure!(per_type >= 1 && generated >= 1, "--per-type and --generated must be at least 1");
    let (root, tmp) = BenchArgs { device, epochs: None, out, config: None }.root()?;
    let cyclegan = match &cyclegan_config {
        Some(p) => CycleConfig::from_file(p)?,
        None => CycleConfig::default(),
    };
    let req = BenchRequest {
        data,
        per_type,
        generated,
        model: TrainConfig::default().with_model(model),
        cyclegan,
        root,
        device,
    };
    let stop = stop_on_ctrl_c()?;
    bench(&req, &stop, &mut print_json)?;
    if let Some(t) = tmp {
        let _ = std::fs::remove_dir_all(t);
    }
    Ok(())
}
