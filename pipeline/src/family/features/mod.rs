//! The pretrained-feature families: `padim`, `patchcore` and `fae` score images in the feature
//! space of an ImageNet backbone ([`crate::backbone`]) instead of reconstructing pixels.
//!
//! - [`config`]: the options the feature families share.
//! - [`extract`]: the backbone's features of the training images, once per image.
//! - [`padim`]: per-cell Gaussians, Mahalanobis distance.
//! - [`patchcore`]: a memory bank by greedy coreset selection, nearest-neighbour distance.
//! - [`fae`]: an autoencoder trained on the features, reconstruction error.
//! - [`fdisc`]: a discriminator trained on the features against noisy copies of them (and
//!   confirmed defects), its logit.
//! - [`student`]: a student network trained to predict the features from the image, the
//!   difference.
//!
//! A run folder of these families holds `train.toml`, `state.json` and
//! `checkpoint/head.safetensors` (the fitted head; for `fae`, `fdisc` and `student` also their
//! network, `checkpoint/fae.bpk`, `checkpoint/fdisc.bpk` or `checkpoint/student.bpk`); the
//! exported bundle is one ONNX graph (backbone, head, map, score) like any other.

pub mod config;
pub mod extract;
pub mod fae;
pub mod fdisc;
pub mod padim;
pub mod patchcore;
pub mod student;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{Context, bail};
use burn::module::Module;
use burn::tensor::Device;
use vigil_model::bundle::manifest::{InputSpec, PixelError, ScoreSource, ScoreSpec};
use vigil_model::engine::EngineConfig;
use vigil_model::onnx::backbone::EfficientNetLite;
use vigil_model::onnx::features::{FeatureHead, INPUT_MULTIPLE, MapSpec, feature_scoring_model};
use vigil_model::onnx::graph::Tensor;
use vigil_model::onnx::pb;

use crate::backbone::{self, BackboneInfo};
use crate::config::{Corruption, TrainConfig};
use crate::data::sets::{DataSet, Skipped};
use crate::family::kind::ModelKind;
use crate::run::{EpochLog, RunDir};
use extract::Extractor;
use patchcore::Patches;

/// The head's state file in a run's `checkpoint/` folder, and in a bundle as its weights.
pub const HEAD_FILE: &str = "head.safetensors";
/// The feature autoencoder's weights in a run's `checkpoint/` folder.
pub const FAE_FILE: &str = "fae.bpk";
/// The feature discriminator's weights in a run's `checkpoint/` folder.
pub const FDISC_FILE: &str = "fdisc.bpk";
/// The student's weights in a run's `checkpoint/` folder.
pub const STUDENT_FILE: &str = "student.bpk";
/// The files beside the head that hold a trained network, copied into bundles.
pub const NETWORK_FILES: [&str; 3] = [FAE_FILE, FDISC_FILE, STUDENT_FILE];

/// The input `[height, width]` of a config: `size` × `size`, or, for images of another
/// shape (`aspect` = height / width, measured on the training images), about as many pixels
/// in their shape, each side a multiple of [`INPUT_MULTIPLE`].
pub fn input_size(cfg: &TrainConfig) -> [usize; 2] {
    let m = INPUT_MULTIPLE as f32;
    match cfg.features.aspect {
        Some(a) if a.is_finite() && a > 0.0 => {
            let side = |v: f32| ((v / m).round().max(2.0) * m) as usize;
            [side(cfg.size as f32 * a.sqrt()), side(cfg.size as f32 / a.sqrt())]
        }
        _ => [cfg.size, cfg.size],
    }
}

/// The shape (height / width) of the training images when they are clearly not square: the
/// median of up to 32 of them, `None` within a quarter of square. Squeezing a tall part into a
/// square would shrink its defects along one axis.
pub fn measure_aspect(paths: &[std::path::PathBuf]) -> Option<f32> {
    let step = paths.len().div_ceil(32).max(1);
    let mut ratios: Vec<f32> = paths
        .iter()
        .step_by(step)
        .filter_map(|p| image::image_dimensions(p).ok())
        .filter(|(w, h)| *w > 0 && *h > 0)
        .map(|(w, h)| h as f32 / w as f32)
        .collect();
    if ratios.is_empty() {
        return None;
    }
    ratios.sort_by(f32::total_cmp);
    let median = ratios[ratios.len() / 2];
    (!(0.8..=1.25).contains(&median)).then_some(median)
}

/// Whether a bundle of `cfg` keeps part of its head only in the graph (see
/// `Training::head_in_graph`): PaDiM's covariances, whose inverses the graph holds; a
/// conditional model keeps its full statistics per class, as it cannot be retrained yet.
pub fn head_in_graph(cfg: &TrainConfig) -> bool {
    cfg.model == ModelKind::Padim && cfg.classes.is_empty()
}

/// Writes the bundle's weights for a head kept partly in the graph (`graph_head`, as the graph
/// was built from it): the run's `head` file without
/// PaDiM's scatter matrices (the size of the graph's inverse covariances), and instead what
/// the graph's half-precision inverses lack to be float32 ones again: their rounding error,
/// in half precision, upper triangles only (a quarter of the size). With it a retrain
/// rebuilds the scatter matrices ([`padim_scatter_from_graph`]).
pub fn write_slim_head(graph_head: &FeatureHead, head: &Path, out: &Path) -> anyhow::Result<()> {
    let FeatureHead::Padim { inv_cov, .. } = graph_head else { bail!("only PaDiM's head is kept in the graph") };
    let (cells, d) = (inv_cov.shape[0], inv_cov.shape[1]);
    let residual = padim::pack_upper(&padim::half_residual(&inv_cov.data), d);
    let mut t = backbone::read_tensors(head)?;
    t.remove("padim.scatter");
    let half = BTreeMap::from([(RESIDUAL.to_owned(), Tensor::new(vec![cells, d * (d + 1) / 2], residual))]);
    backbone::write_tensors_with_half(&t, &half, out)
}

/// The weights' tensor of the graph's inverse covariances' rounding error.
const RESIDUAL: &str = "padim.inv_cov_residual";

/// PaDiM's scatter matrices rebuilt from the half-precision inverse covariances in the bundle
/// graph `model` and their rounding error `residual` (from the weights): `(Σ⁻¹)⁻¹ - ridge`,
/// times the images less one. Exact up to the float32 rounding of the inverses, amplified by
/// the covariance's condition (at most its largest variance over the ridge); a retrain merges
/// its new images into these.
fn padim_scatter_from_graph(model: &Path, stats: &padim::Stats, residual: &Tensor) -> anyhow::Result<Vec<f64>> {
    let bytes = std::fs::read(model).with_context(|| {
        format!("{}: a PaDiM bundle's covariances are in its graph, and it cannot be read", model.display())
    })?;
    let proto =
        vigil_model::onnx::graph::decode(&bytes).with_context(|| format!("{}: not an ONNX model", model.display()))?;
    let inv = vigil_model::onnx::features::padim_inverse_covariances(&proto).with_context(|| {
        format!("{}: no PaDiM inverse covariances in the graph; export the bundle again from its run", model.display())
    })?;
    let d = stats.dims.len();
    anyhow::ensure!(
        inv.shape == [stats.cells, d, d],
        "{}: the graph's covariances are {:?}, the weights describe {} cells over {d} channels: the files are from different bundles",
        model.display(),
        inv.shape,
        stats.cells
    );
    anyhow::ensure!(
        residual.data.len() == stats.cells * d * (d + 1) / 2,
        "{}: the weights' `{RESIDUAL}` does not match the graph's covariances: the files are from different bundles",
        model.display()
    );
    let full: Vec<f32> = inv
        .data
        .chunks(d * d)
        .zip(residual.data.chunks(d * (d + 1) / 2))
        .flat_map(|(hi, lo)| hi.iter().zip(padim::unpack_upper(lo, d)).map(|(h, l)| h + l).collect::<Vec<f32>>())
        .collect();
    padim::scatter_from_inverses(&full, d, stats.count)
}

/// What a fitted head holds, as stored in `head.safetensors`.
#[derive(Debug, Clone)]
pub enum HeadState {
    /// PaDiM statistics.
    Padim(padim::Stats),
    /// PatchCore's bank, one row per patch.
    Patchcore(Patches),
    /// The feature autoencoder's standardisation (its network is in `fae.bpk`).
    Fae {
        /// Per-channel means.
        mean: Vec<f32>,
        /// Per-channel standard deviations.
        std: Vec<f32>,
    },
    /// The feature discriminator's standardisation (its network is in `fdisc.bpk`).
    Fdisc {
        /// Per-channel means.
        mean: Vec<f32>,
        /// Per-channel standard deviations.
        std: Vec<f32>,
    },
    /// The teacher's standardisation (the student is in `student.bpk`).
    Student {
        /// Per-channel means.
        mean: Vec<f32>,
        /// Per-channel standard deviations.
        std: Vec<f32>,
    },
}

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

impl HeadState {
    /// Writes the state as safetensors.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let mut tensors: BTreeMap<String, Tensor> = BTreeMap::new();
        match self {
            HeadState::Padim(s) => {
                let d = s.dims.len();
                tensors.insert("padim.dims".into(), Tensor::new(vec![d], s.dims.iter().map(|&v| v as f32).collect()));
                tensors.insert("padim.count".into(), Tensor::new(vec![1], vec![s.count as f32]));
                tensors.insert("padim.mean".into(), Tensor::new(vec![s.cells, d], f32s(&s.mean)));
                tensors.insert("padim.scatter".into(), Tensor::new(vec![s.cells, d, d], f32s(&s.scatter)));
            }
            HeadState::Patchcore(b) => {
                tensors.insert("patchcore.bank".into(), Tensor::new(vec![b.len(), b.channels], b.data.clone()));
            }
            HeadState::Fae { mean, std } => {
                tensors.insert("fae.mean".into(), Tensor::new(vec![mean.len()], mean.clone()));
                tensors.insert("fae.std".into(), Tensor::new(vec![std.len()], std.clone()));
            }
            HeadState::Fdisc { mean, std } => {
                tensors.insert("fdisc.mean".into(), Tensor::new(vec![mean.len()], mean.clone()));
                tensors.insert("fdisc.std".into(), Tensor::new(vec![std.len()], std.clone()));
            }
            HeadState::Student { mean, std } => {
                tensors.insert("student.mean".into(), Tensor::new(vec![mean.len()], mean.clone()));
                tensors.insert("student.std".into(), Tensor::new(vec![std.len()], std.clone()));
            }
        }
        backbone::write_tensors(&tensors, path)
    }

    /// Reads the state of `kind` written by [`HeadState::save`].
    pub fn load(kind: ModelKind, path: &Path) -> anyhow::Result<HeadState> {
        let t = backbone::read_tensors(path)?;
        let get = |name: &str| {
            t.get(name).with_context(|| format!("{}: no tensor `{name}`; is it a {kind:?} head?", path.display()))
        };
        Ok(match kind {
            ModelKind::Padim => {
                let mean = get("padim.mean")?;
                let mut stats = padim::Stats {
                    dims: get("padim.dims")?.data.iter().map(|&v| v as usize).collect(),
                    cells: mean.shape[0],
                    count: get("padim.count")?.data[0] as usize,
                    mean: mean.data.iter().map(|&v| v as f64).collect(),
                    scatter: vec![],
                };
                stats.scatter = match (t.get("padim.scatter"), t.get(RESIDUAL)) {
                    (Some(s), _) => s.data.iter().map(|&v| v as f64).collect(),
                    // A bundle's weights (`head_in_graph`): the covariances come from the graph.
                    (None, Some(r)) => {
                        padim_scatter_from_graph(&path.with_file_name(vigil_model::bundle::MODEL_FILE), &stats, r)?
                    }
                    (None, None) => bail!(
                        "{}: neither `padim.scatter` nor `{RESIDUAL}`: this is not a PaDiM head or bundle",
                        path.display()
                    ),
                };
                HeadState::Padim(stats)
            }
            ModelKind::Patchcore => {
                let b = get("patchcore.bank")?;
                HeadState::Patchcore(Patches { channels: b.shape[1], data: b.data.clone() })
            }
            ModelKind::Fae => HeadState::Fae { mean: get("fae.mean")?.data.clone(), std: get("fae.std")?.data.clone() },
            ModelKind::Fdisc => {
                HeadState::Fdisc { mean: get("fdisc.mean")?.data.clone(), std: get("fdisc.std")?.data.clone() }
            }
            ModelKind::Student => {
                HeadState::Student { mean: get("student.mean")?.data.clone(), std: get("student.std")?.data.clone() }
            }
            other => bail!("{other:?} is not a feature family"),
        })
    }
}

/// What fitting produced, for the run's state.
pub struct Fitted {
    /// Training images whose features were used.
    pub images: usize,
    /// Images that could not be read.
    pub skipped: Vec<Skipped>,
    /// Loss history (fae).
    pub history: Vec<EpochLog>,
    /// The engine the features were computed on.
    pub engine: &'static str,
}

/// The folder of class `i`'s head inside a conditional run's `checkpoint/` (and bundle).
pub fn class_dir(i: usize) -> String {
    format!("class-{i}")
}

/// Computes the training images' features and fits the family's head into `run`'s
/// `checkpoint/` (a conditional model: one head per class, each fitted on its class's images
/// alone, in `checkpoint/class-<i>/`); `previous` (a retrain) is a bundle's head to extend
/// with these images; `defects` (fdisc) a folder of confirmed defects to learn from (with
/// their masks in its `masks/` where there are some). `None`
/// when stopped.
pub fn fit(
    cfg: &TrainConfig,
    data: &DataSet,
    run: &RunDir,
    device: &Device,
    stop: &AtomicBool,
    previous: Option<&Path>,
    defects: Option<&Path>,
) -> anyhow::Result<Option<Fitted>> {
    let (net, info) = backbone::ensure(cfg.features.backbone)?;
    tracing::info!("backbone: {} ({}, {} parameters)", info.package, info.license, info.parameters);
    let extractor = Extractor::new(&net, input_size(cfg), &EngineConfig::default())?;
    let checkpoint = run.0.join("checkpoint");
    let defects = match defects {
        Some(dir) => {
            anyhow::ensure!(
                cfg.model == ModelKind::Fdisc,
                "--train-abnormal: only the fdisc family learns from confirmed defects; use --model fdisc, or --val-abnormal to calibrate the threshold on them"
            );
            anyhow::ensure!(cfg.classes.is_empty(), "--train-abnormal is not available for conditional models yet");
            let paths = crate::data::sets::list_images(dir)?;
            anyhow::ensure!(!paths.is_empty(), "--train-abnormal {}: no images in that folder", dir.display());
            let (f, skipped) = extractor.extract(&paths, "defect features")?;
            for s in &skipped {
                tracing::warn!("confirmed defect {} skipped: {}", s.path.display(), s.reason);
            }
            // Masks, where the operator or a labelled set gave them, beside the images.
            let confirmed = fdisc::Confirmed::with_masks(f, Some(&dir.join("masks")))?;
            tracing::info!(
                "learning from {} confirmed defect images, {} with a mask ({}/masks/<stem>_mask.png)",
                confirmed.features.len(),
                confirmed.masked(),
                dir.display()
            );
            Some(confirmed)
        }
        None => None,
    };
    if cfg.classes.is_empty() {
        return fit_head(cfg, &extractor, &data.train, &checkpoint, device, stop, previous, defects.as_ref(), "train");
    }
    anyhow::ensure!(
        previous.is_none(),
        "retraining a conditional model is not supported yet; train it again with --conditional on all its data"
    );
    let mut all = Fitted { images: 0, skipped: vec![], history: vec![], engine: extractor.engine() };
    for (i, name) in cfg.classes.iter().enumerate() {
        let train: Vec<std::path::PathBuf> =
            data.train.iter().zip(&data.train_class).filter(|(_, k)| **k == i).map(|(p, _)| p.clone()).collect();
        tracing::info!("class {name}: {} training images", train.len());
        let dir = checkpoint.join(class_dir(i));
        let Some(f) = fit_head(cfg, &extractor, &train, &dir, device, stop, None, None, &format!("train {name}"))?
        else {
            return Ok(None);
        };
        all.images += f.images;
        all.skipped.extend(f.skipped);
        all.history.extend(f.history);
    }
    Ok(Some(all))
}

/// Fits one head on `train` into `dir`; `phase` names its loss history.
#[allow(clippy::too_many_arguments)]
fn fit_head(
    cfg: &TrainConfig,
    extractor: &Extractor,
    train: &[std::path::PathBuf],
    dir: &Path,
    device: &Device,
    stop: &AtomicBool,
    previous: Option<&Path>,
    defects: Option<&fdisc::Confirmed>,
    phase: &str,
) -> anyhow::Result<Option<Fitted>> {
    let started = Instant::now();
    // The student learns from the images themselves too: kept as they are decoded.
    let (features, images, skipped) = if cfg.model == ModelKind::Student {
        extractor.extract_with_inputs(train, "features")?
    } else {
        let (features, skipped) = extractor.extract(train, "features")?;
        (features, vec![], skipped)
    };
    tracing::info!(
        "features of {} training images in {:.1}s on {} ({} channels on a {}x{} grid)",
        features.len(),
        started.elapsed().as_secs_f64(),
        extractor.engine(),
        features.shape.channels,
        features.shape.grid[0],
        features.shape.grid[1]
    );
    if features.len() < 2 {
        bail!("fewer than 2 readable training images");
    }
    std::fs::create_dir_all(dir)?;
    let head_path = dir.join(HEAD_FILE);
    let mut history = vec![];
    let state = match cfg.model {
        ModelKind::Padim => {
            let dims = padim::choose_dims(features.shape.channels, cfg.padim.dims, cfg.seed);
            let stats = padim::fit(&features, &dims);
            let stats = match previous.map(|p| HeadState::load(ModelKind::Padim, p)).transpose()? {
                Some(HeadState::Padim(old)) => padim::merge(&old, &stats)?,
                _ => stats,
            };
            HeadState::Padim(stats)
        }
        ModelKind::Patchcore => {
            let mut patches = Patches::from_images(&features.data, features.shape.channels, features.shape.cells());
            if let Some(HeadState::Patchcore(old)) =
                previous.map(|p| HeadState::load(ModelKind::Patchcore, p)).transpose()?
            {
                anyhow::ensure!(
                    old.channels == patches.channels,
                    "the fitted PatchCore bank holds patches of {} channels, the new images give {}: they come from another backbone and cannot be joined",
                    old.channels,
                    patches.channels
                );
                patches = old.concat(&patches);
            }
            let m = cfg.patchcore.bank_size.min(patches.len());
            let bar = extract::progress(m, "coreset");
            let started = Instant::now();
            let chosen = patchcore::coreset(&patches, m, cfg.seed, &|| bar.inc(1));
            bar.finish_and_clear();
            tracing::info!(
                "memory bank: {m} of {} patches chosen in {:.1}s",
                patches.len(),
                started.elapsed().as_secs_f64()
            );
            HeadState::Patchcore(patches.select(&chosen))
        }
        ModelKind::Fae => {
            let (mean, std) = match previous.map(|p| HeadState::load(ModelKind::Fae, p)).transpose()? {
                Some(HeadState::Fae { mean, std }) => (mean, std),
                _ => fae::channel_stats(&features),
            };
            let init = match previous {
                Some(p) => Some(load_fae(cfg, features.shape.channels, &p.with_file_name(FAE_FILE), device)?),
                None => None,
            };
            let t = fae::FaeTraining {
                latent: cfg.fae.latent,
                epochs: cfg.epochs,
                batch: cfg.batch,
                lr: cfg.fae.lr,
                noise: cfg.fae.noise,
                variational: cfg.fae.variational,
                kl_weight: cfg.autoencoder.kl_weight,
                seed: cfg.seed,
            };
            let pool = synthetic_pool(cfg, extractor, &features)?;
            let input = match cfg.corruption {
                Corruption::Synthetic => pool.as_deref(),
                Corruption::Gaussian | Corruption::CycleGan(_) => None,
                Corruption::None => Some(&features.data[..]),
            };
            let Some((model, losses)) = fae::train(&features, input, (&mean, &std), t, device, stop, init)? else {
                return Ok(None);
            };
            model.clone().save_file(dir.join(FAE_FILE)).map_err(|e| anyhow::anyhow!("{e:?}"))?;
            history = loss_history(phase, &losses);
            HeadState::Fae { mean, std }
        }
        ModelKind::Fdisc => {
            let (mean, std) = match previous.map(|p| HeadState::load(ModelKind::Fdisc, p)).transpose()? {
                Some(HeadState::Fdisc { mean, std }) => (mean, std),
                _ => fdisc::stats(&features, cfg.fdisc.standardise),
            };
            let (c, cells) = (features.shape.channels, features.shape.cells());
            anyhow::ensure!(
                mean.len() == c || mean.len() == c * cells,
                "the fitted standardisation has {} values, the features {c} channels on {cells} cells: they come from another backbone or input size",
                mean.len()
            );
            let (full_mean, full_std) = (fdisc::per_cell(&mean, c, cells), fdisc::per_cell(&std, c, cells));
            let init = match previous {
                Some(p) => Some(load_fdisc(cfg, features.shape.channels, &p.with_file_name(FDISC_FILE), device)?),
                None => None,
            };
            let t = fdisc::FdiscTraining {
                hidden: cfg.fdisc.hidden,
                steps: cfg.fdisc.steps,
                cells: cfg.fdisc.cells,
                lr: cfg.fdisc.lr,
                noise: cfg.fdisc.noise,
                seed: cfg.seed,
            };
            let pool = synthetic_pool(cfg, extractor, &features)?;
            let moved = pool.as_deref().map(|p| fdisc::moved_cells(&features, p, &full_std, cfg.fdisc.noise));
            if let Some(m) = &moved {
                tracing::info!(
                    "synthetic defects: {} of {} cells moved as far as the noise",
                    m.len(),
                    features.len() * features.shape.cells()
                );
            }
            let synthetic = pool.as_deref().zip(moved.as_deref()).map(|(pool, moved)| fdisc::Synthetic { pool, moved });
            let Some((model, losses)) =
                fdisc::train(&features, synthetic, defects, (&full_mean, &full_std), t, device, stop, init)?
            else {
                return Ok(None);
            };
            model.clone().save_file(dir.join(FDISC_FILE)).map_err(|e| anyhow::anyhow!("{e:?}"))?;
            history = loss_history(phase, &losses);
            HeadState::Fdisc { mean, std }
        }
        ModelKind::Student => {
            let (mean, std) = match previous.map(|p| HeadState::load(ModelKind::Student, p)).transpose()? {
                Some(HeadState::Student { mean, std }) => (mean, std),
                _ => fae::channel_stats(&features),
            };
            anyhow::ensure!(
                mean.len() == features.shape.channels,
                "the fitted standardisation has {} channels, the features {}: they come from another backbone",
                mean.len(),
                features.shape.channels
            );
            let init = match previous {
                Some(p) => Some(load_student(cfg, features.shape.channels, &p.with_file_name(STUDENT_FILE), device)?),
                None => None,
            };
            let t = student::StudentTraining {
                width: cfg.student.width,
                steps: cfg.student.steps,
                batch: cfg.student.batch,
                lr: cfg.student.lr,
                hard_share: cfg.student.hard_share,
                seed: cfg.seed,
            };
            let Some((model, losses)) =
                student::train(&features, (&images, extractor.input()), (&mean, &std), t, device, stop, init)?
            else {
                return Ok(None);
            };
            model.clone().save_file(dir.join(STUDENT_FILE)).map_err(|e| anyhow::anyhow!("{e:?}"))?;
            history = loss_history(phase, &losses);
            HeadState::Student { mean, std }
        }
        other => bail!("{other:?} is not a feature family"),
    };
    state.save(&head_path)?;
    Ok(Some(Fitted { images: features.len(), skipped, history, engine: extractor.engine() }))
}

/// With `corruption = "synthetic"`, the features of the training images with synthetic
/// defects pasted on (one block per image, in `features`' order): what `fae` restores and
/// `fdisc` learns as anomalous.
fn synthetic_pool(
    cfg: &TrainConfig,
    extractor: &Extractor,
    features: &extract::Features,
) -> anyhow::Result<Option<Vec<f32>>> {
    Ok(match cfg.corruption {
        Corruption::Synthetic => Some(extractor.extract_corrupted(&features.paths, cfg.seed)?),
        Corruption::Gaussian | Corruption::None | Corruption::CycleGan(_) => None,
    })
}

/// One log entry per epoch (fae) or tenth of the steps (fdisc, student).
fn loss_history(phase: &str, losses: &[f64]) -> Vec<EpochLog> {
    losses
        .iter()
        .enumerate()
        .map(|(i, l)| EpochLog {
            phase: phase.into(),
            epoch: i as u32 + 1,
            losses: vec![("loss".into(), *l)],
            samples_per_s: 0.0,
        })
        .collect()
}

fn load_fdisc(cfg: &TrainConfig, channels: usize, path: &Path, device: &Device) -> anyhow::Result<fdisc::FeatureDisc> {
    fdisc::FeatureDisc::new(channels, cfg.fdisc.hidden, device)
        .try_load_file(path)
        .map_err(|e| anyhow::anyhow!("{}: {e:?}", path.display()))
}

fn load_student(cfg: &TrainConfig, channels: usize, path: &Path, device: &Device) -> anyhow::Result<student::Student> {
    student::Student::new(channels, cfg.student.width, device)
        .try_load_file(path)
        .map_err(|e| anyhow::anyhow!("{}: {e:?}", path.display()))
}

fn load_fae(cfg: &TrainConfig, channels: usize, path: &Path, device: &Device) -> anyhow::Result<fae::FeatureAe> {
    fae::FeatureAe::new(channels, cfg.fae.latent, cfg.fae.variational, device)
        .try_load_file(path)
        .map_err(|e| anyhow::anyhow!("{}: {e:?}", path.display()))
}

/// The graph head of a run's (or bundle's) fitted state: one head per class for a
/// conditional model.
pub fn head(cfg: &TrainConfig, dir: &Path, channels: usize) -> anyhow::Result<FeatureHead> {
    if cfg.classes.is_empty() {
        return head_of(cfg, dir, channels);
    }
    let heads = (0..cfg.classes.len()).map(|i| head_of(cfg, &dir.join(class_dir(i)), channels));
    Ok(FeatureHead::PerClass(heads.collect::<anyhow::Result<_>>()?))
}

fn head_of(cfg: &TrainConfig, dir: &Path, channels: usize) -> anyhow::Result<FeatureHead> {
    Ok(match HeadState::load(cfg.model, &dir.join(HEAD_FILE))? {
        HeadState::Padim(s) => padim::head(&s)?,
        HeadState::Patchcore(b) => patchcore::head(&b),
        HeadState::Fae { mean, std } => {
            let model = load_fae(cfg, channels, &dir.join(FAE_FILE), &Device::flex())?;
            let net = model.valid().to_sequential().fold_batch_norm()?;
            FeatureHead::Fae { mean: Tensor::new(vec![mean.len()], mean), std: Tensor::new(vec![std.len()], std), net }
        }
        HeadState::Fdisc { mean, std } => {
            let model = load_fdisc(cfg, channels, &dir.join(FDISC_FILE), &Device::flex())?;
            let net = model.valid().to_sequential();
            FeatureHead::Discriminator {
                mean: Tensor::new(vec![mean.len()], mean),
                std: Tensor::new(vec![std.len()], std),
                net,
            }
        }
        HeadState::Student { mean, std } => {
            let model = load_student(cfg, channels, &dir.join(STUDENT_FILE), &Device::flex())?;
            FeatureHead::Student {
                mean: Tensor::new(vec![mean.len()], mean),
                std: Tensor::new(vec![std.len()], std),
                net: model.valid().to_sequential(),
            }
        }
    })
}

/// The score settings these families export.
pub fn score_spec(cfg: &TrainConfig) -> ScoreSpec {
    ScoreSpec {
        source: ScoreSource::Features,
        pixel_error: PixelError::Squared,
        smoothing_sigma: cfg.smoothing_sigma,
        reduction: cfg.reduction,
        feature_weight: None,
    }
}

/// A finished run's bundle graph and what goes with it.
pub struct FeatureModel {
    /// The scoring graph.
    pub model: pb::ModelProto,
    /// Its input.
    pub input: InputSpec,
    /// Its score settings.
    pub score: ScoreSpec,
    /// The backbone it runs.
    pub backbone: BackboneInfo,
    /// The head it was built from (what the bundle's weights are written from).
    pub head: FeatureHead,
}

/// The bundle's graph, input and score settings of a finished run.
pub fn model(cfg: &TrainConfig, checkpoint: &Path) -> anyhow::Result<FeatureModel> {
    let (net, info): (EfficientNetLite, BackboneInfo) = backbone::ensure(cfg.features.backbone)?;
    let [h, w] = input_size(cfg);
    let input = extract::input_spec(h, w);
    let channels = net.stage_shapes()[vigil_model::onnx::features::TAP_STAGES[0] - 1].0
        + net.stage_shapes()[vigil_model::onnx::features::TAP_STAGES[1] - 1].0;
    let head = head(cfg, checkpoint, channels)?;
    let score = score_spec(cfg);
    let map = MapSpec { smoothing_sigma: cfg.smoothing_sigma, reduction: cfg.reduction };
    let model = feature_scoring_model(&net, &input, &head, map);
    Ok(FeatureModel { model, input, score, backbone: info, head })
}
