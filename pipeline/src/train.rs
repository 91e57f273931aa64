//! The training loop of every family, with a checkpoint every epoch, resume, and a clean
//! stop on Ctrl-C.
//!
//! A run folder holds `train.toml` (the resolved config), `state.json` (data source, epochs
//! done, loss history, skipped files), `losses.csv`, and `checkpoint/` (weights and Adam
//! state as burnpack files, which keep parameter ids so resumed Adam moments line up).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::activation::softplus;
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use vigil::bundle::manifest::{ColorMode, InputSpec};
use vigil::preprocess::{Preprocessor, decode};
use vigil::rng::{Rng, mix};

use crate::config::{CONFIG_FILE, Corruption, ReconstructionLoss, TrainConfig};
use crate::data::{DataSet, DataSource, Skipped, discover, load_image};
use crate::device::{DeviceChoice, choose};
use crate::model::{Autoencoder, Decoder, Encoder, GanModel, ModelKind, Trained};

/// Where a run keeps its files.
#[derive(Debug, Clone)]
pub struct RunDir(pub PathBuf);

impl RunDir {
    /// `train.toml`.
    pub fn config(&self) -> PathBuf {
        self.0.join(CONFIG_FILE)
    }
    /// `state.json`.
    pub fn state(&self) -> PathBuf {
        self.0.join("state.json")
    }
    /// `losses.csv`.
    pub fn losses(&self) -> PathBuf {
        self.0.join("losses.csv")
    }
    /// A checkpoint file.
    pub fn checkpoint(&self, name: &str) -> PathBuf {
        self.0.join("checkpoint").join(format!("{name}.bpk"))
    }
}

/// The data source as stored in `state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// MVTec root.
    pub mvtec: Option<PathBuf>,
    /// Plain folder of normal images.
    pub normal: Option<PathBuf>,
    /// Plain folder of defective images.
    pub abnormal: Option<PathBuf>,
    /// Masks of the defective images.
    pub masks: Option<PathBuf>,
    /// Labelled defective images held out for calibration (F1-optimal threshold).
    #[serde(default)]
    pub val_abnormal: Option<PathBuf>,
}

impl From<&DataSource> for SourceSpec {
    fn from(s: &DataSource) -> Self {
        match s {
            DataSource::Mvtec(root) => {
                SourceSpec { mvtec: Some(root.clone()), normal: None, abnormal: None, masks: None, val_abnormal: None }
            }
            DataSource::Folders { normal, abnormal, masks } => SourceSpec {
                mvtec: None,
                normal: Some(normal.clone()),
                abnormal: abnormal.clone(),
                masks: masks.clone(),
                val_abnormal: None,
            },
        }
    }
}

impl SourceSpec {
    /// Back to a source.
    pub fn source(&self) -> anyhow::Result<DataSource> {
        match (&self.mvtec, &self.normal) {
            (Some(root), _) => Ok(DataSource::Mvtec(root.clone())),
            (None, Some(normal)) => Ok(DataSource::Folders {
                normal: normal.clone(),
                abnormal: self.abnormal.clone(),
                masks: self.masks.clone(),
            }),
            (None, None) => bail!("state.json names no data source"),
        }
    }
}

/// One epoch's averages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochLog {
    /// `train` (the model) or `encoder` (the f-AnoGAN encoder after a GAN).
    pub phase: String,
    /// 1-based epoch within the phase.
    pub epoch: u32,
    /// Loss name to its mean over the epoch.
    pub losses: Vec<(String, f64)>,
    /// Training images per second.
    pub samples_per_s: f64,
}

/// What `state.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunState {
    /// The data the run trains on.
    pub data: SourceSpec,
    /// Input channels (resolved from the data when the config left it open).
    pub channels: usize,
    /// Epochs finished in the model phase.
    pub epochs_done: u32,
    /// Epochs finished in the encoder phase (GANs).
    pub encoder_epochs_done: u32,
    /// The device trained on.
    pub device: String,
    /// Per-epoch loss averages.
    pub history: Vec<EpochLog>,
    /// Training images that could not be read.
    pub skipped: Vec<Skipped>,
    /// Training samples used (images, or their tiles for a tiled model).
    pub images: usize,
    /// Seconds spent training.
    pub seconds: f64,
}

impl RunState {
    /// Reads `state.json` of a run.
    pub fn load(run: &RunDir) -> anyhow::Result<Self> {
        let path = run.state();
        let bytes = std::fs::read(&path)
            .with_context(|| format!("{}: not a vigil-train run folder (no state.json)", run.0.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("{}", path.display()))
    }

    fn save(&self, run: &RunDir) -> anyhow::Result<()> {
        let tmp = run.state().with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, run.state())?;
        Ok(())
    }
}

/// The input spec of the models a config trains.
pub fn input_spec(cfg: &TrainConfig, channels: usize) -> InputSpec {
    let color = if channels == 1 { ColorMode::Gray } else { ColorMode::Rgb };
    let unit = InputSpec { tiling: cfg.tiling.clone(), ..InputSpec::unit_range("image", color, cfg.size, cfg.size) };
    match (&cfg.pixel_range, cfg.normalize) {
        (Some(range), true) if range.len() == channels => InputSpec {
            mean: range.iter().map(|r| r[0]).collect(),
            std: range.iter().map(|r| r[1] - r[0]).collect(),
            ..unit
        },
        _ => unit,
    }
}

/// Images sampled to measure the level range.
const RANGE_SAMPLE: usize = 256;

/// Per channel, the level range of the training images for `normalize`: the 0.1 % and
/// 99.9 % quantiles of up to [`RANGE_SAMPLE`] images' pixels, widened by a tenth of their
/// span on each side (a normal pixel outside the range would be one the sigmoid output cannot
/// reconstruct, a false hot spot), rounded out to whole levels and kept within [0, 1].
pub fn measure_pixel_range(cfg: &TrainConfig, channels: usize, paths: &[PathBuf]) -> Vec<[f32; 2]> {
    let unit = TrainConfig { normalize: false, ..cfg.clone() };
    let pre = Preprocessor::new(&input_spec(&unit, channels));
    let mut hist = vec![[0u64; 256]; channels];
    let step = paths.len().div_ceil(RANGE_SAMPLE).max(1);
    for path in paths.iter().step_by(step) {
        for tensor in crate::data::load_image(&pre, path).unwrap_or_default() {
            let plane = tensor.len() / channels;
            for (c, h) in hist.iter_mut().enumerate() {
                for v in &tensor[c * plane..(c + 1) * plane] {
                    h[(v * 255.0).round().clamp(0.0, 255.0) as usize] += 1;
                }
            }
        }
    }
    hist.iter()
        .map(|h| {
            let total: u64 = h.iter().sum();
            if total == 0 {
                return [0.0, 1.0];
            }
            let quantile = |q: f64| {
                let target = (q * total as f64).ceil().max(1.0) as u64;
                let mut seen = 0;
                h.iter()
                    .position(|n| {
                        seen += n;
                        seen >= target
                    })
                    .unwrap_or(255) as f32
            };
            let (q_lo, q_hi) = (quantile(0.001), quantile(0.999));
            let margin = (0.1 * (q_hi - q_lo)).max(1.0);
            let min_span = (crate::config::MIN_SPAN * 255.0).ceil();
            let lo = (q_lo - margin).floor().clamp(0.0, 255.0 - min_span);
            let hi = (q_hi + margin).ceil().clamp(lo + min_span, 255.0);
            [lo / 255.0, hi / 255.0]
        })
        .collect()
}

/// Gray when the first readable training image is gray, else RGB.
pub fn detect_channels(paths: &[PathBuf]) -> usize {
    for p in paths.iter().take(8) {
        if let Ok(img) = std::fs::read(p).map_err(|e| e.to_string()).and_then(|b| decode(&b).map_err(|e| e.to_string()))
        {
            return if img.color().has_color() { 3 } else { 1 };
        }
    }
    3
}

/// Training samples (images, or their tiles for a tiled model), in memory when they fit the
/// budget, else read per batch.
enum Images {
    Cached {
        per: usize,
        data: Vec<f32>,
    },
    /// Each sample is a file and the index of its tile.
    Streamed {
        pre: Box<Preprocessor>,
        samples: Vec<(PathBuf, usize)>,
    },
}

impl Images {
    fn load(pre: &Preprocessor, paths: &[PathBuf], skipped: &mut Vec<Skipped>, cache_mib: usize) -> Images {
        let [c, h, w] = pre.chw();
        let per = c * h * w;
        // Tiles per image, from the first readable one (a guide for the budget only).
        let tiles = paths.iter().take(4).find_map(|p| load_image(pre, p).ok()).map_or(1, |t| t.len());
        if paths.len() * tiles * per * 4 > cache_mib << 20 {
            tracing::info!(
                "{} training images exceed the {cache_mib} MiB cache (cache_mib): reading them per batch",
                paths.len()
            );
            let mut samples = vec![];
            for p in paths {
                // Check each once, so that a corrupt file is named and counted up front.
                match load_image(pre, p) {
                    Ok(t) => samples.extend((0..t.len()).map(|i| (p.clone(), i))),
                    Err(reason) => {
                        tracing::warn!("skipping {}: {reason}", p.display());
                        skipped.push(Skipped { path: p.clone(), reason });
                    }
                }
            }
            return Images::Streamed { pre: Box::new(pre.clone()), samples };
        }
        let mut data = Vec::with_capacity(paths.len() * tiles * per);
        for p in paths {
            match load_image(pre, p) {
                Ok(tensors) => data.extend(tensors.into_iter().flatten()),
                Err(reason) => {
                    tracing::warn!("skipping {}: {reason}", p.display());
                    skipped.push(Skipped { path: p.clone(), reason });
                }
            }
        }
        Images::Cached { per, data }
    }

    fn len(&self) -> usize {
        match self {
            Images::Cached { per, data } => data.len() / per,
            Images::Streamed { samples, .. } => samples.len(),
        }
    }

    fn batch(&self, idx: &[usize]) -> Vec<f32> {
        match self {
            Images::Cached { per, data } => {
                idx.iter().flat_map(|&i| data[i * per..(i + 1) * per].iter().copied()).collect()
            }
            Images::Streamed { pre, samples } => idx
                .iter()
                .flat_map(|&i| {
                    let (path, tile) = &samples[i];
                    load_image(pre, path)
                        .ok()
                        .and_then(|mut t| (*tile < t.len()).then(|| t.swap_remove(*tile)))
                        .unwrap_or_else(|| {
                            tracing::warn!("{} became unreadable during training; using a blank image", path.display());
                            vec![0.0; pre.chw().iter().product()]
                        })
                })
                .collect(),
        }
    }
}

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
}

/// How a training call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every epoch ran.
    Finished,
    /// Stopped by Ctrl-C after saving a checkpoint.
    Interrupted,
}

fn adam(cfg: &TrainConfig) -> AdamConfig {
    AdamConfig::new().with_beta_1(cfg.beta1).with_beta_2(cfg.beta2).with_epsilon(1e-8)
}

fn load_opt(cfg: &TrainConfig, run: &RunDir, name: &str, resume: bool) -> anyhow::Result<ModuleOptimizer> {
    let opt = adam(cfg).init();
    let path = run.checkpoint(name);
    if resume && path.exists() {
        return opt.load(&path).map_err(|e| anyhow::anyhow!("{}: {e:?}", path.display()));
    }
    Ok(opt)
}

fn load_module<M: Module>(m: M, run: &RunDir, name: &str, resume: bool) -> anyhow::Result<M> {
    let path = run.checkpoint(name);
    if resume && path.exists() {
        return m.try_load_file(&path).map_err(|e| anyhow::anyhow!("{}: {e:?}", path.display()));
    }
    Ok(m)
}

fn save_module<M: Module>(m: &M, run: &RunDir, name: &str) -> anyhow::Result<()> {
    let path = run.checkpoint(name);
    m.clone().save_file(&path).map_err(|e| anyhow::anyhow!("{}: {e:?}", path.display()))
}

fn save_opt(o: &ModuleOptimizer, run: &RunDir, name: &str) -> anyhow::Result<()> {
    let path = run.checkpoint(name);
    o.save(&path).map_err(|e| anyhow::anyhow!("{}: {e:?}", path.display()))
}

/// All networks and optimizers of one family during training (one value per run, so the
/// size difference of the variants does not matter).
#[allow(clippy::large_enum_variant)]
enum Nets {
    Ae {
        model: Autoencoder,
        opt: ModuleOptimizer,
    },
    Gan {
        generator: Decoder,
        critic: Encoder,
        encoder: Encoder,
        opt_g: ModuleOptimizer,
        opt_d: ModuleOptimizer,
        opt_e: ModuleOptimizer,
    },
}

impl Nets {
    fn new(cfg: &TrainConfig, channels: usize, device: &Device, run: &RunDir, resume: bool) -> anyhow::Result<Nets> {
        let spec = cfg.arch(channels);
        Ok(match cfg.model {
            ModelKind::Dae | ModelKind::Vae => Nets::Ae {
                model: load_module(Autoencoder::new(&spec, cfg.model == ModelKind::Vae, device), run, "model", resume)?,
                opt: load_opt(cfg, run, "adam", resume)?,
            },
            ModelKind::Gan | ModelKind::Wgan => {
                let g = GanModel::new(&spec, cfg.model, device);
                Nets::Gan {
                    generator: load_module(g.generator, run, "generator", resume)?,
                    critic: load_module(g.critic, run, "critic", resume)?,
                    encoder: load_module(g.encoder, run, "encoder", resume)?,
                    opt_g: load_opt(cfg, run, "adam_generator", resume)?,
                    opt_d: load_opt(cfg, run, "adam_critic", resume)?,
                    opt_e: load_opt(cfg, run, "adam_encoder", resume)?,
                }
            }
        })
    }

    /// Replaces the networks by the weights of a bundle (fine-tuning); Adam starts afresh.
    fn with_weights(self, path: &Path) -> anyhow::Result<Nets> {
        use crate::model::BundleWeights;
        Ok(match self {
            Nets::Ae { model, opt } => {
                let w = BundleWeights { autoencoder: Some(model), gan: None }.load(path)?;
                Nets::Ae { model: w.autoencoder.expect("loaded into Some"), opt }
            }
            Nets::Gan { generator, critic, encoder, opt_g, opt_d, opt_e } => {
                let w = BundleWeights { autoencoder: None, gan: Some(GanModel { generator, critic, encoder }) }
                    .load(path)?;
                let g = w.gan.expect("loaded into Some");
                Nets::Gan { generator: g.generator, critic: g.critic, encoder: g.encoder, opt_g, opt_d, opt_e }
            }
        })
    }

    fn save(&self, run: &RunDir) -> anyhow::Result<()> {
        std::fs::create_dir_all(run.0.join("checkpoint"))?;
        match self {
            Nets::Ae { model, opt } => {
                model.encoder.sync_running_stats();
                model.decoder.sync_running_stats();
                save_module(model, run, "model")?;
                save_opt(opt, run, "adam")
            }
            Nets::Gan { generator, critic, encoder, opt_g, opt_d, opt_e } => {
                generator.sync_running_stats();
                critic.sync_running_stats();
                encoder.sync_running_stats();
                save_module(generator, run, "generator")?;
                save_module(critic, run, "critic")?;
                save_module(encoder, run, "encoder")?;
                save_opt(opt_g, run, "adam_generator")?;
                save_opt(opt_d, run, "adam_critic")?;
                save_opt(opt_e, run, "adam_encoder")
            }
        }
    }
}

/// Loads the trained networks of a run (eval mode, no autodiff) for export.
pub fn load_trained(run: &RunDir, cfg: &TrainConfig, channels: usize) -> anyhow::Result<Trained> {
    let device = Device::flex();
    let spec = cfg.arch(channels);
    Ok(match cfg.model {
        ModelKind::Dae | ModelKind::Vae => {
            let m = load_module(Autoencoder::new(&spec, cfg.model == ModelKind::Vae, &device), run, "model", true)?;
            Trained::Autoencoder(m.valid())
        }
        ModelKind::Gan | ModelKind::Wgan => {
            let g = GanModel::new(&spec, cfg.model, &device);
            Trained::Gan(GanModel {
                generator: load_module(g.generator, run, "generator", true)?.valid(),
                critic: load_module(g.critic, run, "critic", true)?.valid(),
                encoder: load_module(g.encoder, run, "encoder", true)?.valid(),
            })
        }
    })
}

/// Non-saturating GAN losses and the WGAN critic loss need the critic as `[B]`.
fn logits(critic: &Encoder, x: Tensor<4>) -> Tensor<1> {
    let b = x.dims()[0];
    critic.forward(x).reshape([b])
}

/// The WGAN-GP penalty `(‖∇ₓD(x̂)‖ − 1)²`. burn 0.22 has first-order autodiff only, so the
/// norm is the directional derivative along the (fixed) gradient direction, taken by a
/// central difference: by Danskin's theorem its gradient in the critic's weights is the
/// gradient of the norm itself, as ε → 0.
fn gradient_penalty(critic: &Encoder, real: Tensor<4>, fake: Tensor<4>) -> Tensor<1> {
    const EPS: f64 = 1e-2;
    let [b, c, h, w] = real.dims();
    let device = real.device();
    let alpha = Tensor::<4>::random([b, 1, 1, 1], Distribution::Uniform(0.0, 1.0), &device);
    let x_hat = (real * alpha.clone() + fake * (alpha.neg() + 1.0)).detach();
    let probe = x_hat.clone().require_grad();
    let grads = logits(critic, probe.clone()).sum().backward();
    let g = probe.grad(&grads).expect("the probe tracks its gradient");
    let norm = g.clone().reshape([b, c * h * w]).powf_scalar(2.0).sum_dim(1).sqrt().clamp_min(1e-12);
    let u = (g / norm.reshape([b, 1, 1, 1])).autodiff();
    let plus = logits(critic, x_hat.clone() + u.clone().mul_scalar(EPS));
    let minus = logits(critic, x_hat - u.mul_scalar(EPS));
    (plus - minus).div_scalar(2.0 * EPS).sub_scalar(1.0).powf_scalar(2.0).mean()
}

/// Flips and brightness changes per image, on the loader thread (before any corruption, so
/// the network's input and target are the same augmented image).
fn augment_images(data: &mut [f32], [b, c, h, w]: [usize; 4], a: &crate::config::Augment, rng: &mut Rng) {
    let image = c * h * w;
    for img in data.chunks_mut(image).take(b) {
        if a.hflip && rng.uniform() < 0.5 {
            for row in img.chunks_mut(w) {
                row.reverse();
            }
        }
        if a.vflip && rng.uniform() < 0.5 {
            for plane in img.chunks_mut(h * w) {
                for y in 0..h / 2 {
                    let (top, bottom) = plane.split_at_mut((h - 1 - y) * w);
                    top[y * w..(y + 1) * w].swap_with_slice(&mut bottom[..w]);
                }
            }
        }
        if a.brightness > 0.0 {
            let d = rng.range(-a.brightness, a.brightness);
            img.iter_mut().for_each(|v| *v = (*v + d).clamp(0.0, 1.0));
        }
    }
}

/// Moves each image of a `[B, C, H, W]` batch by its own random offset of up to `max` pixels
/// in each direction, repeating the edge pixels into the uncovered border.
fn shift_images(data: &mut [f32], [b, c, h, w]: [usize; 4], max: usize, rng: &mut Rng) {
    let span = 2 * max + 1;
    let mut plane = vec![0f32; h * w];
    for i in 0..b {
        let dy = rng.below(span) as isize - max as isize;
        let dx = rng.below(span) as isize - max as isize;
        for ch in 0..c {
            let at = (i * c + ch) * h * w;
            plane.copy_from_slice(&data[at..at + h * w]);
            for y in 0..h {
                let sy = (y as isize - dy).clamp(0, h as isize - 1) as usize;
                for x in 0..w {
                    let sx = (x as isize - dx).clamp(0, w as isize - 1) as usize;
                    data[at + y * w + x] = plane[sy * w + sx];
                }
            }
        }
    }
}

/// A loss value kept on the device: reading it back waits for the device, so the loop reads
/// sums only now and then instead of every step.
fn kept(t: Tensor<1>) -> Tensor<1> {
    t.detach()
}

fn read(t: &Tensor<1>) -> f64 {
    t.clone().into_scalar::<f32>() as f64
}

/// burn's random source is per backend, not per run: two trainings in one process would
/// draw from it in turns and neither would be reproducible, so they take turns as a whole.
static TRAINING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs (or resumes) training until every epoch is done or `stop` is set.
pub fn train(req: &TrainRequest, stop: &AtomicBool) -> anyhow::Result<Outcome> {
    let _turn = TRAINING.lock().unwrap_or_else(|p| p.into_inner());
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
        if run.state().exists() {
            bail!("{} already holds a run; pass --resume to continue it, or another --out", run.0.display());
        }
        std::fs::create_dir_all(&run.0).with_context(|| format!("creating {}", run.0.display()))?;
        let channels = cfg.channels.unwrap_or_else(|| detect_channels(&data.train));
        let mut cfg = cfg;
        cfg.channels = Some(channels);
        if cfg.normalize && cfg.pixel_range.is_none() {
            let range = measure_pixel_range(&cfg, channels, &data.train);
            tracing::info!("pixel range per channel (levels mapped to 0 and 1): {range:?}");
            cfg.pixel_range = Some(range);
        }
        cfg.validate()?;
        cfg.save(&run.config())?;
        let state = RunState {
            data: SourceSpec { val_abnormal: req.val_abnormal.clone(), ..SourceSpec::from(&source) },
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
    let pre = Preprocessor::new(&input_spec(&cfg, state.channels));
    let mut skipped = vec![];
    let images = Images::load(&pre, &data.train, &mut skipped, cfg.cache_mib);
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
    let encoder_epochs = cfg.encoder_epochs.unwrap_or(cfg.epochs);
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
            let log = run_epoch(&cfg, &mut nets, &images, batch, phase, epoch, total, &device, stop)?;
            state.seconds = seconds_before + started.elapsed().as_secs_f64();
            let Some(log) = log else {
                nets.save(run)?;
                state.save(run)?;
                tracing::info!("stopped: checkpoint saved in {}; continue with --resume", run.0.display());
                return Ok(Outcome::Interrupted);
            };
            append_losses(run, &log)?;
            state.history.push(log);
            let chart = crate::report::loss_chart(&state.history);
            chart
                .save(run.0.join("losses.png"))
                .map_err(|e| anyhow::anyhow!("{}: {e}", run.0.join("losses.png").display()))?;
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

fn log_data(data: &DataSet) {
    tracing::info!(
        "data: {}: {} training, {} validation normal images, {} test images",
        data.description,
        data.train.len(),
        data.val.len(),
        data.test.len()
    );
}

fn append_losses(run: &RunDir, log: &EpochLog) -> anyhow::Result<()> {
    use std::io::Write;
    let path = run.losses();
    let new = !path.exists();
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
    if new {
        writeln!(f, "phase,epoch,metric,value")?;
    }
    for (k, v) in &log.losses {
        writeln!(f, "{},{},{k},{v}", log.phase, log.epoch)?;
    }
    writeln!(f, "{},{},samples_per_s,{}", log.phase, log.epoch, log.samples_per_s)?;
    Ok(())
}

/// One epoch; `None` when stopped part-way.
#[allow(clippy::too_many_arguments)]
fn run_epoch(
    cfg: &TrainConfig,
    nets: &mut Nets,
    images: &Images,
    batch: usize,
    phase: &str,
    epoch: u32,
    total: u32,
    device: &Device,
    stop: &AtomicBool,
) -> anyhow::Result<Option<EpochLog>> {
    // Seeded per epoch, so a resumed run draws what an uninterrupted one would.
    let epoch_seed = mix(cfg.seed ^ ((epoch as u64 + 1) << 32) ^ if phase == "train" { 0 } else { 0xE0C0 });
    device.seed(epoch_seed);
    let mut order: Vec<usize> = (0..images.len()).collect();
    Rng::new(epoch_seed).shuffle(&mut order);
    // Drop the last partial batch: batch norm on one or two images is noise.
    let steps = order.len() / batch;
    let bar = indicatif::ProgressBar::new(steps as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("{phase} epoch {}/{total}", epoch + 1));
    let started = Instant::now();
    let (c, s) = (cfg.channels.unwrap_or(3), cfg.size);
    // Batches are assembled (and, for streamed data, decoded) on a second thread, two ahead,
    // while the device trains on the current one.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Batch>(2);
    // Synthetic defects are for the autoencoders' own training, not the f-AnoGAN encoder's.
    let corrupt = phase == "train" && !cfg.model.is_gan() && cfg.corruption == Corruption::Synthetic;
    std::thread::scope(|scope| -> anyhow::Result<Option<EpochLog>> {
        let order = &order;
        scope.spawn(move || {
            let mut rng = Rng::new(mix(epoch_seed ^ 0x5A1F7));
            for step in 0..steps {
                let mut data = images.batch(&order[step * batch..(step + 1) * batch]);
                augment_images(&mut data, [batch, c, s, s], &cfg.augment, &mut rng);
                if cfg.augment.shift > 0 {
                    shift_images(&mut data, [batch, c, s, s], cfg.augment.shift, &mut rng);
                }
                let input = corrupt.then(|| crate::corrupt::corrupt_batch(&data, [batch, c, s, s], &mut rng));
                if tx.send(Batch { target: data, input }).is_err() {
                    break; // the epoch stopped early
                }
            }
        });
        run_steps(cfg, nets, rx, [batch, c, s, s], steps, phase, epoch, total, device, stop, &bar, started)
    })
}

/// One batch from the loader thread: the images, and the network's input when it differs
/// (the images with synthetic defects).
struct Batch {
    target: Vec<f32>,
    input: Option<Vec<f32>>,
}

/// The steps of one epoch, fed by the loader thread; `None` when stopped part-way.
#[allow(clippy::too_many_arguments)]
fn run_steps(
    cfg: &TrainConfig,
    nets: &mut Nets,
    batches: std::sync::mpsc::Receiver<Batch>,
    dims: [usize; 4],
    steps: usize,
    phase: &str,
    epoch: u32,
    total: u32,
    device: &Device,
    stop: &AtomicBool,
    bar: &indicatif::ProgressBar,
    started: Instant,
) -> anyhow::Result<Option<EpochLog>> {
    let batch = dims[0];
    // Per loss: the sum on the device and how many steps reported it (a WGAN generator
    // loss comes every n_critic steps only).
    let mut sums: Vec<(&'static str, Tensor<1>, usize)> = vec![];
    for step in 0..steps {
        if stop.load(Ordering::SeqCst) {
            bar.abandon();
            return Ok(None);
        }
        let data = batches.recv().map_err(|_| anyhow::anyhow!("the data loader thread stopped"))?;
        let x = Tensor::<4>::from_data(TensorData::new(data.target, dims), device);
        let input = data.input.map(|i| Tensor::<4>::from_data(TensorData::new(i, dims), device));
        for (key, value) in train_step(cfg, nets, x, input, phase, step)? {
            match sums.iter_mut().find(|(k, _, _)| *k == key) {
                Some((_, sum, n)) => {
                    *sum = sum.clone() + value;
                    *n += 1;
                }
                None => sums.push((key, value, 1)),
            }
        }
        if step % 20 == 19 || step + 1 == steps {
            bar.set_message(
                sums.iter().map(|(k, v, n)| format!("{k} {:.5}", read(v) / *n as f64)).collect::<Vec<_>>().join(" "),
            );
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let log = EpochLog {
        phase: phase.into(),
        epoch: epoch + 1,
        losses: sums.iter().map(|(k, v, n)| (k.to_string(), read(v) / *n as f64)).collect(),
        samples_per_s: (steps * batch) as f64 / secs.max(1e-9),
    };
    tracing::info!(
        "{phase} epoch {}/{total}: {} ({:.1} images/s)",
        epoch + 1,
        log.losses.iter().map(|(k, v)| format!("{k} {v:.5}")).collect::<Vec<_>>().join(", "),
        log.samples_per_s
    );
    Ok(Some(log))
}

/// The autoencoders' reconstruction term; SSIM's constants are those the exported map uses.
fn reconstruction_loss(cfg: &TrainConfig, recon: Tensor<4>, x: Tensor<4>) -> Tensor<1> {
    let l2 = (recon.clone() - x.clone()).powf_scalar(2.0).mean();
    match cfg.loss {
        ReconstructionLoss::L2 => l2,
        ReconstructionLoss::SsimL2 => {
            let range = input_spec(cfg, x.dims()[1]).dynamic_range();
            l2 - crate::ssim::mean_ssim(recon, x, &range).sub_scalar(1.0)
        }
    }
}

fn train_step(
    cfg: &TrainConfig,
    nets: &mut Nets,
    x: Tensor<4>,
    input: Option<Tensor<4>>,
    phase: &str,
    step: usize,
) -> anyhow::Result<Vec<(&'static str, Tensor<1>)>> {
    let device = x.device();
    let [b, c, h, w] = x.dims();
    let lr = cfg.lr;
    let latent = cfg.latent;
    Ok(match nets {
        Nets::Ae { model, opt } => {
            if cfg.model == ModelKind::Dae {
                let noisy = match (input, cfg.corruption) {
                    (Some(i), _) => i,
                    (None, Corruption::Gaussian) => {
                        x.clone()
                            + Tensor::<4>::random(
                                [b, c, h, w],
                                Distribution::Normal(0.0, cfg.noise_sigma as f64),
                                &device,
                            )
                    }
                    (None, _) => x.clone(),
                };
                let recon = model.decoder.forward(model.encoder.forward(noisy));
                let loss = reconstruction_loss(cfg, recon, x);
                let value = kept(loss.clone());
                let grads = GradientsParams::from_grads(loss.backward(), &*model);
                *model = opt.step(lr, model.clone(), grads);
                vec![("loss", value)]
            } else {
                let hidden = model.encoder.forward(input.unwrap_or_else(|| x.clone())); // [B, 2L, 1, 1]
                let mu = hidden.clone().narrow(1, 0, latent);
                let logvar = hidden.narrow(1, latent, latent).clamp(-10.0, 10.0);
                let eps = Tensor::<4>::random([b, latent, 1, 1], Distribution::Normal(0.0, 1.0), &device);
                let z = mu.clone() + logvar.clone().mul_scalar(0.5).exp() * eps;
                let rec = reconstruction_loss(cfg, model.decoder.forward(z), x);
                let kl = (logvar.clone().add_scalar(1.0) - mu.powf_scalar(2.0) - logvar.exp())
                    .sum_dim(1)
                    .mean()
                    .mul_scalar(-0.5);
                let loss = rec.clone() + kl.clone().mul_scalar(cfg.kl_weight as f64 / (c * h * w) as f64);
                let values = (kept(loss.clone()), kept(rec), kept(kl));
                let grads = GradientsParams::from_grads(loss.backward(), &*model);
                *model = opt.step(lr, model.clone(), grads);
                vec![("loss", values.0), ("reconstruction", values.1), ("kl", values.2)]
            }
        }
        Nets::Gan { generator, critic, encoder, opt_g, opt_d, opt_e } if phase == "train" => {
            let z = Tensor::<4>::random([b, latent, 1, 1], Distribution::Normal(0.0, 1.0), &device);
            let fake = generator.forward(z).detach();
            let (d_loss, gp) = if cfg.model == ModelKind::Gan {
                let l =
                    softplus(logits(critic, x.clone()).neg(), 1.0).mean() + softplus(logits(critic, fake), 1.0).mean();
                (l, None)
            } else {
                let gp = gradient_penalty(critic, x.clone(), fake.clone());
                let l = logits(critic, fake).mean() - logits(critic, x.clone()).mean()
                    + gp.clone().mul_scalar(cfg.gp_weight as f64);
                (l, Some(kept(gp)))
            };
            let d_value = kept(d_loss.clone());
            let grads = GradientsParams::from_grads(d_loss.backward(), &*critic);
            *critic = opt_d.step(lr, critic.clone(), grads);
            let n_critic = if cfg.model == ModelKind::Wgan { cfg.n_critic } else { 1 };
            let mut out = vec![("d_loss", d_value)];
            if step.is_multiple_of(n_critic) {
                let z = Tensor::<4>::random([b, latent, 1, 1], Distribution::Normal(0.0, 1.0), &device);
                let fake_logits = logits(critic, generator.forward(z));
                let g_loss = if cfg.model == ModelKind::Gan {
                    softplus(fake_logits.neg(), 1.0).mean()
                } else {
                    fake_logits.mean().neg()
                };
                let g_value = kept(g_loss.clone());
                let mut grads = g_loss.backward();
                let grads = GradientsParams::from_module(&mut grads, &*generator);
                *generator = opt_g.step(lr, generator.clone(), grads);
                out.push(("g_loss", g_value));
            }
            if let Some(gp) = gp {
                out.push(("gp", gp));
            }
            let _ = encoder;
            let _ = opt_e;
            out
        }
        Nets::Gan { generator, critic, encoder, opt_e, .. } => {
            // f-AnoGAN izi_f: the generator and critic are fixed (eval-mode batch norm).
            let (g, d) = (generator.clone().freeze(), critic.clone().freeze());
            let recon = g.forward(encoder.forward(x.clone()));
            let pixel = (recon.clone() - x.clone()).powf_scalar(2.0).mean();
            let feature = (d.features(recon) - d.features(x)).powf_scalar(2.0).mean();
            let loss = pixel.clone() + feature.clone().mul_scalar(cfg.feature_weight as f64);
            let values = (kept(loss.clone()), kept(pixel), kept(feature));
            let mut grads = loss.backward();
            let grads = GradientsParams::from_module(&mut grads, &*encoder);
            *encoder = opt_e.step(lr, encoder.clone(), grads);
            vec![("e_loss", values.0), ("pixel", values.1), ("feature", values.2)]
        }
    })
}

/// Whether `dir` holds a finished or interrupted run.
pub fn is_run(dir: &Path) -> bool {
    dir.join("state.json").is_file()
}

/// What one training benchmark measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// Family.
    pub model: ModelKind,
    /// The device, as [`choose`] describes it.
    pub device: String,
    /// Images per step.
    pub batch: usize,
    /// Timed steps.
    pub steps: usize,
    /// Trainable parameters.
    pub params: usize,
    /// Images per second over the timed steps.
    pub samples_per_s: f64,
    /// Milliseconds per step.
    pub ms_per_step: f64,
}

/// Times training steps of the reference architecture (3x128x128, latent 128) on random
/// data, as `shared/bench/reference_torch.py` does: 3 warm-up steps, then `steps` timed
/// ones; a GAN step is one discriminator and one generator update.
pub fn bench(model: ModelKind, batch: usize, steps: usize, device: DeviceChoice) -> anyhow::Result<BenchResult> {
    let _turn = TRAINING.lock().unwrap_or_else(|p| p.into_inner());
    // Gaussian noise, as reference_torch.py's DAE: the same arithmetic on both sides.
    let cfg = TrainConfig {
        model,
        batch,
        channels: Some(3),
        n_critic: 1,
        corruption: Corruption::Gaussian,
        ..TrainConfig::default()
    };
    cfg.validate()?;
    let chosen = choose(device)?;
    let device = chosen.device;
    device.seed(0);
    let scratch = RunDir(std::env::temp_dir().join("vigil-bench-unused"));
    let mut nets = Nets::new(&cfg, 3, &device, &scratch, false)?;
    let mut rng = Rng::new(0);
    let data: Vec<f32> = (0..batch * 3 * cfg.size * cfg.size).map(|_| rng.uniform()).collect();
    let x = Tensor::<4>::from_data(TensorData::new(data, [batch, 3, cfg.size, cfg.size]), &device);
    let params = match &nets {
        Nets::Ae { model, .. } => model.num_params(),
        Nets::Gan { generator, critic, .. } => generator.num_params() + critic.num_params(),
    };
    for step in 0..3 {
        for (_, v) in train_step(&cfg, &mut nets, x.clone(), None, "train", step)? {
            read(&v);
        }
    }
    let started = Instant::now();
    let mut last = vec![];
    for step in 0..steps {
        last = train_step(&cfg, &mut nets, x.clone(), None, "train", step)?;
    }
    // Reading the last losses waits for every queued step, as torch.cuda.synchronize does.
    for (_, v) in &last {
        read(v);
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(BenchResult {
        model,
        device: chosen.description,
        batch,
        steps,
        params,
        samples_per_s: (batch * steps) as f64 / secs,
        ms_per_step: 1000.0 * secs / steps as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifted_images_keep_their_content_and_repeat_their_edges() {
        // Two 1x4x4 images holding 0..16 and 100..116.
        let original: Vec<f32> = (0..16).map(|v| v as f32).chain((0..16).map(|v| 100.0 + v as f32)).collect();
        let mut seen_moved = false;
        for seed in 0..20 {
            let mut data = original.clone();
            shift_images(&mut data, [2, 1, 4, 4], 1, &mut Rng::new(seed));
            for (i, img) in data.chunks(16).enumerate() {
                let base = 100.0 * i as f32;
                // Each pixel comes from the same image, at most one pixel away in each direction.
                for (at, v) in img.iter().enumerate() {
                    let src = (v - base) as usize;
                    let (y, x, sy, sx) = (at / 4, at % 4, src / 4, src % 4);
                    assert!(src < 16 && y.abs_diff(sy) <= 1 && x.abs_diff(sx) <= 1, "seed {seed}: {img:?}");
                }
                seen_moved |= img != &original[i * 16..(i + 1) * 16];
            }
        }
        assert!(seen_moved, "no image was ever shifted");
    }
}
