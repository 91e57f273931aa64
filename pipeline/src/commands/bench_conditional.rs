//! `vigil-train bench-conditional`: per family, one conditional model of several products
//! against one model of them pooled and one model per product.

use std::path::PathBuf;

use clap::Args;

use crate::bench::conditional::{CompareRequest, compare, products_in};
use crate::commands::args::BenchArgs;
use crate::commands::console::{print_json, stop_on_ctrl_c};
use crate::family::kind::ModelKind;

#[derive(Args)]
pub struct BenchConditionalArgs {
    /// One subfolder per product (as `train --conditional --data`), each with test images.
    #[arg(long)]
    data: PathBuf,
    /// Families, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "padim")]
    models: Vec<ModelKind>,
    #[command(flatten)]
    bench: BenchArgs,
}

/// Runs the comparison for each family, JSON lines per family and setup.
pub fn run(a: BenchConditionalArgs) -> anyhow::Result<()> {
    let BenchConditionalArgs { data, models, bench } = a;
    let (root, tmp) = bench.root()?;
    let stop = stop_on_ctrl_c()?;
    let classes = products_in(&data)?;
    for model in models {
        let req = CompareRequest {
            classes: classes.clone(),
            config: bench.config(model)?,
            root: root.join(format!("{model:?}").to_lowercase()),
            device: bench.device,
        };
        compare(&req, &stop, &mut print_json)?;
    }
    if let Some(t) = tmp {
        let _ = std::fs::remove_dir_all(t);
    }
    Ok(())
}
