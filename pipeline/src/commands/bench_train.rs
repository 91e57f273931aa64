//! `vigil-train bench-train`: training steps of the reference architectures timed on random
//! data, comparable with the PyTorch reference script.

use clap::Args;

use crate::device::DeviceChoice;
use crate::family::kind::ModelKind;
use crate::family::layers::ConvImpl;

#[derive(Args)]
pub struct BenchTrainArgs {
    /// Families, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "dae,vae,gan,wgan")]
    model: Vec<ModelKind>,
    /// Images per step.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Timed steps (after 3 warm-up steps).
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Where to train.
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceChoice,
    /// How the strided 4x4 convolutions are computed (see bench-layers).
    #[arg(long, value_enum, default_value = "burn")]
    conv_impl: ConvImpl,
}

/// Times each family, one JSON line each.
pub fn run(a: BenchTrainArgs) -> anyhow::Result<()> {
    crate::family::layers::set_conv_impl(a.conv_impl);
    for m in a.model {
        let r = crate::train::bench(m, a.batch, a.steps, a.device)?;
        println!("{}", serde_json::to_string(&r)?);
    }
    Ok(())
}
