//! `vigil-train train`: train a family on normal images (or resume a run), then calibrate,
//! evaluate and export its bundle.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use vigil_model::engine::EngineConfig;

use crate::commands::args::DataArgs;
use crate::commands::console::{print_export, stop_on_ctrl_c};
use crate::config::TrainConfig;
use crate::device::DeviceChoice;
use crate::export::bundle::{ExportRequest, export};
use crate::family::kind::ModelKind;
use crate::run::Outcome;
use crate::train::{RunDir, TrainRequest, train};

#[derive(Args)]
pub struct TrainArgs {
    /// Model family (default: padim, pretrained features).
    #[arg(long, value_enum)]
    model: Option<ModelKind>,
    #[command(flatten)]
    data: DataArgs,
    /// Run folder (checkpoints, losses, config); also the default bundle name.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Epochs.
    #[arg(long)]
    epochs: Option<u32>,
    /// Batch size.
    #[arg(long)]
    batch: Option<usize>,
    /// Model input side in pixels (default: 256 for the feature families, a multiple of 32;
    /// 128 for the others, a power of two).
    #[arg(long)]
    size: Option<usize>,
    /// 1 (gray) or 3 (RGB); default: from the images.
    #[arg(long)]
    channels: Option<usize>,
    /// Seed of every random choice.
    #[arg(long)]
    seed: Option<u64>,
    /// Where to train.
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceChoice,
    /// A TOML file with any of the training options (command-line options win).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Continue the run in this folder from its last checkpoint.
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["out", "config"])]
    resume: Option<PathBuf>,
    /// Labelled defective images held out for calibration: the threshold becomes the one with
    /// the best F1 on them and the validation normals (default: a quantile of normal scores).
    #[arg(long)]
    val_abnormal: Option<PathBuf>,
    /// Confirmed defective images to learn from (`--model fdisc`): in each, the cells the
    /// model finds most anomalous are taught as anomalous. Keep them apart from the images
    /// the model is judged on.
    #[arg(long)]
    train_abnormal: Option<PathBuf>,
    /// Stop after training; export later with `vigil-train export`.
    #[arg(long)]
    no_export: bool,
    /// Bundle folder to export to (default: RUN_DIR/bundle).
    #[arg(long)]
    bundle: Option<PathBuf>,
}

/// The training settings: the config file's (or the defaults), then the command line's.
fn train_config(a: &TrainArgs) -> anyhow::Result<TrainConfig> {
    let mut cfg = match &a.config {
        Some(p) => TrainConfig::from_file(p)?,
        None => TrainConfig::default(),
    };
    if let Some(m) = a.model {
        cfg = cfg.with_model(m);
    }
    macro_rules! set {
        ($($f:ident),*) => { $( if let Some(v) = a.$f { cfg.$f = v; } )* };
    }
    set!(epochs, batch, size, seed);
    if a.channels.is_some() {
        cfg.channels = a.channels;
    }
    cfg.validate()?;
    Ok(cfg)
}

/// Trains (stopping cleanly on Ctrl-C) and, unless told not to, exports the bundle.
pub fn run(a: TrainArgs) -> anyhow::Result<()> {
    let (run, cfg, resume) = match &a.resume {
        Some(dir) => (RunDir(dir.clone()), TrainConfig::default(), true),
        None => {
            let out = a.out.clone().context("pass --out RUN_DIR (or --resume RUN_DIR)")?;
            (RunDir(out), train_config(&a)?, false)
        }
    };
    let source = a.data.source()?;
    if !resume && source.is_none() {
        bail!("no data: pass --data DIR (MVTec layout) or --normal DIR");
    }
    let stop = stop_on_ctrl_c()?;
    let req = TrainRequest {
        config: cfg,
        source,
        run: run.clone(),
        device: a.device,
        resume,
        init_weights: None,
        val_abnormal: a.val_abnormal.clone(),
        train_abnormal: a.train_abnormal.clone(),
    };
    if train(&req, &stop)? == Outcome::Interrupted {
        return Ok(());
    }
    if !a.no_export {
        let out = a.bundle.clone().unwrap_or_else(|| run.0.join("bundle"));
        let exported =
            export(&ExportRequest { run, out, name: None, version: 1, parent: None, engine: EngineConfig::default() })?;
        print_export(&exported)?;
    }
    Ok(())
}
