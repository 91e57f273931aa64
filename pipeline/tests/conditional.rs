//! Conditional models on the synthetic products: the label path from the data through burn's
//! networks into the exported graph (parity on both engines, each class calibrated on its
//! own images), and conditional PaDiM equal to PaDiM fitted on one product alone.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::AtomicBool;

use vigil_model::bundle::Bundle;
use vigil_model::bundle::manifest::ThresholdMethod;
use vigil_model::engine::{self, EngineChoice};
use vigil_model::preprocess::Preprocessor;
use vigil_model::synth::{SynthConfig, generate_products};
use vigil_pipeline::config::TrainConfig;
use vigil_pipeline::data::sets::{DataSource, load_image};
use vigil_pipeline::device::DeviceChoice;
use vigil_pipeline::family::features::padim::PadimConfig;
use vigil_pipeline::family::gan::GanConfig;
use vigil_pipeline::family::kind::ModelKind;
use vigil_pipeline::train::{RunDir, RunState, load_trained};

use crate::common::{engine_config, export_run, train_on, train_source};

fn products() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("vigil-conditional-tests-{}", std::process::id()));
        generate_products(&dir, &SynthConfig { size: 64, n_train: 40, n_test: 16, rgb: false, seed: 11 }, 3).unwrap();
        dir
    })
}

const NAMES: [&str; 3] = ["brushed", "crosswise", "dark"];

fn train_conditional(cfg: TrainConfig, dir: &Path) -> RunDir {
    train_source(cfg, DataSource::classes_in(products()).unwrap(), dir)
}

/// One normal and one defective test image of each product.
fn images() -> Vec<PathBuf> {
    let mut v = vec![];
    for name in NAMES {
        let root = products().join(name).join("test");
        v.push(root.join("good/0000.png"));
        let defect =
            std::fs::read_dir(&root).unwrap().flatten().map(|e| e.path()).find(|p| !p.ends_with("good")).unwrap();
        let mut files: Vec<PathBuf> = std::fs::read_dir(defect).unwrap().flatten().map(|e| e.path()).collect();
        files.sort();
        v.push(files[0].clone());
    }
    v
}

fn check_calibrated_per_class(bundle: &Bundle) {
    let m = &bundle.manifest;
    assert_eq!(m.schema_version, 3);
    let cond = m.conditioning.as_ref().expect("a conditional manifest");
    assert_eq!(m.class_names(), NAMES);
    let card = std::fs::read_to_string(bundle.path.join("README.md")).unwrap();
    assert!(card.contains("Conditional: one model for 3 products"), "{card}");
    for c in &cond.classes {
        assert!(card.contains(&format!("`{}`: threshold", c.name)), "{card}");
        assert_eq!(c.threshold.method, ThresholdMethod::Quantile, "{}", c.name);
        assert!(c.threshold.calibrated_on.as_ref().unwrap().contains("validation normals"), "{:?}", c.threshold);
        assert!(c.normalization.is_some() && c.metrics.contains_key("image_auroc"), "{}: {:?}", c.name, c.metrics);
    }
}

/// The exported graph scores each image as each class exactly as burn's networks do, on
/// tract and ONNX Runtime, and the class changes the score.
fn check_parity(run: &RunDir, bundle: &Bundle) {
    let cfg = TrainConfig::from_file(&run.config()).unwrap();
    let state = RunState::load(run).unwrap();
    let trained = load_trained(run, &cfg, state.channels).unwrap();
    let pre = Preprocessor::new(&bundle.manifest.input);
    let files = images();
    let x: Vec<f32> = files.iter().flat_map(|f| load_image(&pre, f).unwrap().concat()).collect();
    let [c, h, w] = pre.chw();
    let dims = [files.len(), c, h, w];
    let batch = ndarray::Array4::from_shape_vec((dims[0], c, h, w), x.clone()).unwrap();
    let engines: Vec<_> =
        [EngineChoice::Tract, EngineChoice::Ort].map(|k| engine::load(bundle, &engine_config(k)).unwrap()).into();
    let mut per_class = vec![];
    for k in 0..3 {
        let labels = vec![k; files.len()];
        let (want, _) = vigil_pipeline::export::forward::score(
            &trained,
            cfg.latent,
            cfg.gan.score,
            &bundle.manifest.score,
            &bundle.manifest.input,
            &x,
            dims,
            Some((&labels, 3)),
        );
        let classes: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
        for e in &engines {
            let got = e.run_classes(batch.view(), Some(&classes)).unwrap();
            for (g, w) in got.scores.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-4, "{:?} {} class {k}: exported {g}, burn {w}", cfg.model, e.name());
            }
        }
        per_class.push(want);
    }
    let moved = (0..files.len()).map(|i| (per_class[0][i] - per_class[2][i]).abs()).fold(0.0, f32::max);
    assert!(moved > 1e-4, "{:?}: the class does not change any score: {per_class:?}", cfg.model);
}

#[test]
fn a_conditional_dae_learns_each_class_and_exports_with_parity() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        model: ModelKind::Dae,
        epochs: 3,
        batch: 16,
        size: 32,
        latent: 16,
        width: 8,
        smoothing_sigma: 1.0,
        ..TrainConfig::default()
    };
    let run = train_conditional(cfg, &dir.path().join("run"));
    assert_eq!(TrainConfig::from_file(&run.config()).unwrap().classes, NAMES);
    let bundle = export_run(&run, &dir.path().join("bundle"));
    check_calibrated_per_class(&bundle);
    check_parity(&run, &bundle);
}

#[test]
fn a_conditional_wgan_trains_its_critic_and_encoder_on_labels_and_exports_with_parity() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        model: ModelKind::Wgan,
        epochs: 1,
        batch: 16,
        size: 32,
        latent: 16,
        width: 8,
        gan: GanConfig { n_critic: 2, encoder_epochs: Some(1), ..GanConfig::default() },
        smoothing_sigma: 1.0,
        ..TrainConfig::default()
    };
    let run = train_conditional(cfg, &dir.path().join("run"));
    let bundle = export_run(&run, &dir.path().join("bundle"));
    check_calibrated_per_class(&bundle);
    check_parity(&run, &bundle);
}

#[test]
fn conditional_padim_scores_each_class_as_padim_fitted_on_that_class_alone() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        model: ModelKind::Padim,
        size: 64,
        padim: PadimConfig { dims: 48 },
        smoothing_sigma: 1.0,
        ..TrainConfig::default()
    };
    let run = train_conditional(cfg.clone(), &dir.path().join("run"));
    let conditional = export_run(&run, &dir.path().join("bundle"));
    check_calibrated_per_class(&conditional);
    for i in 0..3 {
        assert!(dir.path().join(format!("bundle/class-{i}/weights.safetensors")).is_file());
    }
    let single = train_on(cfg, &products().join("crosswise"), &dir.path().join("single"));
    let single = export_run(&single, &dir.path().join("single-bundle"));
    // Same seed, same validation split: the class's threshold is the single model's.
    let class = &conditional.manifest.conditioning.as_ref().unwrap().classes[1];
    assert!(
        (class.threshold.value - single.manifest.threshold.value).abs()
            <= 1e-4 * single.manifest.threshold.value.abs().max(1.0)
    );
    let pre = Preprocessor::new(&single.manifest.input);
    let files = images();
    let x: Vec<f32> = files.iter().flat_map(|f| load_image(&pre, f).unwrap().concat()).collect();
    let [c, h, w] = pre.chw();
    let batch = ndarray::Array4::from_shape_vec((files.len(), c, h, w), x).unwrap();
    for kind in [EngineChoice::Tract, EngineChoice::Ort] {
        let want = engine::load(&single, &engine_config(kind)).unwrap().run(batch.view()).unwrap();
        let e = engine::load(&conditional, &engine_config(kind)).unwrap();
        let got = e.run_classes(batch.view(), Some(&vec![1; files.len()])).unwrap();
        for (g, w) in got.scores.iter().zip(&want.scores) {
            assert!((g - w).abs() <= 1e-4 * w.abs().max(1.0), "{kind:?}: conditional {g}, single {w}");
        }
        let other = e.run_classes(batch.view(), Some(&vec![2; files.len()])).unwrap();
        assert!(other.scores.iter().zip(&got.scores).any(|(a, b)| (a - b).abs() > 1e-3));
    }
    // Evaluation per class, by the class's own threshold.
    let engine = engine::load(&conditional, &engine_config(EngineChoice::Tract)).unwrap();
    let set = vigil_pipeline::data::sets::discover(&DataSource::classes_in(products()).unwrap(), 0.1, 0).unwrap();
    let (e, _) = vigil_pipeline::evaluate::scores::evaluate(&conditional, &engine, &set.test, &set.classes);
    assert_eq!(e.per_class.keys().collect::<Vec<_>>(), NAMES.iter().collect::<Vec<_>>());
    for (name, ce) in &e.per_class {
        assert!(ce.image_auroc.unwrap() >= 0.9, "{name}: {:?}", ce.image_auroc);
    }
    // Retraining one is refused by name rather than failing on a missing file.
    let err = vigil_pipeline::retrain::finetune::retrain(
        &vigil_pipeline::retrain::finetune::RetrainRequest {
            from: conditional.path.clone(),
            source: DataSource::Mvtec(products().join("dark")),
            out: dir.path().join("retrained"),
            run: None,
            epochs: None,
            device: DeviceChoice::Cpu,
            val_abnormal: None,
            engine: crate::common::engine_config(vigil_model::engine::EngineChoice::Tract),
        },
        &AtomicBool::new(false),
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("conditional"), "{err:#}");
}
