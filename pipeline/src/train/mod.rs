//! The training loop of every family, with a checkpoint every epoch, resume, and a clean
//! stop on Ctrl-C.
//!
//! - [`images`]: the input spec, level range and training samples.
//! - [`checkpoint`]: networks and Adam states saved and loaded (burnpack files).
//! - [`augment`]: flips, brightness and shifts.
//! - [`step`]: one epoch, its loader thread, and each family's training step; [`ssim`]: the
//!   structural term of the reconstruction loss.
//! - [`bench`]: training speed on random data.
//! - [`turn`]: one training at a time in a process.

pub mod augment;
pub mod bench;
pub mod checkpoint;
pub mod images;
pub mod ssim;
pub mod step;
pub mod turn;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{Context, bail};
use vigil_model::preprocess::Preprocessor;

use crate::data::sets::detect_channels;
use crate::run::Outcome;
pub use crate::run::{EpochLog, RunDir, RunState, SourceSpec, is_run};
pub use bench::{BenchResult, bench};
pub use checkpoint::load_trained;
pub use images::{input_spec, measure_pixel_range};

use crate::config::TrainConfig;
use crate::data::sets::{DataSet, DataSource, discover};
use crate::device::{DeviceChoice, choose};
use checkpoint::Nets;
use images::Images;

/// A training request from the command line.
#[derive(Debug, Clone)]
pub struct TrainRequest {
    /// The configuration (ignored on resume: the run's own is used).
    pub config: TrainConfig,
    /// The data (ignored on resume).
    pub source: Option<DataSource>,
    /// The run folder.
    pub run: RunDir,
    /// Where to train.
    pub device: DeviceChoice,
    /// Continue an existing run.
    pub resume: bool,
    /// Start from these weights (a bundle's `weights.safetensors`) instead of random ones.
    pub init_weights: Option<PathBuf>,
    /// Labelled defective images for calibration: the threshold becomes the F1-optimal one.
    pub val_abnormal: Option<PathBuf>,
    /// Confirmed defective images to learn from (`fdisc`; none of them should be among the
    /// images the model is judged on).
    pub train_abnormal: Option<PathBuf>,
}

/// Runs (or resumes) training until every epoch is done or `stop` is set.
pub fn train(req: &TrainRequest, stop: &AtomicBool) -> anyhow::Result<Outcome> {
    let _turn = turn::TRAINING.lock().unwrap_or_else(|p| p.into_inner());
    let run = &req.run;
    let (cfg, mut state, data) = if req.resume {
        if !is_run(&run.0) {
            bail!(
                "{}: not a vigil-train run folder (no state.json); start a run with --out instead of --resume",
                run.0.display()
            );
        }
        let cfg = TrainConfig::from_file(&run.config())?;
        let state = RunState::load(run)?;
        let data = discover(&state.data.source()?, cfg.val_fraction, cfg.seed)?;
        (cfg, state, data)
    } else {
        let cfg = req.config.clone();
        cfg.validate()?;
        let source = req.source.clone().context("no data: pass --data DIR (MVTec layout) or --normal DIR")?;
        let data = discover(&source, cfg.val_fraction, cfg.seed)?;
        let mut cfg = cfg;
        cfg.classes = if matches!(source, DataSource::Classes(_)) { data.classes.clone() } else { vec![] };
        if run.state().exists() {
            bail!("{} already holds a run; pass --resume to continue it, or another --out", run.0.display());
        }
        std::fs::create_dir_all(&run.0).with_context(|| format!("creating {}", run.0.display()))?;
        let channels =
            if cfg.model.is_feature() { 3 } else { cfg.channels.unwrap_or_else(|| detect_channels(&data.train)) };
        cfg.channels = Some(channels);
        if cfg.normalize && cfg.pixel_range.is_none() && !cfg.model.is_feature() {
            let range = measure_pixel_range(&cfg, channels, &data.train);
            tracing::info!("pixel range per channel (levels mapped to 0 and 1): {range:?}");
            cfg.pixel_range = Some(range);
        }
        if cfg.model.is_feature() && cfg.features.aspect.is_none() {
            cfg.features.aspect = crate::family::features::measure_aspect(&data.train);
            if let Some(a) = cfg.features.aspect {
                let [h, w] = crate::family::features::input_size(&cfg);
                tracing::info!("the training images are {a:.2} times as tall as wide: the model input is {w}x{h}");
            }
        }
        cfg.validate()?;
        cfg.save(&run.config())?;
        let state = RunState {
            data: SourceSpec {
                val_abnormal: req.val_abnormal.clone(),
                train_abnormal: req.train_abnormal.clone(),
                ..SourceSpec::from(&source)
            },
            channels,
            epochs_done: 0,
            encoder_epochs_done: 0,
            device: String::new(),
            history: vec![],
            skipped: vec![],
            images: 0,
            seconds: 0.0,
        };
        (cfg, state, data)
    };
    let chosen = choose(req.device)?;
    state.device = chosen.description.clone();
    let device = chosen.device;
    log_data(&data);
    if cfg.model.is_feature() {
        return train_features(req, &cfg, state, &data, &device, stop);
    }
    let pre = Preprocessor::new(&input_spec(&cfg, state.channels));
    let mut skipped = vec![];
    let images = Images::load(&pre, &data.train, &data.train_class, &mut skipped, cfg.cache_mib);
    state.skipped = skipped;
    state.images = images.len();
    if images.len() < 2 {
        bail!("{}: fewer than 2 readable training images", data.description);
    }
    let batch = cfg.batch.min(images.len());
    let mut nets = Nets::new(&cfg, state.channels, &device, run, req.resume)?;
    if let (Some(path), false) = (&req.init_weights, req.resume) {
        nets = nets.with_weights(path)?;
    }
    let encoder_epochs = cfg.gan.encoder_epochs.unwrap_or(cfg.epochs);
    let phases: Vec<(&str, u32)> = if cfg.model.is_gan() {
        vec![("train", cfg.epochs), ("encoder", encoder_epochs)]
    } else {
        vec![("train", cfg.epochs)]
    };
    let started = Instant::now();
    let seconds_before = state.seconds;
    for (phase, total) in phases {
        let done = if phase == "train" { state.epochs_done } else { state.encoder_epochs_done };
        for epoch in done..total {
            let log = step::run_epoch(&cfg, &mut nets, &images, batch, phase, epoch, total, &device, stop)?;
            state.seconds = seconds_before + started.elapsed().as_secs_f64();
            let Some(log) = log else {
                nets.save(run)?;
                state.save(run)?;
                tracing::info!("stopped: checkpoint saved in {}; continue with --resume", run.0.display());
                return Ok(Outcome::Interrupted);
            };
            crate::run::append_losses(run, &log)?;
            state.history.push(log);
            crate::run::save_loss_chart(run, &state.history)?;
            if phase == "train" {
                state.epochs_done = epoch + 1;
            } else {
                state.encoder_epochs_done = epoch + 1;
            }
            nets.save(run)?;
            state.save(run)?;
        }
    }
    Ok(Outcome::Finished)
}

/// The feature families: features once, then the head (a fit, or the feature autoencoder's
/// epochs); an interrupted run starts again from the features.
fn train_features(
    req: &TrainRequest,
    cfg: &TrainConfig,
    mut state: RunState,
    data: &DataSet,
    device: &burn::tensor::Device,
    stop: &AtomicBool,
) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let previous = if req.resume { None } else { req.init_weights.as_deref() };
    let defects = state.data.train_abnormal.clone();
    let Some(fitted) = crate::family::features::fit(cfg, data, &req.run, device, stop, previous, defects.as_deref())?
    else {
        tracing::info!("stopped; start again with --resume {}", req.run.0.display());
        return Ok(Outcome::Interrupted);
    };
    state.images = fitted.images;
    state.skipped = fitted.skipped;
    state.device = format!("{} (features on {})", state.device, fitted.engine);
    state.seconds += started.elapsed().as_secs_f64();
    state.epochs_done = cfg.epochs;
    for log in &fitted.history {
        crate::run::append_losses(&req.run, log)?;
    }
    if !fitted.history.is_empty() {
        state.history = fitted.history;
        crate::run::save_loss_chart(&req.run, &state.history)?;
    }
    state.save(&req.run)?;
    Ok(Outcome::Finished)
}

fn log_data(data: &DataSet) {
    tracing::info!(
        "data: {}: {} training, {} validation normal images, {} test images",
        data.description,
        data.train.len(),
        data.val.len(),
        data.test.len()
    );
}
