//! `vigil-train bench-cyclegan`: does a threshold calibrated on CycleGAN defects catch more
//! real defects than one calibrated on normal images alone? A few real defects per type are
//! kept for the CycleGAN (the rest held out), its generator makes defective images from the
//! training normals, and one model is calibrated three ways: the quantile of normal scores,
//! the best F1 on the generated defects, and (for reference) the best F1 on the few real ones.
//! Each threshold is then scored on the held-out real defects and the normal test images.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use serde::Serialize;
use vigil_model::engine::{self, EngineConfig};
use vigil_model::preprocess::Preprocessor;

use crate::config::TrainConfig;
use crate::data::sets::{DataSource, discover, list_images};
use crate::device::DeviceChoice;
use crate::evaluate::calibrate;
use crate::evaluate::metrics::{Confusion, confusion};
use crate::evaluate::scores::score_files;
use crate::export::bundle::train_and_export;
use crate::family::cyclegan::config::CycleConfig;
use crate::family::cyclegan::fit::CycleRequest;
use crate::run::Outcome;
use crate::train::RunDir;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchRequest {
    /// An MVTec-layout data set with defect types under `test/`.
    pub data: PathBuf,
    /// Real defects per type given to the CycleGAN (and to the reference calibration).
    pub per_type: usize,
    /// Defective images the generator writes.
    pub generated: usize,
    /// The model calibrated (its defaults, `model` included).
    pub model: TrainConfig,
    /// The CycleGAN's settings.
    pub cyclegan: CycleConfig,
    /// Where the runs go.
    pub root: PathBuf,
    /// Where to train.
    pub device: DeviceChoice,
}

/// One calibration's result on the held-out images.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// `quantile`, `f1_cyclegan` or `f1_few_real`.
    pub calibration: &'static str,
    /// The threshold.
    pub threshold: f32,
    /// Counts, precision, recall, F1 on the held-out real defects and the normal test images.
    pub held_out: Confusion,
    /// Held-out real defects and normal test images.
    pub images: BTreeMap<&'static str, usize>,
    /// The data set.
    pub data: PathBuf,
    /// The family calibrated.
    pub model: crate::family::kind::ModelKind,
    /// Seconds the CycleGAN trained.
    pub cyclegan_s: f64,
}

/// Runs the comparison; `emit` gets each row. `None` when stopped.
pub fn bench(
    req: &BenchRequest,
    stop: &AtomicBool,
    emit: &mut dyn FnMut(&Row) -> anyhow::Result<()>,
) -> anyhow::Result<Option<()>> {
    let set = discover(&DataSource::Mvtec(req.data.clone()), req.model.val_fraction, req.model.seed)?;
    // The first `per_type` defects of each type (by name) are the few known ones.
    let mut by_type: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for t in set.test.iter().filter(|t| t.is_defect()) {
        by_type.entry(t.kind.clone()).or_default().push(t.path.clone());
    }
    anyhow::ensure!(!by_type.is_empty(), "{}: no defect types under test/", req.data.display());
    let few_dir = req.root.join("few-real-defects");
    std::fs::create_dir_all(&few_dir)?;
    let (mut few, mut held) = (vec![], vec![]);
    for (kind, mut paths) in by_type {
        paths.sort();
        anyhow::ensure!(
            paths.len() > req.per_type,
            "defect type {kind}: {} images; more than --per-type {} are needed to hold some out",
            paths.len(),
            req.per_type
        );
        for (i, p) in paths.into_iter().enumerate() {
            if i < req.per_type {
                let name =
                    format!("{kind}-{}", p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
                std::fs::copy(&p, few_dir.join(name))?;
                few.push(p);
            } else {
                held.push(p);
            }
        }
    }
    let normal_test: Vec<PathBuf> = set.test.iter().filter(|t| !t.is_defect()).map(|t| t.path.clone()).collect();
    let normal_dir = req.data.join("train/good");

    let started = std::time::Instant::now();
    let cycle_run = RunDir(req.root.join("cyclegan"));
    let cycle = CycleRequest {
        config: req.cyclegan.clone(),
        normal: normal_dir.clone(),
        defect: few_dir.clone(),
        run: cycle_run.clone(),
        device: req.device,
        resume: false,
    };
    if crate::family::cyclegan::fit::train(&cycle, stop)? == Outcome::Interrupted {
        return Ok(None);
    }
    let cyclegan_s = started.elapsed().as_secs_f64();
    let generated = req.root.join("generated-defects");
    crate::family::cyclegan::augment::augment(&cycle_run.0, &normal_dir, &generated, req.generated)?;

    let run = RunDir(req.root.join("model"));
    let source = DataSource::Mvtec(req.data.clone());
    let Some(exported) = train_and_export(req.model.clone(), source, None, run, req.device, stop)? else {
        return Ok(None);
    };
    let bundle = exported.bundle;
    let engine = engine::load(&bundle, &EngineConfig::default())?;
    let pre = Preprocessor::new(&bundle.manifest.input);
    let scores = |paths: &[PathBuf]| -> Vec<f32> {
        score_files(&engine, &pre, &bundle.manifest.score, paths, None).0.iter().map(|s| s.score).collect()
    };
    let val = scores(&set.val);
    let generated_scores = scores(&list_images(&generated)?);
    let few_scores = scores(&few);
    let held_scores = scores(&held);
    let normal_scores = scores(&normal_test);
    let test_scores: Vec<f32> = held_scores.iter().chain(&normal_scores).copied().collect();
    let labels: Vec<bool> = held_scores.iter().map(|_| true).chain(normal_scores.iter().map(|_| false)).collect();
    let q = calibrate::OperatingPoint::Quantile(req.model.quantile);
    for (calibration, defects) in
        [("quantile", &vec![]), ("f1_cyclegan", &generated_scores), ("f1_few_real", &few_scores)]
    {
        let Some(threshold) = calibrate::threshold(&val, defects, q) else {
            anyhow::bail!("no readable validation image to calibrate on");
        };
        emit(&Row {
            calibration,
            threshold: threshold.value,
            held_out: confusion(&test_scores, &labels, threshold.value),
            images: BTreeMap::from([("held_out_defects", held_scores.len()), ("normal", normal_scores.len())]),
            data: req.data.clone(),
            model: req.model.model,
            cyclegan_s,
        })?;
    }
    Ok(Some(()))
}
