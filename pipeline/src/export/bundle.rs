//! `vigil-train export`: a run folder becomes a bundle — ONNX graph with the score head,
//! threshold calibrated on held-out normals through the exported graph itself, evaluation
//! on the test images, model card and safetensors weights.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use vigil_model::bundle::Bundle;
use vigil_model::bundle::manifest::{
    ClassSpec, Conditioning, Family, Manifest, OutputSpec, Parent, ScoreSource, ScoreSpec, Threshold, ThresholdMethod,
    Training,
};
use vigil_model::engine::{self, EngineConfig};
use vigil_model::onnx::head::{CLASS_INPUT, MAP_OUTPUT, SCORE_OUTPUT, build_scoring_model};
use vigil_model::preprocess::Preprocessor;

use crate::config::TrainConfig;
use crate::data::sets::{discover, fingerprint, list_images};
use crate::evaluate::calibrate;
use crate::evaluate::scores::{Evaluation, evaluate, score_files};
use crate::train::{RunDir, RunState, input_spec, load_trained};

/// What to export.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    /// The run folder.
    pub run: RunDir,
    /// The bundle folder to write.
    pub out: PathBuf,
    /// Bundle name (default: the run folder's name).
    pub name: Option<String>,
    /// Version (default 1).
    pub version: u32,
    /// The bundle this run was fine-tuned from.
    pub parent: Option<Parent>,
    /// Engine used to calibrate and evaluate the exported graph.
    pub engine: EngineConfig,
}

/// The result of an export.
#[derive(Debug)]
pub struct Exported {
    /// The written bundle.
    pub bundle: Bundle,
    /// Its evaluation on the test images, if there were any.
    pub evaluation: Option<Evaluation>,
}

/// The score settings a config exports.
pub fn score_spec(cfg: &TrainConfig, source: ScoreSource) -> ScoreSpec {
    ScoreSpec {
        source,
        pixel_error: cfg.pixel_error,
        smoothing_sigma: cfg.smoothing_sigma,
        reduction: cfg.reduction,
        feature_weight: (source == ScoreSource::EncoderFeatures).then_some(cfg.gan.feature_weight),
    }
}

fn sanitize(name: &str) -> String {
    let s: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '-' }).collect();
    if s.is_empty() { "model".into() } else { s }
}

/// Trains `config` on `source` (and the confirmed defects in `defects`, for `fdisc`) into
/// `run` (fresh), then exports version 1 into `run/bundle`, calibrated and evaluated on the
/// default engine: what the benchmarks do per model. `None` when stopped.
pub fn train_and_export(
    config: TrainConfig,
    source: crate::data::sets::DataSource,
    defects: Option<PathBuf>,
    run: RunDir,
    device: crate::device::DeviceChoice,
    stop: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<Option<Exported>> {
    let req = crate::train::TrainRequest {
        config,
        source: Some(source),
        run: run.clone(),
        device,
        resume: false,
        init_weights: None,
        val_abnormal: None,
        train_abnormal: defects,
    };
    if crate::train::train(&req, stop)? == crate::run::Outcome::Interrupted {
        return Ok(None);
    }
    let out = run.0.join("bundle");
    export(&ExportRequest { run, out, name: None, version: 1, parent: None, engine: EngineConfig::default() }).map(Some)
}

/// Writes the bundle of a finished run.
pub fn export(req: &ExportRequest) -> anyhow::Result<Exported> {
    let run = &req.run;
    let state = RunState::load(run)?;
    let cfg = TrainConfig::from_file(&run.config())?;
    anyhow::ensure!(
        state.epochs_done >= cfg.epochs
            && (!cfg.model.is_gan() || state.encoder_epochs_done >= cfg.gan.encoder_epochs.unwrap_or(cfg.epochs)),
        "{}: training is not finished ({} of {} epochs); continue it with `vigil-train train --resume {}`",
        run.0.display(),
        state.epochs_done,
        cfg.epochs,
        run.0.display()
    );
    let data = discover(&state.data.source()?, cfg.val_fraction, cfg.seed)?;
    let (model, input, score, weights, backbone) = if cfg.model.is_feature() {
        let checkpoint = run.0.join("checkpoint");
        let f = crate::family::features::model(&cfg, &checkpoint)?;
        (f.model, f.input, f.score, Weights::Features { checkpoint, head: f.head }, Some(f.backbone))
    } else {
        let spec = cfg.arch(state.channels);
        let trained = load_trained(run, &cfg, state.channels)?;
        let (net, source) = trained.score_net(&spec, cfg.gan.score)?;
        let input = input_spec(&cfg, state.channels);
        let score = score_spec(&cfg, source);
        let model = build_scoring_model(&net, &input, &score, cfg.classes.len())?;
        (model, input, score, Weights::Networks(Box::new(trained)), None)
    };
    let source = score.source;
    let name = sanitize(&req.name.clone().unwrap_or_else(|| {
        run.0.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into())
    }));
    let mut manifest = Manifest {
        schema_version: cfg.model.family().schema_version(),
        name,
        version: req.version,
        created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        family: cfg.model.family(),
        description: Some(match &backbone {
            Some(b) => format!(
                "{} on {} features ({}), fitted by vigil-train on {}",
                cfg.model.family().as_str(),
                cfg.features.backbone.name(),
                b.package,
                data.description
            ),
            None => format!("{} trained by vigil-train on {}", cfg.model.family().as_str(), data.description),
        }),
        input,
        outputs: OutputSpec {
            score: SCORE_OUTPUT.into(),
            anomaly_map: (source != ScoreSource::Discriminator).then(|| MAP_OUTPUT.into()),
        },
        score,
        threshold: uncalibrated(),
        normalization: None,
        metrics: BTreeMap::new(),
        training: Some(Training {
            data_fingerprint: fingerprint(&data.train),
            data: Some(data.description.clone()),
            seed: cfg.seed,
            epochs: cfg.epochs,
            images: state.images,
            vigil_version: vigil_model::VERSION.into(),
            device: Some(state.device.clone()),
            config: match serde_json::to_value(&cfg)? {
                serde_json::Value::Object(m) => m,
                _ => serde_json::Map::new(),
            },
            head_in_graph: crate::family::features::head_in_graph(&cfg),
        }),
        parent: req.parent.clone(),
        conditioning: (!cfg.classes.is_empty()).then(|| Conditioning {
            input: CLASS_INPUT.into(),
            classes: cfg
                .classes
                .iter()
                .map(|name| ClassSpec {
                    name: name.clone(),
                    threshold: uncalibrated(),
                    normalization: None,
                    metrics: BTreeMap::new(),
                })
                .collect(),
        }),
    };
    manifest.schema_version = manifest.required_schema_version();
    // Calibrate through the exported graph itself, with the daemon's preprocessing.
    let provisional = Bundle::write(&req.out, &manifest, model.clone(), &[])?;
    let engine = engine::load(&provisional, &req.engine)?;
    let pre = Preprocessor::new(&manifest.input);
    let val_abnormal = state.data.val_abnormal.as_deref();
    if cfg.classes.is_empty() {
        let (normals, defects) = validation_scores(&engine, &pre, &manifest, &data.val, val_abnormal, None)?;
        manifest.threshold = calibrate::threshold(&normals, &defects, cfg.operating_point())
            .context("no readable validation image to calibrate the threshold on")?;
        manifest.normalization = calibrate::normalization(&normals);
    } else {
        // Each class its own threshold, on its own validation images (and its own defects:
        // the `--val-abnormal` subfolder named after the class); the top-level threshold
        // summarises them all.
        let (mut all_normals, mut all_defects) = (vec![], vec![]);
        for (i, name) in cfg.classes.iter().enumerate() {
            let val: Vec<PathBuf> =
                data.val.iter().zip(&data.val_class).filter(|(_, k)| **k == i).map(|(p, _)| p.clone()).collect();
            let defects_dir = val_abnormal.map(|d| d.join(name)).filter(|d| d.is_dir());
            let (normals, defects) =
                validation_scores(&engine, &pre, &manifest, &val, defects_dir.as_deref(), Some(i))?;
            let threshold = calibrate::threshold(&normals, &defects, cfg.operating_point())
                .with_context(|| format!("class {name}: no readable validation image to calibrate its threshold on"))?;
            let class = &mut manifest.conditioning.as_mut().expect("set above").classes[i];
            class.threshold = threshold;
            class.normalization = calibrate::normalization(&normals);
            all_normals.extend(normals);
            all_defects.extend(defects);
        }
        manifest.threshold = calibrate::threshold(&all_normals, &all_defects, cfg.operating_point())
            .context("no readable validation image to calibrate the threshold on")?;
        manifest.normalization = calibrate::normalization(&all_normals);
    }
    // An operating-point threshold is newer than the uncalibrated one the graph was tried with.
    manifest.schema_version = manifest.required_schema_version();
    let evaluation = if data.test.is_empty() {
        None
    } else {
        // The same graph with the calibrated threshold: no need to write it out again first.
        let calibrated = Bundle { manifest: manifest.clone(), ..provisional.clone() };
        let (e, _) = evaluate(&calibrated, &engine, &data.test, &data.classes);
        Some(e)
    };
    if let Some(e) = &evaluation {
        let m = &mut manifest.metrics;
        for (k, v) in [("image_auroc", e.image_auroc), ("pixel_auroc", e.pixel_auroc), ("aupro", e.aupro)] {
            if let Some(v) = v {
                m.insert(k.into(), v);
            }
        }
        m.insert("f1".into(), e.at_threshold.f1);
        m.insert("precision".into(), e.at_threshold.precision);
        m.insert("recall".into(), e.at_threshold.recall);
        m.insert("test_images".into(), e.counts.values().sum::<usize>() as f64);
        if let Some(cond) = manifest.conditioning.as_mut() {
            for class in &mut cond.classes {
                if let Some(ce) = e.per_class.get(&class.name) {
                    for (k, v) in [("image_auroc", ce.image_auroc), ("pixel_auroc", ce.pixel_auroc)] {
                        if let Some(v) = v {
                            class.metrics.insert(k.into(), v);
                        }
                    }
                    class.metrics.insert("f1".into(), ce.at_threshold.f1);
                }
            }
        }
    }
    let card = model_card(&manifest, evaluation.as_ref());
    let bundle = Bundle::write(&req.out, &manifest, model, &[("README.md", card.as_bytes())])?;
    match weights {
        Weights::Networks(trained) => crate::family::trained::BundleWeights::from(*trained)
            .save(&req.out.join(crate::family::trained::WEIGHTS_FILE))?,
        Weights::Features { checkpoint, head: graph_head } => {
            // The head's state as the bundle's weights (what a retrain extends), and the
            // trained network of `fae` and `fdisc`; a conditional model's per class in its folder.
            let folders: Vec<(PathBuf, PathBuf)> = if cfg.classes.is_empty() {
                vec![(checkpoint.clone(), req.out.clone())]
            } else {
                (0..cfg.classes.len())
                    .map(|i| {
                        let dir = crate::family::features::class_dir(i);
                        (checkpoint.join(&dir), req.out.join(&dir))
                    })
                    .collect()
            };
            for (from, to) in folders {
                std::fs::create_dir_all(&to)?;
                let (head, weights) =
                    (from.join(crate::family::features::HEAD_FILE), to.join(crate::family::trained::WEIGHTS_FILE));
                if crate::family::features::head_in_graph(&cfg) {
                    crate::family::features::write_slim_head(&graph_head, &head, &weights)?;
                } else {
                    std::fs::copy(head, weights)?;
                }
                for name in crate::family::features::NETWORK_FILES {
                    if from.join(name).is_file() {
                        std::fs::copy(from.join(name), to.join(name))?;
                    }
                }
            }
        }
    }
    Ok(Exported { bundle, evaluation })
}

/// A placeholder threshold until calibration replaces it.
fn uncalibrated() -> Threshold {
    Threshold {
        value: 0.0,
        method: ThresholdMethod::Manual,
        quantile: None,
        false_alarms_per_1000: None,
        recall: None,
        calibrated_on: None,
    }
}

/// The scores of validation normals `val` and of the defects in `defects_dir` (if any), all
/// of class `class` for a conditional model; unreadable files are named in the log.
fn validation_scores(
    engine: &engine::LoadedEngine,
    pre: &Preprocessor,
    manifest: &Manifest,
    val: &[PathBuf],
    defects_dir: Option<&std::path::Path>,
    class: Option<usize>,
) -> anyhow::Result<(Vec<f32>, Vec<f32>)> {
    let (scored, skipped) = score_files(engine, pre, &manifest.score, val, class);
    for s in &skipped {
        tracing::warn!("validation image {} skipped: {}", s.path.display(), s.reason);
    }
    let normals = scored.iter().map(|s| s.score).collect();
    let defects = match defects_dir {
        Some(dir) => {
            let (scored, skipped) = score_files(engine, pre, &manifest.score, &list_images(dir)?, class);
            for s in &skipped {
                tracing::warn!("validation defect {} skipped: {}", s.path.display(), s.reason);
            }
            scored.iter().map(|s| s.score).collect()
        }
        None => vec![],
    };
    Ok((normals, defects))
}

/// What a bundle keeps beside its graph for retraining.
enum Weights {
    /// The networks of a family trained from scratch.
    Networks(Box<crate::family::trained::Trained>),
    /// The fitted head of a feature family, in this checkpoint folder, and as the graph has it.
    Features {
        /// The run's `checkpoint/`.
        checkpoint: PathBuf,
        /// The head the graph was built from.
        head: vigil_model::onnx::features::FeatureHead,
    },
}

/// A model card with Hugging Face-style YAML front matter.
pub fn model_card(m: &Manifest, e: Option<&Evaluation>) -> String {
    let family = m.family.as_str();
    let mut s = String::new();
    s.push_str("---\nlibrary_name: vigil\npipeline_tag: image-classification\n");
    s.push_str(&format!("tags:\n- anomaly-detection\n- onnx\n- vigil\n- {family}\n"));
    if !m.metrics.is_empty() {
        s.push_str("model-index:\n- name: ");
        s.push_str(&m.name);
        s.push_str("\n  results:\n  - task:\n      type: anomaly-detection\n    metrics:\n");
        for (k, v) in &m.metrics {
            s.push_str(&format!("    - type: {k}\n      value: {v:.4}\n"));
        }
    }
    s.push_str("---\n\n");
    s.push_str(&format!("# {} (version {})\n\n", m.name, m.version));
    if let Some(d) = &m.description {
        s.push_str(&format!("{d}.\n\n"));
    }
    let i = &m.input;
    s.push_str(&format!(
        "- Family: `{family}`, score from `{:?}`, per-pixel {:?} error, reduction {:?}, map smoothing sigma {} px.\n",
        m.score.source, m.score.pixel_error, m.score.reduction, m.score.smoothing_sigma
    ));
    s.push_str(&format!(
        "- Input: `{}` {:?} {}x{} ({:?} resize), tensor = (pixel x {} - mean {:?}) / std {:?}.\n",
        i.name, i.color, i.width, i.height, i.resize_mode, i.scale, i.mean, i.std
    ));
    s.push_str(&format!(
        "- Threshold: {} ({:?}{}).\n",
        m.threshold.value,
        m.threshold.method,
        m.threshold.calibrated_on.as_ref().map(|c| format!(", {c}")).unwrap_or_default()
    ));
    if let Some(c) = &m.conditioning {
        s.push_str(&format!(
            "- Conditional: one model for {} products, told each image's class through the `{}` input; each class has its own threshold:\n",
            c.classes.len(),
            c.input
        ));
        for k in &c.classes {
            let auroc = k.metrics.get("image_auroc").map(|a| format!(", image AUROC {a:.4}")).unwrap_or_default();
            s.push_str(&format!(
                "  - `{}`: threshold {} ({:?}{auroc})\n",
                k.name, k.threshold.value, k.threshold.method
            ));
        }
    }
    let corruption = m.training.as_ref().and_then(|t| t.config.get("corruption")).and_then(|c| c.as_str());
    if let Some(run) = corruption.and_then(|c| c.strip_prefix("cyclegan:")) {
        s.push_str(&format!(
            "- Corruption: realistic defects from the CycleGAN generator of `{run}` (normal to defective), which the network learnt to remove.\n"
        ));
    }
    if let Some(t) = &m.training {
        s.push_str(&format!(
            "- Trained: {} epochs on {} images (seed {}, data fingerprint `{}`), vigil {}, {}.\n",
            t.epochs,
            t.images,
            t.seed,
            &t.data_fingerprint[..16.min(t.data_fingerprint.len())],
            t.vigil_version,
            t.device.clone().unwrap_or_default()
        ));
    }
    if let Some(e) = e {
        s.push_str("\n## Evaluation\n\n| metric | value |\n| --- | --- |\n");
        for (k, v) in &m.metrics {
            s.push_str(&format!("| {k} | {v:.4} |\n"));
        }
        for (kind, a) in &e.auroc_per_type {
            s.push_str(&format!("| image AUROC, {kind} | {} |\n", a.map_or("n/a".into(), |a| format!("{a:.4}"))));
        }
    }
    s.push_str("\nServe it with `vigil score --model <this folder> IMAGE...` or the vigil daemon.\n");
    if m.family == Family::External {
        s.push_str("\nThis model was made outside vigil.\n");
    }
    s
}
