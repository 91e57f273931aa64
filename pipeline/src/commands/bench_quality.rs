//! `vigil-train bench-quality`: each family trained with its defaults on one data set and
//! evaluated, one JSON line per family.

use std::path::PathBuf;

use clap::Args;

use crate::commands::args::BenchArgs;
use crate::commands::console::stop_on_ctrl_c;
use crate::data::sets::DataSource;
use crate::export::bundle::train_and_export;
use crate::family::kind::ModelKind;
use crate::train::RunDir;

#[derive(Args)]
pub struct BenchQualityArgs {
    /// A data set in MVTec AD layout.
    #[arg(long)]
    data: PathBuf,
    /// Families, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "padim,patchcore,fae,dae,vae,gan,wgan")]
    models: Vec<ModelKind>,
    #[command(flatten)]
    bench: BenchArgs,
}

/// Trains, exports and evaluates each family in turn (Ctrl-C ends the benchmark).
pub fn run(a: BenchQualityArgs) -> anyhow::Result<()> {
    let BenchQualityArgs { data, models, bench } = a;
    let (root, tmp) = bench.root()?;
    let stop = stop_on_ctrl_c()?;
    for model in models {
        let run = RunDir(root.join(format!("{model:?}").to_lowercase()));
        let started = std::time::Instant::now();
        let source = DataSource::Mvtec(data.clone());
        let exported = train_and_export(bench.config(model)?, source, run, bench.device, &stop)?;
        let Some(exported) = exported else { break };
        let train_s = started.elapsed().as_secs_f64();
        let e = exported.evaluation.as_ref();
        println!(
            "{}",
            serde_json::json!({
                "model": model,
                "data": data,
                "image_auroc": e.and_then(|e| e.image_auroc),
                "auroc_per_type": e.map(|e| &e.auroc_per_type),
                "pixel_auroc": e.and_then(|e| e.pixel_auroc),
                "aupro": e.and_then(|e| e.aupro),
                "precision": e.map(|e| e.at_threshold.precision),
                "recall": e.map(|e| e.at_threshold.recall),
                "f1": e.map(|e| e.at_threshold.f1),
                "train_s": train_s,
                "bundle": exported.bundle.path,
            })
        );
    }
    if let Some(t) = tmp {
        let _ = std::fs::remove_dir_all(t);
    }
    Ok(())
}
