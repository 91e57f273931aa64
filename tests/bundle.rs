//! The model bundle: round trips, and every manifest mistake named with its file, key and fix.

use std::path::Path;

use vigil_model::bundle::manifest::{ColorMode, Family};
use vigil_model::bundle::{Bundle, BundleError, MANIFEST_FILE, MODEL_FILE};

use crate::common::reference_bundle;

#[test]
fn a_written_bundle_loads_back_from_its_folder_and_from_the_lone_onnx_file() {
    let dir = tempfile::tempdir().unwrap();
    let written = reference_bundle(dir.path(), Family::Dae, ColorMode::Rgb, 32);
    let from_dir = Bundle::load(dir.path()).unwrap();
    assert_eq!(from_dir.manifest, written.manifest);
    assert_eq!(from_dir.model_sha256.len(), 64);
    // The manifest travels inside the ONNX file too.
    let lone = tempfile::tempdir().unwrap();
    let onnx = lone.path().join("surface.onnx");
    std::fs::copy(dir.path().join(MODEL_FILE), &onnx).unwrap();
    let from_file = Bundle::load(&onnx).unwrap();
    assert_eq!(from_file.manifest, written.manifest);
    assert_eq!(from_file.model_sha256, from_dir.model_sha256);
}

#[test]
fn manifest_json_wins_over_the_embedded_copy() {
    let dir = tempfile::tempdir().unwrap();
    reference_bundle(dir.path(), Family::Dae, ColorMode::Gray, 32);
    let path = dir.path().join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("\"value\": 0.05", "\"value\": 0.25")).unwrap();
    assert_eq!(Bundle::load(dir.path()).unwrap().manifest.threshold.value, 0.25);
}

/// Writes a reference bundle, edits its manifest JSON with `edit`, and returns the error.
fn load_with(edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let dir = tempfile::tempdir().unwrap();
    reference_bundle(dir.path(), Family::Dae, ColorMode::Rgb, 32);
    let path = dir.path().join(MANIFEST_FILE);
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    let err = Bundle::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains(&path.display().to_string()), "the error names the file: {err}");
    err
}

/// A named edit of the manifest JSON and the phrases its error must contain.
type Mistake = (&'static str, Box<dyn FnOnce(&mut serde_json::Value)>, &'static [&'static str]);

#[test]
fn every_manifest_mistake_is_named_with_its_key_and_fix() {
    let cases: Vec<Mistake> = vec![
        (
            "misspelt key",
            Box::new(|v| {
                let t = v["threshold"].take();
                v.as_object_mut().unwrap().remove("threshold");
                v["thresold"] = t;
            }),
            &["unknown field `thresold`", "remove or correct that key"],
        ),
        (
            "misspelt nested key",
            Box::new(|v| {
                v["input"]["colour"] = "rgb".into();
            }),
            &["unknown field `colour`"],
        ),
        (
            "newer schema",
            Box::new(|v| v["schema_version"] = 6.into()),
            &["schema_version 6 is newer than this vigil reads (5)", "upgrade vigil"],
        ),
        (
            "no schema",
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("schema_version");
            }),
            &["missing `schema_version`", "add \"schema_version\": 5"],
        ),
        (
            "missing key",
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("outputs");
            }),
            &["missing field `outputs`", "add that key"],
        ),
        ("bad family", Box::new(|v| v["family"] = "autoencoder".into()), &["unknown variant `autoencoder`"]),
        (
            "channels against color",
            Box::new(|v| v["input"]["channels"] = 1.into()),
            &["`input.channels`", "input.color Rgb has 3 channel(s)"],
        ),
        (
            "mean length",
            Box::new(|v| v["input"]["mean"] = serde_json::json!([0.5])),
            &["`input.mean`", "expected one per channel (3)"],
        ),
        (
            "zero std",
            Box::new(|v| v["input"]["std"] = serde_json::json!([1.0, 0.0, 1.0])),
            &["`input.std`", "must be positive"],
        ),
        (
            "top-k too large",
            Box::new(|v| v["score"]["reduction"] = serde_json::json!({"method": "top_k_mean", "k": 5000})),
            &["`score.reduction.k`", "expected 1..=1024"],
        ),
        (
            "SSIM on an input smaller than its window",
            Box::new(|v| {
                v["score"]["pixel_error"] = "ssim".into();
                v["input"]["height"] = 4.into();
            }),
            &["`score.pixel_error`", "at least 6 pixels a side", "use \"squared\""],
        ),
        (
            "unknown pixel error",
            Box::new(|v| v["score"]["pixel_error"] = "ms_ssim".into()),
            &["unknown variant `ms_ssim`"],
        ),
        ("bad name", Box::new(|v| v["name"] = "../evil".into()), &["`name`", "only letters, digits"]),
        (
            "bad quantile",
            Box::new(|v| v["threshold"]["quantile"] = 1.5.into()),
            &["`threshold.quantile`", "expected 0..=1"],
        ),
        ("not json", Box::new(|v| *v = serde_json::Value::String("{".into())), &["missing `schema_version`"]),
    ];
    for (what, edit, expected) in cases {
        let err = load_with(edit);
        for e in expected {
            assert!(err.contains(e), "{what}: expected `{e}` in: {err}");
        }
    }
}

#[test]
fn broken_json_is_reported_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    reference_bundle(dir.path(), Family::Dae, ColorMode::Rgb, 32);
    std::fs::write(dir.path().join(MANIFEST_FILE), "{\"schema_version\": 1,").unwrap();
    let err = Bundle::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("not valid JSON") && err.contains("line 1"), "{err}");
}

#[test]
fn missing_and_broken_bundle_files_are_named() {
    let err = Bundle::load(Path::new("/nonexistent/bundle")).unwrap_err();
    assert!(matches!(err, BundleError::NotFound(_)), "{err}");
    assert!(err.to_string().contains("/nonexistent/bundle: not found"));

    let empty = tempfile::tempdir().unwrap();
    let err = Bundle::load(empty.path()).unwrap_err();
    assert!(matches!(err, BundleError::MissingModel(_)), "{err}");
    assert!(err.to_string().contains("no model.onnx in this folder"));

    let dir = tempfile::tempdir().unwrap();
    reference_bundle(dir.path(), Family::Dae, ColorMode::Rgb, 32);
    let model = dir.path().join(MODEL_FILE);
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() / 3]).unwrap();
    let err = Bundle::load(dir.path()).unwrap_err();
    assert!(matches!(err, BundleError::BadOnnx { .. }), "{err}");
    assert!(err.to_string().contains("not a valid ONNX file"), "{err}");

    // A lone ONNX file that vigil did not write has no manifest.
    let lone = dir.path().join("foreign.onnx");
    let mut proto = vigil_model::onnx::graph::decode(&bytes).unwrap();
    proto.metadata_props.clear();
    std::fs::write(&lone, vigil_model::onnx::graph::encode(&proto)).unwrap();
    let err = Bundle::load(&lone).unwrap_err();
    assert!(matches!(err, BundleError::NoManifest(_)), "{err}");
    assert!(err.to_string().contains("write a manifest.json"), "{err}");
}

#[test]
fn a_model_that_keeps_its_weights_in_an_external_file_is_refused() {
    use vigil_model::onnx::pb;
    let dir = tempfile::tempdir().unwrap();
    let bundle = reference_bundle(dir.path(), Family::Dae, ColorMode::Gray, 32);
    let mut model = bundle.model_proto().unwrap();
    let graph = model.graph.as_mut().unwrap();
    let first = &mut graph.initializer[0];
    let name = first.name.clone();
    // What onnx.save(..., save_as_external_data=True) writes, pointed at a file the box holds.
    first.raw_data.clear();
    first.float_data.clear();
    first.data_location = Some(pb::tensor_proto::DataLocation::External as i32);
    first.external_data =
        vec![pb::StringStringEntryProto { key: "location".into(), value: "../../etc/vigil/http-token".into() }];
    // Written as a bundle is; the load at its end refuses it.
    let e = Bundle::write(dir.path(), &bundle.manifest, model, &[]).unwrap_err();
    assert!(matches!(e, BundleError::ExternalData { .. }), "{e}");
    let text = e.to_string();
    assert!(text.contains(&format!("tensor `{name}`")) && text.contains("export it again"), "{text}");
}
