//! `vigil-train kolektor`: the KolektorSDD surface-defect set converted into MVTec layout.

use std::path::PathBuf;

use clap::Args;

#[derive(Args)]
pub struct KolektorArgs {
    /// Output folder (MVTec layout; defect folder `crack`).
    #[arg(long)]
    out: PathBuf,
    /// The data folder holding kos01 .. kos50.
    #[arg(long)]
    source: PathBuf,
}

/// Converts the set and prints a JSON line of counts.
pub fn run(a: KolektorArgs) -> anyhow::Result<()> {
    let s = crate::data::kolektor::convert(&a.source, &a.out)?;
    println!("{}", serde_json::to_string(&s)?);
    Ok(())
}
