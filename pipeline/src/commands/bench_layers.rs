//! `vigil-train bench-layers`: each layer of the reference architecture timed in burn's
//! operators and as matrix products.

use clap::Args;

use crate::device::DeviceChoice;

#[derive(Args)]
pub struct BenchLayersArgs {
    /// Images per step.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Timed runs per layer (after 3 warm-up runs).
    #[arg(long, default_value_t = 10)]
    repeats: usize,
    /// Where to run.
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceChoice,
}

/// Times every layer, one JSON line per layer and implementation.
pub fn run(a: BenchLayersArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.batch >= 1 && a.repeats >= 1, "--batch and --repeats must be at least 1");
    let chosen = crate::device::choose(a.device)?;
    eprintln!("device: {}", chosen.description);
    for t in crate::family::layers::bench_layers(&chosen.device, a.batch, a.repeats) {
        println!("{}", serde_json::to_string(&t)?);
    }
    Ok(())
}
