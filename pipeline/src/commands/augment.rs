//! `vigil-train augment`: defective images made from normal ones by a CycleGAN's generator.

use std::path::PathBuf;

use clap::Args;

#[derive(Args)]
pub struct AugmentArgs {
    /// The `vigil-train cyclegan` run folder.
    #[arg(long)]
    generator: PathBuf,
    /// Normal images to start from.
    #[arg(long)]
    normal: PathBuf,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// How many images to write.
    #[arg(long, default_value_t = 100)]
    n: usize,
}

/// Writes the images and prints what was written as one JSON line.
pub fn run(a: AugmentArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.n >= 1, "--n must be at least 1");
    let done = crate::family::cyclegan::augment::augment(&a.generator, &a.normal, &a.out, a.n)?;
    println!("{}", serde_json::to_string(&done)?);
    Ok(())
}
