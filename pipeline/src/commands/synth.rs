//! `vigil-train synth`: the procedural data set, for tests, demos and benchmarks.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

#[derive(Args)]
pub struct SynthArgs {
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// Normal training images.
    #[arg(long, default_value_t = 200)]
    n_train: usize,
    /// Test images (half normal, half defective).
    #[arg(long, default_value_t = 80)]
    n_test: usize,
    /// Image side in pixels.
    #[arg(long, default_value_t = 256)]
    size: u32,
    /// Tinted RGB images instead of gray.
    #[arg(long)]
    rgb: bool,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Products (1 to 4): more than 1 writes one data set per product into
    /// `OUT/<product>/` (brushed, crosswise, dark, coarse), for the conditional families.
    #[arg(long, default_value_t = 1)]
    products: usize,
}

/// Writes the data set(s) and prints a JSON line of counts for each.
pub fn run(a: SynthArgs) -> anyhow::Result<()> {
    let SynthArgs { out, n_train, n_test, size, rgb, seed, products } = a;
    anyhow::ensure!(size >= 32, "--size must be at least 32");
    let known = vigil_model::synth::PRODUCTS.len();
    anyhow::ensure!((1..=known).contains(&products), "--products must be 1 to {known}");
    let cfg = vigil_model::synth::SynthConfig { size, n_train, n_test, rgb, seed };
    let written = if products == 1 {
        vigil_model::synth::generate(&out, &cfg).map(|s| vec![s])
    } else {
        vigil_model::synth::generate_products(&out, &cfg, products)
    };
    for s in written.with_context(|| format!("writing {}", out.display()))? {
        println!("{}", serde_json::to_string(&s)?);
    }
    Ok(())
}
