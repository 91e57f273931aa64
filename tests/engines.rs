//! The engines: tract, ONNX Runtime and OpenVINO agree on vigil bundles, batch correctly, and
//! refuse models and libraries that cannot serve with the documented error, never a panic.

use ndarray::{Array4, Axis, Ix4};
use vigil_model::bundle::manifest::{ColorMode, Family, InputSpec, Reduction, ScoreSource};
use vigil_model::bundle::{Bundle, MANIFEST_FILE};
use vigil_model::engine::{self, EngineChoice, EngineConfig, EngineError, Precision};
use vigil_model::onnx::graph::{Dim, GraphBuilder, OPSET};

use crate::common::{default_score_spec, engine_config, manifest, random, reference_bundle};

fn batch(n: usize, c: usize, size: usize, seed: u64) -> Array4<f32> {
    random(&[n, c, size, size], 0.0, 1.0, seed).into_dimensionality::<Ix4>().unwrap()
}

#[test]
fn tract_and_onnx_runtime_give_the_same_scores_and_maps() {
    for (family, color) in
        [(Family::Dae, ColorMode::Rgb), (Family::Vae, ColorMode::Gray), (Family::Wgan, ColorMode::Gray)]
    {
        let dir = tempfile::tempdir().unwrap();
        let bundle = reference_bundle(dir.path(), family, color, 64);
        let tract = engine::load(&bundle, &engine_config(EngineChoice::Tract)).unwrap();
        let ort = engine::load(&bundle, &engine_config(EngineChoice::Ort)).unwrap();
        assert_eq!((tract.name(), ort.name()), ("tract", "ort"));
        let x = batch(3, color.channels(), 64, 1);
        let (a, b) = (tract.run(x.view()).unwrap(), ort.run(x.view()).unwrap());
        assert_eq!(a.scores.len(), 3);
        for (s, t) in a.scores.iter().zip(&b.scores) {
            assert!((s - t).abs() <= 1e-5, "{family:?}: tract {s} vs ort {t}");
        }
        match (a.maps, b.maps) {
            (Some(ma), Some(mb)) => {
                assert_eq!(ma.shape(), [3, 1, 64, 64]);
                let d = ma.iter().zip(mb.iter()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
                assert!(d <= 1e-5, "{family:?}: maps differ by {d}");
            }
            (None, None) => assert_eq!(family, Family::Wgan, "only discriminator scoring has no map"),
            _ => panic!("{family:?}: one engine returned a map, the other none"),
        }
    }
}

#[test]
fn a_batch_scores_like_its_images_one_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = reference_bundle(dir.path(), Family::Dae, ColorMode::Rgb, 32);
    for kind in [EngineChoice::Tract, EngineChoice::Ort] {
        let e = engine::load(&bundle, &engine_config(kind)).unwrap();
        assert_eq!(e.max_batch(), engine::io::MAX_BATCH, "the writer leaves the batch free");
        let x = batch(4, 3, 32, 2);
        let together = e.run(x.view()).unwrap().scores;
        for (i, image) in x.axis_iter(Axis(0)).enumerate() {
            let alone = e.run(image.insert_axis(Axis(0))).unwrap().scores[0];
            assert!(
                (alone - together[i]).abs() <= 1e-5,
                "{kind:?}: image {i}: {alone} alone, {} in a batch",
                together[i]
            );
        }
        let err = e.run(batch(1, 3, 16, 3).view()).unwrap_err();
        assert!(matches!(err, EngineError::BatchShape { .. }), "{err}");
    }
}

fn edit_manifest(dir: &std::path::Path, edit: impl FnOnce(&mut serde_json::Value)) -> Bundle {
    let path = dir.join(MANIFEST_FILE);
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    Bundle::load(dir).unwrap()
}

#[test]
fn a_model_that_does_not_fit_its_manifest_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    reference_bundle(dir.path(), Family::Dae, ColorMode::Rgb, 32);
    let wrong_size = edit_manifest(dir.path(), |v| {
        v["input"]["height"] = 64.into();
        v["input"]["width"] = 64.into();
    });
    for kind in [EngineChoice::Tract, EngineChoice::Ort] {
        let err = engine::load(&wrong_size, &engine_config(kind)).unwrap_err();
        assert!(matches!(err, EngineError::Input { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("input `image` is [N, 3, 32, 32] but the manifest says height = 64"), "{msg}");
        assert!(msg.contains("vigil inspect"), "{msg}");
    }
    let wrong_input = edit_manifest(dir.path(), |v| {
        v["input"]["height"] = 32.into();
        v["input"]["width"] = 32.into();
        v["input"]["name"] = "input".into();
    });
    let err = engine::load(&wrong_input, &engine_config(EngineChoice::Tract)).unwrap_err();
    assert!(err.to_string().contains("names input `input` but the model's inputs are [\"image\"]"), "{err}");
    let missing_output = edit_manifest(dir.path(), |v| {
        v["input"]["name"] = "image".into();
        v["outputs"]["anomaly_map"] = "heatmap".into();
    });
    for kind in [EngineChoice::Tract, EngineChoice::Ort] {
        let err = engine::load(&missing_output, &engine_config(kind)).unwrap_err();
        assert!(matches!(err, EngineError::Output { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("outputs.anomaly_map is `heatmap` but the model's outputs are [\"anomaly_map\", \"score\"]"),
            "{err}"
        );
    }
}

#[test]
fn a_missing_onnx_runtime_library_is_an_error_for_ort_and_a_fallback_for_auto() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = reference_bundle(dir.path(), Family::Dae, ColorMode::Gray, 32);
    let absent = EngineConfig {
        kind: EngineChoice::Ort,
        threads: Some(1),
        ort_library: Some("/nonexistent/libonnxruntime.so.1.31.1".into()),
        ..EngineConfig::default()
    };
    let err = engine::load(&bundle, &absent).unwrap_err();
    assert!(matches!(err, EngineError::OrtNotFound { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("/nonexistent/libonnxruntime.so.1.31.1 from engine.ort_library, which does not exist"),
        "{msg}"
    );
    assert!(msg.contains("pip install onnxruntime==1.31.1") && msg.contains("ORT_DYLIB_PATH"), "{msg}");
    let auto = engine::load(&bundle, &EngineConfig { kind: EngineChoice::Auto, ..absent }).unwrap();
    assert_eq!(auto.name(), "tract");
}

#[test]
fn an_external_model_that_scores_by_itself_is_served_from_a_hand_written_manifest() {
    // Shaped like an anomalib export: `pred_score` [N, 1] and `anomaly_map` [N, 1, H, W].
    let mut g = GraphBuilder::new("anomalib", OPSET);
    let n = Dim::Symbol("batch".into());
    let x = g.input("input", &[n.clone(), Dim::Fixed(3), Dim::Fixed(32), Dim::Fixed(32)]);
    let map = g.reduce_mean(&x, &[1], true);
    let score = g.reduce_max(&map, &[2, 3], false);
    let score = g.reshape(&score, &[-1, 1]);
    g.output(&map, "anomaly_map", &[n.clone(), Dim::Fixed(1), Dim::Fixed(32), Dim::Fixed(32)]);
    g.output(&score, "pred_score", &[n, Dim::Fixed(1)]);
    let dir = tempfile::tempdir().unwrap();
    let mut m = manifest(
        "anomalib-patchcore",
        Family::External,
        InputSpec::unit_range("input", ColorMode::Rgb, 32, 32),
        vigil_model::bundle::manifest::ScoreSpec {
            reduction: Reduction::Max,
            ..default_score_spec(ScoreSource::External)
        },
        true,
    );
    m.outputs.score = "pred_score".into();
    let bundle = Bundle::write(dir.path(), &m, g.finish(), &[]).unwrap();
    let x = batch(2, 3, 32, 5);
    for kind in [EngineChoice::Tract, EngineChoice::Ort] {
        let e = engine::load(&bundle, &engine_config(kind)).unwrap();
        let out = e.run(x.view()).unwrap();
        assert_eq!(out.scores.len(), 2, "{kind:?}: [N, 1] scores are flattened");
        let want = x.index_axis(Axis(0), 1).mean_axis(Axis(0)).unwrap().iter().cloned().fold(f32::MIN, f32::max);
        assert!((out.scores[1] - want).abs() < 1e-5, "{kind:?}: {} vs {want}", out.scores[1]);
    }
}

#[test]
fn the_reference_dae_costs_0_22_g_multiply_adds_per_frame() {
    // The figure of shared/REFERENCE-ARCHITECTURES.md, which GFLOP/s in `vigil bench` use.
    let dir = tempfile::tempdir().unwrap();
    let b = reference_bundle(dir.path(), Family::Dae, ColorMode::Rgb, 128);
    let macs = vigil_model::engine::tract::multiply_adds(&b).unwrap();
    // Encoder and decoder 0.218 G, plus the score head (error map, smoothing, reductions).
    assert!((0.218e9..0.225e9).contains(&macs), "{macs}");
}

#[test]
fn tract_serves_a_fixed_batch_model_a_smaller_batch_padded_and_a_free_batch_one_image_by_image() {
    use vigil_model::onnx::pb::{tensor_shape_proto::dimension, type_proto};
    let dir = tempfile::tempdir().unwrap();
    let free = reference_bundle(&dir.path().join("free"), Family::Dae, ColorMode::Gray, 32);
    // The same graph with its batch fixed at 3.
    let mut proto = free.model_proto().unwrap();
    let graph = proto.graph.as_mut().unwrap();
    for value in graph.input.iter_mut().chain(graph.output.iter_mut()) {
        if let Some(type_proto::Value::TensorType(t)) = value.r#type.as_mut().and_then(|t| t.value.as_mut())
            && let Some(first) = t.shape.as_mut().and_then(|s| s.dim.first_mut())
        {
            first.value = Some(dimension::Value::DimValue(3));
        }
    }
    let fixed = Bundle::write(dir.path().join("fixed"), &free.manifest, proto, &[]).unwrap();
    let (free, fixed) = (
        engine::load(&free, &engine_config(EngineChoice::Tract)).unwrap(),
        engine::load(&fixed, &engine_config(EngineChoice::Tract)).unwrap(),
    );
    assert_eq!(fixed.max_batch(), 3);
    let x = batch(3, 1, 32, 9);
    let all = free.run(x.view()).unwrap();
    for n in [1, 2, 3] {
        let part = fixed.run(x.slice_axis(Axis(0), (0..n).into())).unwrap();
        assert_eq!(part.scores.len(), n);
        assert_eq!(part.maps.as_ref().unwrap().shape(), &[n, 1, 32, 32]);
        for (a, b) in part.scores.iter().zip(&all.scores) {
            assert!((a - b).abs() <= 1e-5, "batch of {n}: {a} vs {b}");
        }
    }
    assert_eq!(all.maps.unwrap().shape(), &[3, 1, 32, 32]);
}

#[test]
fn a_model_loaded_for_serving_releases_the_file_bytes_and_still_scores_as_loaded_plainly() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = reference_bundle(dir.path(), Family::Dae, ColorMode::Gray, 32);
    let plain = engine::load(&bundle, &engine_config(EngineChoice::Tract)).unwrap();
    assert!(!bundle.model_bytes.is_empty(), "a plain load leaves the bundle as it was");
    for kind in [EngineChoice::Tract, EngineChoice::Ort, EngineChoice::Openvino] {
        // OpenVINO in float32: the comparison is with a float32 engine.
        let config = EngineConfig { precision: Precision::F32, ..engine_config(kind) };
        let model = vigil::scoring::Model::load(dir.path(), &config).unwrap();
        assert!(model.bundle.model_bytes.is_empty(), "{kind:?}: the file's bytes stay resident");
        let x = batch(2, 1, 32, 4);
        let (a, b) = (model.engine.run(x.view()).unwrap(), plain.run(x.view()).unwrap());
        for (s, t) in a.scores.iter().zip(&b.scores) {
            assert!((s - t).abs() <= 1e-5, "{kind:?}: {s} vs {t}");
        }
    }
}

#[test]
fn openvino_in_float32_scores_as_onnx_runtime_does_one_image_at_a_time_and_per_class() {
    for (family, color) in
        [(Family::Dae, ColorMode::Rgb), (Family::Vae, ColorMode::Gray), (Family::Wgan, ColorMode::Gray)]
    {
        let dir = tempfile::tempdir().unwrap();
        let bundle = reference_bundle(dir.path(), family, color, 64);
        let ort = engine::load(&bundle, &engine_config(EngineChoice::Ort)).unwrap();
        let config = EngineConfig { precision: Precision::F32, ..engine_config(EngineChoice::Openvino) };
        let ov = engine::load(&bundle, &config).unwrap();
        assert_eq!(ov.name(), "openvino");
        let x = batch(3, color.channels(), 64, 2);
        let (a, b) = (ort.run(x.view()).unwrap(), ov.run(x.view()).unwrap());
        assert_eq!(b.scores.len(), 3);
        for (s, t) in a.scores.iter().zip(&b.scores) {
            assert!((s - t).abs() <= 1e-4 * s.abs().max(1.0), "{family:?}: ort {s} vs openvino {t}");
        }
        match (a.maps, b.maps) {
            (Some(ma), Some(mb)) => {
                assert_eq!(mb.shape(), [3, 1, 64, 64]);
                let d = ma.iter().zip(mb.iter()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
                assert!(d <= 1e-4, "{family:?}: maps differ by {d}");
            }
            (None, None) => assert_eq!(family, Family::Wgan),
            _ => panic!("{family:?}: one engine returned a map, the other none"),
        }
        // A batch is its images one at a time.
        let one = ov.run(x.slice(ndarray::s![1..2, .., .., ..])).unwrap();
        assert!((one.scores[0] - b.scores[1]).abs() <= 1e-6 * b.scores[1].abs().max(1.0));
    }
}

#[test]
fn a_missing_openvino_library_is_an_error_for_openvino_and_auto_goes_on_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = reference_bundle(dir.path(), Family::Dae, ColorMode::Gray, 32);
    let absent = EngineConfig {
        kind: EngineChoice::Openvino,
        threads: Some(1),
        openvino_library: Some("/nonexistent/libopenvino_c.so".into()),
        ..EngineConfig::default()
    };
    let err = engine::load(&bundle, &absent).unwrap_err();
    assert!(matches!(err, EngineError::OpenVinoNotFound { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("/nonexistent/libopenvino_c.so from engine.openvino_library, which does not exist"), "{msg}");
    assert!(msg.contains("pip install openvino==2026.4.1") && msg.contains("VIGIL_OPENVINO_LIBRARY"), "{msg}");
    // Auto on any CPU: without OpenVINO it serves with ONNX Runtime, as before.
    let auto = EngineConfig { kind: EngineChoice::Auto, ..absent.clone() };
    let auto =
        engine::load(&bundle, &EngineConfig { ort_library: Some(crate::common::ort_library()), ..auto }).unwrap();
    assert_eq!(auto.name(), "ort");
}

#[test]
fn auto_takes_openvino_in_bfloat16_only_where_the_cpu_computes_in_it_and_f32_forces_it_off() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = reference_bundle(dir.path(), Family::Dae, ColorMode::Gray, 32);
    let both = EngineConfig {
        kind: EngineChoice::Auto,
        threads: Some(1),
        ort_library: Some(crate::common::ort_library()),
        openvino_library: Some(crate::common::openvino_library()),
        ..EngineConfig::default()
    };
    let auto = engine::load(&bundle, &both).unwrap();
    let bf16 = vigil_model::engine::openvino::cpu_has_bf16();
    assert_eq!(auto.name(), if bf16 { "openvino" } else { "ort" }, "this CPU has bfloat16: {bf16}");
    let f32 = engine::load(&bundle, &EngineConfig { precision: Precision::F32, ..both }).unwrap();
    assert_eq!(f32.name(), "ort");
}
