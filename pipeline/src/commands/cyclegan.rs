//! `vigil-train cyclegan`: train (or resume) a CycleGAN between normal images and a few real
//! defective ones.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;

use crate::commands::console::stop_on_ctrl_c;
use crate::device::DeviceChoice;
use crate::family::cyclegan::config::{CycleConfig, CycleState};
use crate::family::cyclegan::fit::CycleRequest;
use crate::run::Outcome;
use crate::train::RunDir;

#[derive(Args)]
pub struct CycleganArgs {
    /// Normal images.
    #[arg(long, required_unless_present = "resume")]
    normal: Option<PathBuf>,
    /// Defective images (a handful per defect type is enough).
    #[arg(long, required_unless_present = "resume")]
    defect: Option<PathBuf>,
    /// Run folder (checkpoints, losses, sample grids).
    #[arg(long, required_unless_present = "resume")]
    out: Option<PathBuf>,
    /// Continue the run in this folder from its last checkpoint.
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["out", "normal", "defect", "config"])]
    resume: Option<PathBuf>,
    /// A TOML file with any of the CycleGAN options (command-line options win).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Image side in pixels (default 128; a multiple of 8).
    #[arg(long)]
    size: Option<usize>,
    /// Epochs (default 12).
    #[arg(long)]
    epochs: Option<u32>,
    /// Steps per epoch (default 200).
    #[arg(long)]
    steps: Option<usize>,
    /// Generator and discriminator width (default 16).
    #[arg(long)]
    width: Option<usize>,
    /// Residual blocks per generator (default 4).
    #[arg(long)]
    blocks: Option<usize>,
    /// Seed of every random choice.
    #[arg(long)]
    seed: Option<u64>,
    /// Where to train.
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceChoice,
}

/// Trains (stopping cleanly on Ctrl-C) and prints the finished run's state as one JSON line.
pub fn run(a: CycleganArgs) -> anyhow::Result<()> {
    let CycleganArgs { normal, defect, out, resume, config, size, epochs, steps, width, blocks, seed, device } = a;
    let mut cfg = match &config {
        Some(p) => CycleConfig::from_file(p)?,
        None => CycleConfig::default(),
    };
    macro_rules! set {
        ($($f:ident => $g:ident),*) => { $( if let Some(v) = $f { cfg.$g = v; } )* };
    }
    set!(size => size, epochs => epochs, steps => steps_per_epoch, width => width, blocks => blocks, seed => seed);
    let stop = stop_on_ctrl_c()?;
    let (run, resuming) = match (resume, out) {
        (Some(r), _) => (r, true),
        (None, Some(o)) => (o, false),
        (None, None) => bail!("pass --out RUN_DIR (or --resume RUN_DIR)"),
    };
    let req = CycleRequest {
        config: cfg,
        normal: normal.unwrap_or_default(),
        defect: defect.unwrap_or_default(),
        run: RunDir(run.clone()),
        device,
        resume: resuming,
    };
    if crate::family::cyclegan::fit::train(&req, &stop)? == Outcome::Finished {
        println!("{}", serde_json::to_string(&CycleState::load(&req.run)?)?);
    }
    Ok(())
}
