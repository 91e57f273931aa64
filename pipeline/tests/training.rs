//! Training every family on a small synthetic set: falling loss, export parity, detection,
//! resume, and skipped files.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::AtomicBool;

use vigil_model::bundle::Bundle;
use vigil_model::bundle::manifest::PixelError;
use vigil_model::engine::{self, EngineChoice};
use vigil_model::preprocess::Preprocessor;
use vigil_model::synth::{SynthConfig, generate};
use vigil_pipeline::config::TrainConfig;
use vigil_pipeline::data::sets::{DataSource, load_image};
use vigil_pipeline::device::DeviceChoice;
use vigil_pipeline::family::autoencoder::{AutoencoderConfig, ReconstructionLoss};
use vigil_pipeline::family::gan::GanConfig;
use vigil_pipeline::family::kind::ModelKind;
use vigil_pipeline::run::Outcome;
use vigil_pipeline::train::{RunDir, RunState, TrainRequest, load_trained, train};

use crate::common::{engine_config, export_run, train_on};

/// One synthetic data set shared by the tests (written once per test process).
fn synthetic() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("vigil-train-tests-{}", std::process::id()));
        generate(&dir, &SynthConfig { size: 64, n_train: 64, n_test: 40, rgb: false, seed: 3 }).unwrap();
        dir
    })
}

fn small(model: ModelKind, epochs: u32) -> TrainConfig {
    TrainConfig {
        model,
        epochs,
        batch: 16,
        size: 32,
        latent: 32,
        width: 16,
        gan: GanConfig { encoder_epochs: Some(epochs), ..GanConfig::default() },
        smoothing_sigma: 1.0,
        ..TrainConfig::default()
    }
}

fn run(cfg: TrainConfig, dir: &Path) -> RunDir {
    train_on(cfg, synthetic(), dir)
}

/// The first and last epoch's value of `loss` in the `train` phase.
fn first_last(state: &RunState, phase: &str, loss: &str) -> (f64, f64) {
    let values: Vec<f64> = state
        .history
        .iter()
        .filter(|e| e.phase == phase)
        .map(|e| e.losses.iter().find(|(k, _)| k == loss).unwrap().1)
        .collect();
    (values[0], *values.last().unwrap())
}

/// Exports a run and checks that the graph's scores and maps equal burn's own eval-mode
/// forward within 1e-4 on tract and ONNX Runtime.
fn export_with_parity(run: &RunDir, out: &Path) -> Bundle {
    let bundle = export_run(run, out);
    let cfg = TrainConfig::from_file(&run.config()).unwrap();
    let state = RunState::load(run).unwrap();
    let trained = load_trained(run, &cfg, state.channels).unwrap();
    let pre = Preprocessor::new(&bundle.manifest.input);
    let files: Vec<PathBuf> = ["test/good/0000.png", "test/scratch/0000.png", "test/missing/0001.png"]
        .iter()
        .map(|f| synthetic().join(f))
        .collect();
    let mut x = vec![];
    for f in &files {
        x.extend(load_image(&pre, f).unwrap().concat());
    }
    let [c, h, w] = pre.chw();
    let dims = [files.len(), c, h, w];
    let (want, want_maps) = vigil_pipeline::export::forward::score(
        &trained,
        cfg.latent,
        cfg.gan.score,
        &bundle.manifest.score,
        &bundle.manifest.input,
        &x,
        dims,
        None,
    );
    let batch = ndarray::Array4::from_shape_vec((dims[0], c, h, w), x).unwrap();
    for kind in [EngineChoice::Tract, EngineChoice::Ort] {
        let e = engine::load(&bundle, &engine_config(kind)).unwrap();
        let got = e.run(batch.view()).unwrap();
        for (g, w) in got.scores.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-4, "{:?} {kind:?}: exported score {g}, burn {w}", cfg.model);
        }
        if let (Some(maps), Some(want_maps)) = (&got.maps, &want_maps) {
            let d = maps.iter().zip(want_maps.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(d <= 1e-4, "{:?} {kind:?}: maps differ by {d}", cfg.model);
        }
        assert_eq!(got.maps.is_some(), want_maps.is_some());
    }
    bundle
}

#[test]
fn the_dae_trains_separates_synthetic_defects_and_exports_with_parity() {
    let dir = tempfile::tempdir().unwrap();
    let run = run(small(ModelKind::Dae, 8), &dir.path().join("run"));
    let state = RunState::load(&run).unwrap();
    let (first, last) = first_last(&state, "train", "loss");
    assert!(last < first * 0.8, "loss should fall: {first} -> {last}");
    let bundle = export_with_parity(&run, &dir.path().join("bundle"));
    let auroc = bundle.manifest.metrics["image_auroc"];
    eprintln!("dae metrics: {:?}", bundle.manifest.metrics);
    assert!(auroc >= 0.9, "image AUROC {auroc} on the synthetic test set");
    assert!(bundle.manifest.metrics.contains_key("pixel_auroc"));
    assert_eq!(bundle.manifest.threshold.method, vigil_model::bundle::manifest::ThresholdMethod::Quantile);
    assert!(bundle.manifest.normalization.is_some());
    assert!(dir.path().join("bundle/README.md").is_file() && dir.path().join("bundle/weights.safetensors").is_file());
    assert!(run.0.join("losses.png").is_file());
    // The evaluation report: curves, histogram, overlays and the page that shows them.
    let engine = engine::load(&bundle, &engine_config(EngineChoice::Tract)).unwrap();
    let set = vigil_pipeline::data::sets::discover(&DataSource::Mvtec(synthetic().to_path_buf()), 0.1, 0).unwrap();
    let (evaluation, details) = vigil_pipeline::evaluate::scores::evaluate(&bundle, &engine, &set.test, &set.classes);
    let report = dir.path().join("report");
    vigil_pipeline::evaluate::report::write(&report, &bundle, &evaluation, &details).unwrap();
    for f in ["roc.png", "pr.png", "histogram.png", "case_01.png", "index.md", "evaluation.json"] {
        assert!(report.join(f).is_file(), "report lacks {f}");
    }
    let page = std::fs::read_to_string(report.join("index.md")).unwrap();
    assert!(page.contains("| image AUROC | 0.9") && page.contains("![ROC](roc.png)"), "{page}");
    let csv = std::fs::read_to_string(run.losses()).unwrap();
    assert!(csv.starts_with("phase,epoch,metric,value\ntrain,1,loss,"), "{csv}");
}

/// Copies the image folders of `src` (MVTec layout) to `dst` with every level `v` squeezed
/// into `low + v * span / 255`, as a dim, low-contrast camera would see the same parts.
fn squeeze_levels(src: &Path, dst: &Path, low: u8, span: u8) {
    for split in ["train", "test"] {
        for folder in std::fs::read_dir(src.join(split)).unwrap() {
            let folder = folder.unwrap().path();
            let out = dst.join(split).join(folder.file_name().unwrap());
            std::fs::create_dir_all(&out).unwrap();
            for f in std::fs::read_dir(&folder).unwrap() {
                let f = f.unwrap().path();
                let mut img = image::open(&f).unwrap().to_luma8();
                img.pixels_mut().for_each(|p| p.0[0] = low + (p.0[0] as u32 * span as u32 / 255) as u8);
                img.save(out.join(f.file_name().unwrap())).unwrap();
            }
        }
    }
}

#[test]
fn a_low_contrast_camera_is_normalised_recorded_in_the_manifest_and_detected() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dim");
    squeeze_levels(synthetic(), &data, 96, 48);
    let run_dir = RunDir(dir.path().join("run"));
    let req = TrainRequest {
        config: small(ModelKind::Dae, 8),
        source: Some(DataSource::Mvtec(data.clone())),
        run: run_dir.clone(),
        device: DeviceChoice::Cpu,
        resume: false,
        init_weights: None,
        val_abnormal: None,
        train_abnormal: None,
    };
    assert_eq!(train(&req, &AtomicBool::new(false)).unwrap(), Outcome::Finished);
    let cfg = TrainConfig::from_file(&run_dir.config()).unwrap();
    let [[lo, hi]] = cfg.pixel_range.clone().unwrap()[..] else { panic!("one channel: {:?}", cfg.pixel_range) };
    // Within the squeezed levels 96..=144, widened by a tenth of their span at most.
    assert!(lo * 255.0 >= 91.0 && hi * 255.0 <= 149.0 && hi - lo >= 0.05, "range {lo} {hi}");
    let bundle = export_with_parity(&run_dir, &dir.path().join("bundle"));
    let input = &bundle.manifest.input;
    assert_eq!((input.mean[0], input.std[0]), (lo, hi - lo));
    let auroc = bundle.manifest.metrics["image_auroc"];
    eprintln!("low-contrast dae metrics: {:?}", bundle.manifest.metrics);
    assert!(auroc >= 0.9, "image AUROC {auroc} on the low-contrast set");
    // Without normalisation the recorded input is the plain [0, 1] scale.
    let plain = TrainConfig { normalize: false, ..cfg };
    assert_eq!(vigil_pipeline::train::input_spec(&plain, 1).std, vec![1.0]);
}

/// Also the SSIM path: trained on L2 + SSIM, scored by squared error + SSIM dissimilarity, and
/// the graph's SSIM map equal to burn's within 1e-4 on both engines.
#[test]
fn the_vae_trains_on_ssim_and_exports_with_parity() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        autoencoder: AutoencoderConfig { loss: ReconstructionLoss::SsimL2, ..AutoencoderConfig::default() },
        pixel_error: PixelError::SsimSquared,
        ..small(ModelKind::Vae, 4)
    };
    let run = run(cfg, &dir.path().join("run"));
    let (first, last) = first_last(&RunState::load(&run).unwrap(), "train", "reconstruction");
    assert!(last < first, "reconstruction loss should fall: {first} -> {last}");
    let bundle = export_with_parity(&run, &dir.path().join("bundle"));
    assert_eq!(bundle.manifest.score.pixel_error, PixelError::SsimSquared);
}

#[test]
fn the_gans_train_their_encoder_and_export_both_scores_with_parity() {
    for model in [ModelKind::Gan, ModelKind::Wgan] {
        let dir = tempfile::tempdir().unwrap();
        let run = run(small(model, 3), &dir.path().join("run"));
        let state = RunState::load(&run).unwrap();
        let (first, last) = first_last(&state, "encoder", "e_loss");
        assert!(last < first, "{model:?}: encoder loss should fall: {first} -> {last}");
        assert!(state.history.iter().any(|e| e.phase == "train" && e.losses.iter().any(|(k, _)| k == "g_loss")));
        if model == ModelKind::Wgan {
            assert!(state.history[0].losses.iter().any(|(k, v)| k == "gp" && v.is_finite()));
        }
        let bundle = export_with_parity(&run, &dir.path().join("encoder"));
        assert_eq!(bundle.manifest.score.source, vigil_model::bundle::manifest::ScoreSource::EncoderFeatures);
        // The discriminator score exports too.
        let mut cfg = TrainConfig::from_file(&run.config()).unwrap();
        cfg.gan.score = vigil_pipeline::family::kind::GanScore::Discriminator;
        cfg.save(&run.config()).unwrap();
        let bundle = export_with_parity(&run, &dir.path().join("discriminator"));
        assert_eq!(bundle.manifest.outputs.anomaly_map, None);
    }
}

#[test]
fn a_resumed_run_continues_from_its_checkpoint_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small(ModelKind::Dae, 2);
    // Two epochs in one go.
    let straight = run(cfg.clone(), &dir.path().join("straight"));
    // One epoch, then resume for the second.
    let split = RunDir(dir.path().join("split"));
    let req = TrainRequest {
        config: TrainConfig { epochs: 1, ..cfg.clone() },
        source: Some(DataSource::Mvtec(synthetic().to_path_buf())),
        run: split.clone(),
        device: DeviceChoice::Cpu,
        resume: false,
        init_weights: None,
        val_abnormal: None,
        train_abnormal: None,
    };
    train(&req, &AtomicBool::new(false)).unwrap();
    let mut saved = TrainConfig::from_file(&split.config()).unwrap();
    saved.epochs = 2;
    saved.save(&split.config()).unwrap();
    train(&TrainRequest { resume: true, source: None, ..req }, &AtomicBool::new(false)).unwrap();
    let (a, b) = (RunState::load(&straight).unwrap(), RunState::load(&split).unwrap());
    assert_eq!(b.epochs_done, 2);
    assert_eq!(a.history.len(), b.history.len());
    for (x, y) in a.history.iter().zip(&b.history) {
        assert_eq!(x.losses, y.losses, "epoch {}: losses differ after resume", x.epoch);
    }
    // Identical losses in the resumed epoch already need the Adam moments back (without them
    // the first resumed step differs); the weights must match value for value too.
    let weights = |r: &RunDir| match load_trained(r, &cfg, 1).unwrap() {
        vigil_pipeline::family::trained::Trained::Autoencoder(a) => {
            (a.encoder.to_sequential(), a.decoder.to_sequential())
        }
        _ => unreachable!("a DAE run"),
    };
    let (a, b) = (weights(&straight), weights(&split));
    for (x, y) in a.0.layers.iter().chain(&a.1.layers).zip(b.0.layers.iter().chain(&b.1.layers)) {
        assert!(x == y, "weights differ after resume: {}", describe(x, y));
    }
}

#[test]
fn a_stop_request_saves_a_checkpoint_that_resume_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir(dir.path().join("run"));
    let req = TrainRequest {
        config: small(ModelKind::Dae, 2),
        source: Some(DataSource::Mvtec(synthetic().to_path_buf())),
        run: run.clone(),
        device: DeviceChoice::Cpu,
        resume: false,
        init_weights: None,
        val_abnormal: None,
        train_abnormal: None,
    };
    assert_eq!(train(&req, &AtomicBool::new(true)).unwrap(), Outcome::Interrupted);
    assert!(run.checkpoint("model").is_file());
    assert_eq!(RunState::load(&run).unwrap().epochs_done, 0);
    assert_eq!(
        train(&TrainRequest { resume: true, source: None, ..req }, &AtomicBool::new(false)).unwrap(),
        Outcome::Finished
    );
    assert_eq!(RunState::load(&run).unwrap().epochs_done, 2);
}

#[test]
fn corrupt_training_images_are_skipped_named_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let normal = dir.path().join("normal");
    std::fs::create_dir_all(&normal).unwrap();
    for f in std::fs::read_dir(synthetic().join("train/good")).unwrap().flatten().take(12) {
        std::fs::copy(f.path(), normal.join(f.file_name())).unwrap();
    }
    let png = std::fs::read(synthetic().join("train/good/0000.png")).unwrap();
    // Six bad files: validation takes two images, so at least four reach training.
    for i in 0..3 {
        std::fs::write(normal.join(format!("zz_truncated_{i}.png")), &png[..100 + 50 * i]).unwrap();
        std::fs::write(normal.join(format!("zz_text_{i}.jpg")), "not an image").unwrap();
    }
    // Both ways of holding the data: decoded in memory, and read from disk per batch (as for
    // data sets larger than memory).
    for cache_mib in [2048, 0] {
        let run = RunDir(dir.path().join(format!("run_{cache_mib}")));
        let req = TrainRequest {
            config: TrainConfig { batch: 4, cache_mib, ..small(ModelKind::Dae, 1) },
            source: Some(DataSource::Folders { normal: normal.clone(), abnormal: None, masks: None }),
            run: run.clone(),
            device: DeviceChoice::Cpu,
            resume: false,
            init_weights: None,
            val_abnormal: None,
            train_abnormal: None,
        };
        train(&req, &AtomicBool::new(false)).unwrap();
        let state = RunState::load(&run).unwrap();
        let names: Vec<String> =
            state.skipped.iter().map(|s| s.path.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert!(names.len() >= 4 && names.iter().all(|n| n.starts_with("zz_")), "cache {cache_mib}: {names:?}");
        assert!(state.skipped.iter().all(|s| !s.reason.is_empty()));
        assert_eq!(state.images + names.len(), state_train_count(&run), "every training file is used or skipped");
    }
}

fn state_train_count(run: &RunDir) -> usize {
    let state = RunState::load(run).unwrap();
    let cfg = TrainConfig::from_file(&run.config()).unwrap();
    vigil_pipeline::data::sets::discover(&state.data.source().unwrap(), cfg.val_fraction, cfg.seed).unwrap().train.len()
}

fn describe(x: &vigil_model::onnx::net::Layer, y: &vigil_model::onnx::net::Layer) -> String {
    use vigil_model::onnx::net::Layer;
    let d = |a: &vigil_model::onnx::graph::Tensor, b: &vigil_model::onnx::graph::Tensor| {
        a.data.iter().zip(&b.data).map(|(p, q)| (p - q).abs()).fold(0.0, f32::max)
    };
    match (x, y) {
        (Layer::BatchNorm(p), Layer::BatchNorm(q)) => format!(
            "batch norm: gamma {} beta {} mean {} var {}",
            d(&p.gamma, &q.gamma),
            d(&p.beta, &q.beta),
            d(&p.mean, &q.mean),
            d(&p.var, &q.var)
        ),
        (Layer::Conv { weight: p, .. }, Layer::Conv { weight: q, .. })
        | (Layer::ConvTranspose { weight: p, .. }, Layer::ConvTranspose { weight: q, .. }) => {
            format!("conv weight {}", d(p, q))
        }
        _ => "other".into(),
    }
}

#[test]
fn retraining_a_bundle_fine_tunes_it_into_the_next_version() {
    let dir = tempfile::tempdir().unwrap();
    let run = run(TrainConfig { normalize: false, ..small(ModelKind::Dae, 3) }, &dir.path().join("surface"));
    let first = export_run(&run, &dir.path().join("v1"));
    // As a bundle written before `normalize` existed: its config does not say how inputs
    // were scaled, only its input spec does.
    let manifest_path = dir.path().join("v1").join(vigil_model::bundle::MANIFEST_FILE);
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    let config = v["training"]["config"].as_object_mut().unwrap();
    config.remove("normalize");
    config.remove("pixel_range");
    std::fs::write(&manifest_path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    let req = vigil_pipeline::retrain::finetune::RetrainRequest {
        from: dir.path().join("v1"),
        source: DataSource::Mvtec(synthetic().to_path_buf()),
        out: dir.path().join("v2"),
        run: None,
        epochs: Some(1),
        device: DeviceChoice::Cpu,
        val_abnormal: None,
        engine: crate::common::engine_config(vigil_model::engine::EngineChoice::Tract),
    };
    let second = vigil_pipeline::retrain::finetune::retrain(&req, &AtomicBool::new(false)).unwrap().unwrap().bundle;
    assert_eq!(second.manifest.name, "surface");
    assert_eq!(second.manifest.version, 2);
    let parent = second.manifest.parent.clone().unwrap();
    assert_eq!((parent.name.as_str(), parent.version), ("surface", 1));
    assert_eq!(parent.model_sha256, first.model_sha256);
    // It started from the parent's weights: after one epoch it is far better than a fresh model.
    let state = RunState::load(&RunDir(dir.path().join("v2.run"))).unwrap();
    let fresh = RunState::load(&RunDir(dir.path().join("surface"))).unwrap();
    let (resumed_first, _) = first_last(&state, "train", "loss");
    let (fresh_first, _) = first_last(&fresh, "train", "loss");
    assert!(resumed_first < fresh_first * 0.7, "fine-tuning starts at {resumed_first}, a fresh model at {fresh_first}");
    assert!(second.manifest.metrics.contains_key("image_auroc"));
    assert_eq!(
        (&second.manifest.input.mean, &second.manifest.input.std),
        (&first.manifest.input.mean, &first.manifest.input.std)
    );
}

#[test]
fn labelled_validation_defects_give_the_f1_optimal_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir(dir.path().join("run"));
    let req = TrainRequest {
        config: small(ModelKind::Dae, 3),
        source: Some(DataSource::Folders { normal: synthetic().join("train/good"), abnormal: None, masks: None }),
        run: run.clone(),
        device: DeviceChoice::Cpu,
        resume: false,
        init_weights: None,
        val_abnormal: Some(synthetic().join("test/missing")),
        train_abnormal: None,
    };
    train(&req, &AtomicBool::new(false)).unwrap();
    let bundle = export_run(&run, &dir.path().join("bundle"));
    let t = &bundle.manifest.threshold;
    assert_eq!(t.method, vigil_model::bundle::manifest::ThresholdMethod::F1);
    assert!(t.calibrated_on.as_ref().unwrap().contains("defective images (F1"), "{t:?}");
}

#[test]
fn a_tiled_dae_trains_on_tiles_and_its_bundle_scores_whole_frames() {
    let dir = tempfile::tempdir().unwrap();
    let tiling = vigil_model::bundle::manifest::Tiling { overlap: 8, max_side: None };
    let cfg = TrainConfig { tiling: Some(tiling.clone()), ..small(ModelKind::Dae, 4) };
    let run = run(cfg, &dir.path().join("run"));
    // 64-pixel images in 32-pixel tiles with 8 shared: 3 x 3 tiles each.
    let state = RunState::load(&run).unwrap();
    assert_eq!(state.images, 9 * state_train_count(&run));
    let (first, last) = first_last(&state, "train", "loss");
    assert!(last < first, "loss should fall: {first} -> {last}");
    let bundle = export_run(&run, &dir.path().join("bundle"));
    assert_eq!(bundle.manifest.input.tiling, Some(tiling));
    eprintln!("tiled dae metrics: {:?}", bundle.manifest.metrics);
    for key in ["image_auroc", "pixel_auroc", "aupro"] {
        assert!((0.0..=1.0).contains(&bundle.manifest.metrics[key]), "{key}: {:?}", bundle.manifest.metrics);
    }
    // Maps cover the whole 64-pixel frame.
    let engine = engine::load(&bundle, &engine_config(EngineChoice::Tract)).unwrap();
    let set = vigil_pipeline::data::sets::discover(&DataSource::Mvtec(synthetic().to_path_buf()), 0.1, 0).unwrap();
    let (_, details) = vigil_pipeline::evaluate::scores::evaluate(&bundle, &engine, &set.test[..4], &[]);
    assert_eq!(details[0].map.as_ref().unwrap().dim(), (64, 64));
}

#[test]
fn an_operating_point_in_the_lines_terms_places_the_threshold_and_needs_the_newer_schema() {
    use vigil_model::bundle::manifest::ThresholdMethod;
    let dir = tempfile::tempdir().unwrap();
    let padim = |name: &str, cfg: TrainConfig| {
        let run = RunDir(dir.path().join(name));
        let req = TrainRequest {
            config: TrainConfig {
                model: ModelKind::Padim,
                size: 64,
                padim: vigil_pipeline::family::features::padim::PadimConfig { dims: 48 },
                ..cfg
            },
            source: Some(DataSource::Folders { normal: synthetic().join("train/good"), abnormal: None, masks: None }),
            run: run.clone(),
            device: DeviceChoice::Cpu,
            resume: false,
            init_weights: None,
            val_abnormal: Some(synthetic().join("test/missing")),
            train_abnormal: None,
        };
        train(&req, &AtomicBool::new(false)).unwrap();
        export_run(&run, &dir.path().join(format!("{name}-bundle")))
    };
    // A share of the labelled defects to catch: the threshold catches at least that share.
    let bundle = padim("recall", TrainConfig { recall_target: Some(0.9), ..TrainConfig::default() });
    let t = &bundle.manifest.threshold;
    assert_eq!((t.method, t.recall, t.schema_version()), (ThresholdMethod::Recall, Some(0.9), 4));
    // 5 for this PaDiM bundle: its graph holds part of what a retrain extends.
    assert_eq!(bundle.manifest.schema_version, bundle.manifest.required_schema_version());
    assert!(bundle.manifest.schema_version >= 4);
    let how = t.calibrated_on.as_deref().unwrap();
    assert!(how.contains("validation defects") && how.contains("per 1000 (95 % interval"), "{how}");
    // False alarms per 1000 good parts: from the normals, even with defects labelled.
    let bundle = padim("false-alarms", TrainConfig { false_alarms_per_1000: Some(10.0), ..TrainConfig::default() });
    let t = &bundle.manifest.threshold;
    assert_eq!((t.method, t.false_alarms_per_1000, t.quantile), (ThresholdMethod::FalseAlarms, Some(10.0), Some(0.99)));
    // Without an operating point the threshold keeps a form older vigils read.
    let bundle = padim("quantile", TrainConfig { val_fraction: 0.2, ..TrainConfig::default() });
    assert_eq!(bundle.manifest.threshold.schema_version(), 1, "{:?}", bundle.manifest.threshold);
    // Both at once is refused before anything is trained.
    let both = TrainConfig { recall_target: Some(0.9), false_alarms_per_1000: Some(1.0), ..TrainConfig::default() };
    assert!(both.validate().unwrap_err().to_string().contains("set one of them"));
}
