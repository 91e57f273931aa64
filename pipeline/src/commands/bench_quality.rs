//! `vigil-train bench-quality`: each family trained with its defaults on one data set and
//! evaluated, one JSON line per family (and per seed with `--labelled`, then their mean and
//! spread).

use std::path::PathBuf;

use clap::Args;

use crate::commands::args::BenchArgs;
use crate::commands::console::stop_on_ctrl_c;
use crate::data::sets::DataSource;
use crate::evaluate::scores::Evaluation;
use crate::export::bundle::train_and_export;
use crate::family::kind::ModelKind;
use crate::train::RunDir;

#[derive(Args)]
pub struct BenchQualityArgs {
    /// A data set in MVTec AD layout.
    #[arg(long)]
    data: PathBuf,
    /// Families, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "padim,fdisc,patchcore,fae,dae,vae,gan,wgan")]
    models: Vec<ModelKind>,
    /// Take this many defects of each type out of the test set as confirmed defects: `fdisc`
    /// learns from them (`--train-abnormal`), every family is judged on the rest, never on an
    /// image it learnt from.
    #[arg(long)]
    labelled: Option<usize>,
    /// With `--labelled`: repeat with this many seeds (each its own choice of defects and its
    /// own training seed) and print the mean and spread.
    #[arg(long, default_value_t = 3)]
    seeds: u64,
    #[command(flatten)]
    bench: BenchArgs,
}

/// The figures of one evaluation, as printed.
fn figures(e: Option<&Evaluation>) -> serde_json::Value {
    serde_json::json!({
        "image_auroc": e.and_then(|e| e.image_auroc),
        "auroc_per_type": e.map(|e| &e.auroc_per_type),
        "pixel_auroc": e.and_then(|e| e.pixel_auroc),
        "aupro": e.and_then(|e| e.aupro),
        "precision": e.map(|e| e.at_threshold.precision),
        "recall": e.map(|e| e.at_threshold.recall),
        "f1": e.map(|e| e.at_threshold.f1),
        "false_alarms_per_1000": e.map(|e| e.at_threshold.false_alarms_per_1000),
        "recall_at_1_in_100": e.and_then(|e| e.recall_at_1_in_100),
    })
}

/// Mean and standard deviation of the numbers under `key` in `runs`.
fn spread(runs: &[serde_json::Value], key: &str) -> serde_json::Value {
    let v: Vec<f64> = runs.iter().filter_map(|r| r[key].as_f64()).collect();
    if v.is_empty() {
        return serde_json::Value::Null;
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len().max(2) - 1) as f64).sqrt();
    serde_json::json!({ "mean": mean, "sd": sd, "n": v.len() })
}

/// Trains, exports and evaluates each family in turn (Ctrl-C ends the benchmark).
pub fn run(a: BenchQualityArgs) -> anyhow::Result<()> {
    let BenchQualityArgs { data, models, labelled, seeds, bench } = a;
    let (root, tmp) = bench.root()?;
    let stop = stop_on_ctrl_c()?;
    let seeds: Vec<Option<u64>> = match labelled {
        Some(_) => (0..seeds.max(1)).map(Some).collect(),
        None => vec![None],
    };
    'models: for model in models {
        let mut runs = vec![];
        for seed in &seeds {
            let split = match (labelled, seed) {
                (Some(n), Some(s)) => {
                    let split = crate::data::split::take_defects(&data, n, *s, &root.join(format!("split-{s}")))?;
                    eprintln!("seed {s}: confirmed defects taken out of the test set: {:?}", split.taken);
                    Some(split)
                }
                _ => None,
            };
            let judged = split.as_ref().map_or(data.clone(), |s| s.root.clone());
            let name = format!("{model:?}").to_lowercase() + &seed.map(|s| format!("-seed{s}")).unwrap_or_default();
            let run = RunDir(root.join(name));
            let started = std::time::Instant::now();
            let defects = split.as_ref().filter(|_| model == ModelKind::Fdisc).map(|s| s.defects.clone());
            let learnt = defects.as_ref().map(|d| crate::data::sets::list_images(d).map(|v| v.len())).transpose()?;
            let mut cfg = bench.config(model)?;
            if let Some(s) = seed {
                cfg.seed = *s;
            }
            let source = DataSource::Mvtec(judged);
            let Some(exported) = train_and_export(cfg, source, defects, run, bench.device, &stop)? else {
                break 'models;
            };
            let mut line = figures(exported.evaluation.as_ref());
            line["model"] = serde_json::json!(model);
            line["data"] = serde_json::json!(data);
            line["seed"] = serde_json::json!(seed);
            line["confirmed_defects_learnt"] = serde_json::json!(learnt.unwrap_or(0));
            line["train_s"] = serde_json::json!(started.elapsed().as_secs_f64());
            line["bundle"] = serde_json::json!(exported.bundle.path);
            println!("{line}");
            runs.push(line);
        }
        if runs.len() > 1 {
            let keys = ["image_auroc", "pixel_auroc", "recall", "false_alarms_per_1000", "recall_at_1_in_100"];
            let mut summary =
                serde_json::json!({ "model": model, "data": data, "labelled": labelled, "seeds": runs.len() });
            for k in keys {
                summary[k] = spread(&runs, k);
            }
            println!("{summary}");
        }
    }
    if let Some(t) = tmp {
        let _ = std::fs::remove_dir_all(t);
    }
    Ok(())
}
