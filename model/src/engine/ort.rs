//! The ONNX Runtime engine, loaded at run time from a shared library (nothing is downloaded
//! at build time), with the library searched for where installers put it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ndarray::ArrayView4;
use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;

use super::io::ModelIo;
use super::{Engine, EngineConfig, EngineError, Scored, map_to_nchw};
use crate::bundle::Bundle;

/// The library file name prefix that every ONNX Runtime release uses on Linux.
const LIB_PREFIX: &str = "libonnxruntime.so";

/// The process-wide ONNX Runtime environment. ONNX Runtime allows one library per process,
/// so the first successful load wins; a failed attempt is not remembered, so a corrected
/// path can be tried again.
static ENVIRONMENT: Mutex<Option<(PathBuf, Environment)>> = Mutex::new(None);

/// Finds the library: the configured path, else `ORT_DYLIB_PATH`, else beside vigil, the
/// usual system places and a `.venv` in the working directory (how the tests install it).
/// Returns every place looked at when nothing is found.
pub fn find_library(configured: Option<&Path>) -> Result<PathBuf, EngineError> {
    let mut dirs = super::library::beside_binary();
    for d in [
        "/usr/lib/vigil",
        "/usr/local/lib",
        "/usr/lib",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/opt/onnxruntime/lib",
    ] {
        dirs.push(PathBuf::from(d));
    }
    if let Ok(entries) = std::fs::read_dir(".venv/lib") {
        for e in entries.flatten() {
            dirs.push(e.path().join("site-packages/onnxruntime/capi"));
        }
    }
    let search = super::library::Search { prefix: LIB_PREFIX, key: "engine.ort_library", env: "ORT_DYLIB_PATH", dirs };
    search.find(configured).map_err(|searched| EngineError::OrtNotFound { searched })
}

/// The process-wide environment for `library`, loading the library on first use.
pub fn environment(library: &Path) -> Result<Environment, EngineError> {
    let mut guard = ENVIRONMENT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((loaded, env)) = guard.as_ref() {
        if loaded != library {
            tracing::warn!(
                "ONNX Runtime is already loaded from {}; one library per process, so {} is not used",
                loaded.display(),
                library.display()
            );
        }
        return Ok(env.clone());
    }
    let unusable = |reason: String| EngineError::OrtUnusable { path: library.to_path_buf(), reason };
    let env = ort::init_from(library)
        .map_err(|e| unusable(e.to_string()))?
        .with_name("vigil")
        .build()
        .map_err(|e| unusable(e.to_string()))?;
    *guard = Some((library.to_path_buf(), env.clone()));
    Ok(env)
}

/// An ONNX Runtime session. ONNX Runtime sessions need exclusive access to run, so calls
/// from several workers take turns; each call already uses `threads` cores.
pub struct OrtEngine {
    session: Mutex<Session>,
    score: String,
    map: Option<String>,
    input: String,
    class_input: Option<String>,
}

impl OrtEngine {
    /// Loads the library (once per process), then builds an optimised session.
    pub fn load(bundle: &Bundle, io: &ModelIo, config: &EngineConfig) -> Result<Self, EngineError> {
        let env = Self::environment(config)?;
        Self::load_in(&env, bundle, io, config)
    }

    /// The library loaded (once per process) and its environment: where a missing or unusable
    /// library is found out, before anything is done with the model.
    pub fn environment(config: &EngineConfig) -> Result<Environment, EngineError> {
        environment(&find_library(config.ort_library.as_deref())?)
    }

    /// Builds an optimised session of the bundle in `env`: from the bundle's bytes, or, when a
    /// server has released them ([`crate::engine::load_releasing`]), from its file, so that the
    /// model is not held twice while ONNX Runtime builds its own copy.
    pub fn load_in(
        env: &Environment,
        bundle: &Bundle,
        io: &ModelIo,
        config: &EngineConfig,
    ) -> Result<Self, EngineError> {
        let load_err =
            |e: ort::Error| EngineError::Load { engine: "ort", path: bundle.model_path.clone(), reason: e.to_string() };
        let threads = config.effective_threads();
        let mut builder = Session::builder(env)
            .map_err(load_err)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| load_err(e.into()))?
            .with_intra_threads(threads)
            .map_err(|e| load_err(e.into()))?
            .with_inter_threads(1)
            .map_err(|e| load_err(e.into()))?
            // Idle intra-op threads sleep instead of spinning: the decode workers need those
            // cores between engine calls. Measured here with `vigil bench` (640x480 JPEG,
            // reference dae, 2 threads): the daemon's throughput rose from 354-362 to 399-408
            // frames/s, at a cost of 0.2-0.3 ms on a lone frame's engine call.
            .with_intra_op_spinning(false)
            .map_err(|e| load_err(e.into()))?
            // ONNX Runtime otherwise keeps, per batch size seen, a plan of every intermediate
            // buffer it allocated: a burst of batches of 8 left 76 MiB more resident on the
            // default bundle than with this off, at no measured cost in time a frame.
            .with_memory_pattern(false)
            .map_err(|e| load_err(e.into()))?;
        let session = if bundle.model_bytes.is_empty() {
            builder.commit_from_file(&bundle.model_path)
        } else {
            builder.commit_from_memory(&bundle.model_bytes)
        }
        .map_err(load_err)?;
        Ok(OrtEngine {
            session: Mutex::new(session),
            score: io.score.clone(),
            map: io.map.clone(),
            input: io.input.clone(),
            class_input: io.class_input.as_ref().map(|(name, _)| name.clone()),
        })
    }
}

impl Engine for OrtEngine {
    fn name(&self) -> &'static str {
        "ort"
    }

    fn run(&self, batch: ArrayView4<'_, f32>, classes: Option<&[i64]>) -> Result<Scored, EngineError> {
        let run_err = |e: ort::Error| EngineError::Run { engine: "ort", reason: e.to_string() };
        let contiguous = batch.as_standard_layout();
        let input = TensorRef::from_array_view(contiguous.view()).map_err(run_err)?;
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let outputs = match (&self.class_input, classes) {
            (Some(name), Some(classes)) => {
                let classes = TensorRef::from_array_view(([classes.len()], classes)).map_err(run_err)?;
                session.run(ort::inputs![self.input.as_str() => input, name.as_str() => classes])
            }
            _ => session.run(ort::inputs![input]),
        }
        .map_err(run_err)?;
        let (_, scores) = outputs[self.score.as_str()].try_extract_tensor::<f32>().map_err(run_err)?;
        let scores = scores.to_vec();
        let maps = match &self.map {
            Some(name) => {
                let (shape, data) = outputs[name.as_str()].try_extract_tensor::<f32>().map_err(run_err)?;
                let dims: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
                Some(map_to_nchw(&dims, data.to_vec()).ok_or_else(|| EngineError::Run {
                    engine: "ort",
                    reason: format!("anomaly map has shape {dims:?}, expected [N, 1, H, W]"),
                })?)
            }
            None => None,
        };
        Ok(Scored { scores, maps })
    }
}
