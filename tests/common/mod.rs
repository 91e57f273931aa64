//! Helpers shared by the test modules: the Python reference checker, engine runners for
//! bare graphs, reference bundles and test images.

#![allow(dead_code)]

pub mod mosquitto;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use ndarray::{ArrayD, IxDyn};
use vigil_model::bundle::Bundle;
use vigil_model::bundle::manifest::{
    ColorMode, Family, InputSpec, Manifest, OutputSpec, PixelError, Reduction, ScoreSource, ScoreSpec, Threshold,
    ThresholdMethod,
};
use vigil_model::engine::{EngineChoice, EngineConfig};
use vigil_model::onnx::graph;
use vigil_model::onnx::head::{MAP_OUTPUT, SCORE_OUTPUT, build_scoring_model};
use vigil_model::onnx::pb;
use vigil_model::onnx::reference::{ArchSpec, WeightRng, scoring_net};

/// The Python with ONNX's checker and reference evaluator (set up by `scripts/setup`).
pub fn python() -> PathBuf {
    let p = std::env::var_os("VIGIL_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    assert!(p.exists(), "the Python test environment is missing ({}): run scripts/test, which sets it up", p.display());
    p
}

/// The ONNX Runtime library the tests use.
pub fn ort_library() -> PathBuf {
    vigil_model::engine::ort::find_library(None)
        .unwrap_or_else(|e| panic!("{e}\nrun scripts/test, which installs the ONNX Runtime library into .venv"))
}

/// The folder of OpenVINO's C library in the `openvino` wheel scripts/setup installs into
/// .venv (or `VIGIL_OPENVINO_LIBRARY`).
pub fn openvino_library() -> PathBuf {
    if let Some(p) = std::env::var_os("VIGIL_OPENVINO_LIBRARY") {
        return p.into();
    }
    let libs = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/lib"))
        .ok()
        .and_then(|mut d| d.next()?.ok())
        .map(|e| e.path().join("site-packages/openvino/libs"));
    libs.filter(|d| d.is_dir()).unwrap_or_else(|| panic!("no OpenVINO in .venv: run scripts/test, which installs it"))
}

/// Engine settings for one engine, single-threaded so tests running side by side stay fast.
pub fn engine_config(kind: EngineChoice) -> EngineConfig {
    EngineConfig {
        kind,
        threads: Some(1),
        ort_library: (kind == EngineChoice::Ort).then(ort_library),
        openvino_library: (kind == EngineChoice::Openvino).then(openvino_library),
        ..EngineConfig::default()
    }
}

/// A random f32 array, uniform in [lo, hi).
pub fn random(shape: &[usize], lo: f32, hi: f32, seed: u64) -> ArrayD<f32> {
    let mut rng = WeightRng::new(seed);
    let n: usize = shape.iter().product();
    ArrayD::from_shape_vec(IxDyn(shape), (0..n).map(|_| rng.range(lo, hi)).collect()).unwrap()
}

/// Runs a graph in tract on concrete inputs; outputs in graph order with their names.
pub fn run_tract(model: &pb::ModelProto, inputs: &[(&str, ArrayD<f32>)]) -> Vec<(String, ArrayD<f32>)> {
    use tract_onnx::prelude::*;
    let mut m = tract_onnx::onnx().model_for_proto_model(model).expect("tract parses the model");
    for (i, (_, a)) in inputs.iter().enumerate() {
        m.set_input_fact(i, f32::fact(a.shape()).into()).unwrap();
    }
    let plan = m.into_optimized().expect("tract optimises the model").into_runnable().unwrap();
    let tensors: TVec<TValue> = inputs.iter().map(|(_, a)| a.clone().into_tensor().into()).collect();
    let out = plan.run(tensors).expect("tract runs the model");
    let names = output_names(model);
    names.into_iter().zip(out.iter()).map(|(n, t)| (n, t.to_plain_array_view::<f32>().unwrap().to_owned())).collect()
}

/// Runs a graph in ONNX Runtime on concrete inputs.
pub fn run_ort(model: &pb::ModelProto, inputs: &[(&str, ArrayD<f32>)]) -> Vec<(String, ArrayD<f32>)> {
    let env = vigil_model::engine::ort::environment(&ort_library()).expect("ONNX Runtime loads");
    let bytes = graph::encode(model);
    let mut session = ort::session::Session::builder(&env)
        .unwrap()
        .with_intra_threads(1)
        .unwrap()
        .commit_from_memory(&bytes)
        .expect("ONNX Runtime loads the model");
    let values: Vec<(String, ort::session::SessionInputValue)> = inputs
        .iter()
        .map(|(n, a)| (n.to_string(), ort::value::Tensor::from_array(a.clone()).unwrap().into()))
        .collect();
    let outputs = session.run(values).expect("ONNX Runtime runs the model");
    output_names(model)
        .into_iter()
        .map(|n| {
            let a = outputs[n.as_str()].try_extract_array::<f32>().unwrap().to_owned();
            (n, a)
        })
        .collect()
}

pub fn output_names(model: &pb::ModelProto) -> Vec<String> {
    model.graph.as_ref().unwrap().output.iter().map(|o| o.name.clone()).collect()
}

fn json_array(a: &ArrayD<f32>) -> serde_json::Value {
    serde_json::json!({ "shape": a.shape(), "data": a.iter().collect::<Vec<_>>() })
}

/// Largest absolute difference between two arrays of the same shape.
pub fn max_abs_diff(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape(), "shapes differ");
    a.iter().zip(b.iter()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// One graph, run on tract and ONNX Runtime, written for the Python reference check.
pub struct Case {
    pub name: String,
    pub model: pb::ModelProto,
    pub inputs: Vec<(&'static str, ArrayD<f32>)>,
}

/// Runs every case on tract and ONNX Runtime, then through ONNX's checker and reference
/// evaluator, and asserts: the checker passes, and each engine is within `tol` of the
/// reference on every output. Returns the worst difference per case.
pub fn check_against_reference(cases: &[Case], tol: f32) -> BTreeMap<String, f64> {
    // VIGIL_KEEP_CASES=1 keeps the written cases for a look with ONNX's own tools.
    let dir = tempfile::Builder::new()
        .prefix("vigil-onnx-cases")
        .disable_cleanup(std::env::var_os("VIGIL_KEEP_CASES").is_some())
        .tempdir()
        .unwrap();
    for case in cases {
        let tract = run_tract(&case.model, &case.inputs);
        let ort = run_ort(&case.model, &case.inputs);
        for ((name, t), (_, o)) in tract.iter().zip(&ort) {
            let d = max_abs_diff(t, o);
            assert!(d <= tol, "{}: output {name}: tract and ONNX Runtime differ by {d}", case.name);
        }
        let outputs = |v: &[(String, ArrayD<f32>)]| -> serde_json::Value {
            v.iter().map(|(n, a)| (n.clone(), json_array(a))).collect::<serde_json::Map<_, _>>().into()
        };
        let json = serde_json::json!({
            "inputs": case.inputs.iter().map(|(n, a)| (n.to_string(), json_array(a))).collect::<serde_json::Map<_, _>>(),
            "outputs": { "tract": outputs(&tract), "ort": outputs(&ort) },
        });
        std::fs::write(dir.path().join(format!("{}.onnx", case.name)), graph::encode(&case.model)).unwrap();
        std::fs::write(dir.path().join(format!("{}.json", case.name)), json.to_string()).unwrap();
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/onnx_reference.py");
    let out = Command::new(python()).arg(&script).arg(dir.path()).output().expect("python runs");
    assert!(out.status.success(), "the reference checker failed: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the checker prints JSON");
    let mut worst = BTreeMap::new();
    for case in cases {
        let r = &report["cases"][&case.name];
        assert_eq!(r["checker"], "ok", "{}: onnx.checker rejects the model: {}", case.name, r["checker"]);
        assert!(
            r.get("reference_error").is_none(),
            "{}: reference evaluator failed: {}",
            case.name,
            r["reference_error"]
        );
        assert!(r.get("shape_errors").is_none(), "{}: shapes differ: {}", case.name, r["shape_errors"]);
        let mut case_worst: f64 = 0.0;
        for engine in ["tract", "ort"] {
            let d = r["max_abs_diff"][engine].as_f64().unwrap_or_else(|| panic!("{}: no {engine} result", case.name));
            assert!(
                d <= tol as f64,
                "{}: {engine} differs from the ONNX reference by {d} (> {tol}): {}",
                case.name,
                r["per_output"]
            );
            case_worst = case_worst.max(d);
        }
        worst.insert(case.name.clone(), case_worst);
    }
    worst
}

/// The score settings of the reference exports: max of a map smoothed with sigma 4.
pub fn default_score_spec(source: ScoreSource) -> ScoreSpec {
    ScoreSpec {
        source,
        pixel_error: PixelError::Squared,
        smoothing_sigma: 4.0,
        reduction: Reduction::Max,
        feature_weight: (source == ScoreSource::EncoderFeatures).then_some(1.0),
    }
}

/// A manifest for a vigil-written model of `family`.
pub fn manifest(name: &str, family: Family, input: InputSpec, score: ScoreSpec, has_map: bool) -> Manifest {
    Manifest {
        schema_version: family.schema_version(),
        name: name.into(),
        version: 1,
        created: "2026-11-27T10:00:00Z".into(),
        family,
        description: None,
        input,
        outputs: OutputSpec { score: SCORE_OUTPUT.into(), anomaly_map: has_map.then(|| MAP_OUTPUT.into()) },
        score,
        threshold: Threshold {
            value: 0.05,
            method: ThresholdMethod::Manual,
            quantile: None,
            false_alarms_per_1000: None,
            recall: None,
            calibrated_on: None,
        },
        normalization: None,
        metrics: Default::default(),
        training: None,
        parent: None,
        conditioning: None,
    }
}

/// Writes a bundle of a reference architecture with random weights.
pub fn reference_bundle(dir: &Path, family: Family, color: ColorMode, size: usize) -> Bundle {
    let spec = ArchSpec { channels: color.channels(), size, ..ArchSpec::default() };
    let source = match family {
        Family::Gan | Family::Wgan => ScoreSource::Discriminator,
        _ => ScoreSource::Reconstruction,
    };
    let net = scoring_net(family, &spec, false, 7).unwrap();
    let input = InputSpec::unit_range("image", color, size, size);
    let score = default_score_spec(source);
    let model = build_scoring_model(&net, &input, &score, 0).unwrap();
    let m = manifest(
        &format!("reference-{}", family.as_str()),
        family,
        input,
        score,
        source == ScoreSource::Reconstruction,
    );
    Bundle::write(dir, &m, model, &[]).unwrap()
}

/// Writes a conditional reference DAE (gray, `size` pixels, random weights) whose classes are
/// `classes`, each with its manual threshold.
pub fn conditional_bundle(dir: &Path, size: usize, classes: &[(&str, f32)]) -> Bundle {
    use vigil_model::bundle::manifest::{ClassSpec, Conditioning};
    let spec = ArchSpec { channels: 1, size, classes: classes.len(), ..ArchSpec::default() };
    let net = scoring_net(Family::Dae, &spec, false, 7).unwrap();
    let input = InputSpec::unit_range("image", ColorMode::Gray, size, size);
    let score = default_score_spec(ScoreSource::Reconstruction);
    let model = build_scoring_model(&net, &input, &score, classes.len()).unwrap();
    let mut m = manifest("reference-conditional", Family::Dae, input, score, true);
    m.conditioning = Some(Conditioning {
        input: vigil_model::onnx::head::CLASS_INPUT.into(),
        classes: classes
            .iter()
            .map(|(name, t)| ClassSpec {
                name: name.to_string(),
                threshold: Threshold {
                    value: *t,
                    method: ThresholdMethod::Manual,
                    quantile: None,
                    false_alarms_per_1000: None,
                    recall: None,
                    calibrated_on: None,
                },
                normalization: None,
                metrics: Default::default(),
            })
            .collect(),
    });
    m.schema_version = m.required_schema_version();
    Bundle::write(dir, &m, model, &[]).unwrap()
}

/// Writes a PNG of random pixels (gray or RGB) and returns its path.
pub fn write_png(dir: &Path, name: &str, w: u32, h: u32, rgb: bool, seed: u64) -> PathBuf {
    let mut rng = WeightRng::new(seed);
    let path = dir.join(name);
    if rgb {
        image::RgbImage::from_fn(w, h, |_, _| image::Rgb([0, 0, 0].map(|_: u8| (rng.uniform() * 255.0) as u8)))
            .save(&path)
            .unwrap();
    } else {
        image::GrayImage::from_fn(w, h, |_, _| image::Luma([(rng.uniform() * 255.0) as u8])).save(&path).unwrap();
    }
    path
}

/// Waits up to `timeout` for `done`, failing the test with `what` after that.
pub fn wait_until(what: &str, timeout: std::time::Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !done() {
        assert!(std::time::Instant::now() < deadline, "waited {timeout:?} for {what}");
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
}
