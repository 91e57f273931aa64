//! Helpers shared by vigil-train's integration tests: the engines as `scripts/test` sets
//! them up, and a training run on a data set.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use vigil_model::engine::{EngineChoice, EngineConfig};
use vigil_pipeline::config::TrainConfig;
use vigil_pipeline::data::sets::DataSource;
use vigil_pipeline::device::DeviceChoice;
use vigil_pipeline::run::Outcome;
use vigil_pipeline::train::{RunDir, TrainRequest, train};

/// The ONNX Runtime library `scripts/setup` installs into the workspace's `.venv`.
pub fn ort_library() -> PathBuf {
    std::env::var_os("ORT_DYLIB_PATH").map_or_else(|| in_venv("onnxruntime/capi"), PathBuf::from)
}

/// Exports a run as version 1 into `out`, calibrating and evaluating on tract.
pub fn export_run(run: &RunDir, out: &Path) -> vigil_model::bundle::Bundle {
    let req = vigil_pipeline::export::bundle::ExportRequest {
        run: run.clone(),
        out: out.to_path_buf(),
        name: None,
        version: 1,
        parent: None,
        engine: engine_config(EngineChoice::Tract),
    };
    vigil_pipeline::export::bundle::export(&req).unwrap().bundle
}

/// The folder of OpenVINO's C library in the `openvino` wheel scripts/setup installs into
/// .venv (or `VIGIL_OPENVINO_LIBRARY`).
pub fn openvino_library() -> PathBuf {
    std::env::var_os("VIGIL_OPENVINO_LIBRARY").map_or_else(|| in_venv("openvino/libs"), PathBuf::from)
}

/// A folder of a package in the workspace's .venv (`onnxruntime/capi`).
fn in_venv(folder: &str) -> PathBuf {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/lib");
    std::fs::read_dir(&lib)
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| e.ok())
        .map(|e| e.path().join("site-packages").join(folder))
        .filter(|d| d.is_dir())
        .unwrap_or_else(|| panic!("no {folder} in {}: run scripts/test, which installs it", lib.display()))
}

/// One engine, one thread (the tests run side by side).
pub fn engine_config(kind: EngineChoice) -> EngineConfig {
    EngineConfig {
        kind,
        threads: Some(1),
        ort_library: (kind == EngineChoice::Ort).then(ort_library),
        openvino_library: (kind == EngineChoice::Openvino).then(openvino_library),
        ..EngineConfig::default()
    }
}

/// Trains `cfg` on the MVTec-layout `data` into `dir` on the CPU, to the end.
pub fn train_on(cfg: TrainConfig, data: &Path, dir: &Path) -> RunDir {
    train_source(cfg, DataSource::Mvtec(data.to_path_buf()), dir)
}

/// Trains `cfg` on `source` into `dir` on the CPU, to the end.
pub fn train_source(cfg: TrainConfig, source: DataSource, dir: &Path) -> RunDir {
    let run = RunDir(dir.to_path_buf());
    let req = TrainRequest {
        config: cfg,
        source: Some(source),
        run: run.clone(),
        device: DeviceChoice::Cpu,
        resume: false,
        init_weights: None,
        val_abnormal: None,
        train_abnormal: None,
    };
    assert_eq!(train(&req, &AtomicBool::new(false)).unwrap(), Outcome::Finished);
    run
}
