//! `vigil-train elpv`: the ELPV solar-cell data set converted into MVTec layout.

use std::path::PathBuf;

use clap::Args;

#[derive(Args)]
pub struct ElpvArgs {
    /// Output folder (MVTec layout; defect folders defect_p033, defect_p067, defect_p100).
    #[arg(long)]
    out: PathBuf,
    /// The package's data folder (labels.csv, images/); default: found through python3.
    #[arg(long)]
    source: Option<PathBuf>,
    /// One folder per cell type (OUT/mono, OUT/poly): the products of a conditional model.
    #[arg(long)]
    by_type: bool,
}

/// Converts the set and prints a JSON line of counts per data set written.
pub fn run(a: ElpvArgs) -> anyhow::Result<()> {
    let ElpvArgs { out, source, by_type } = a;
    let source = match source {
        Some(s) => s,
        None => crate::data::elpv::find_installed()?,
    };
    let written = if by_type {
        crate::data::elpv::convert_by_type(&source, &out)?
    } else {
        vec![crate::data::elpv::convert(&source, &out)?]
    };
    for s in written {
        println!("{}", serde_json::to_string(&s)?);
    }
    Ok(())
}
