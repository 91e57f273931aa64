//! Inference engines: load a bundle's model once, then score batches from many workers.
//!
//! Three engines run the same ONNX graph: ONNX Runtime (fast in float32 where its library is
//! installed), OpenVINO (fastest where the CPU computes in bfloat16 and its library is
//! installed) and tract (pure Rust, always built in). `auto` takes OpenVINO on such CPUs, else
//! ONNX Runtime, else tract, with one log line saying why. Before an engine is handed out, the model's
//! inputs and outputs are checked against the manifest and a test batch is run, so a model
//! that cannot serve is refused at load time, not on the first camera frame.

pub mod deconv;
pub mod graph;
pub mod io;
mod library;
pub mod openvino;
pub mod ort;
pub mod tract;
pub mod widen;

use std::path::PathBuf;
use std::sync::Arc;

use ndarray::{Array4, ArrayView4};
use serde::{Deserialize, Serialize};

use crate::bundle::Bundle;

/// Which engine to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EngineChoice {
    /// OpenVINO where the CPU computes in bfloat16 and OpenVINO's library loads (unless
    /// `precision = "f32"`), else ONNX Runtime when its library loads, else tract.
    #[default]
    Auto,
    /// ONNX Runtime only; an error when its library is missing.
    Ort,
    /// tract only.
    Tract,
    /// OpenVINO only (its C library, `libopenvino_c.so`); an error when it is missing.
    Openvino,
}

/// The arithmetic an engine may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// bfloat16 through OpenVINO where the CPU has it (AVX-512 BF16, AMX): image AUROC within
    /// 0.002 of float32 on the sets measured, single scores within a few per cent
    /// (docs/performance.md); float32 elsewhere.
    #[default]
    Auto,
    /// float32 everywhere (OpenVINO too).
    F32,
}

/// Engine settings (`[engine]` in the daemon config).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// `auto`, `ort`, `tract` or `openvino`.
    #[serde(default)]
    pub kind: EngineChoice,
    /// `auto` (bfloat16 through OpenVINO where the CPU computes in it) or `f32`.
    #[serde(default)]
    pub precision: Precision,
    /// Threads one inference may use; default: the machine's cores.
    #[serde(default)]
    pub threads: Option<usize>,
    /// The ONNX Runtime shared library (`libonnxruntime.so.1.31.1`, say); default: the
    /// `ORT_DYLIB_PATH` variable, then the usual system locations.
    #[serde(default)]
    pub ort_library: Option<PathBuf>,
    /// OpenVINO's C library (`libopenvino_c.so.2641` in the `openvino` wheel's
    /// `openvino/libs`, say); default: the `VIGIL_OPENVINO_LIBRARY` variable, then the usual
    /// system locations.
    #[serde(default)]
    pub openvino_library: Option<PathBuf>,
}

impl EngineConfig {
    /// The intra-op thread count actually used.
    pub fn effective_threads(&self) -> usize {
        self.threads.filter(|&t| t > 0).unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}

/// What an engine returns for a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// One score per image, higher = more anomalous.
    pub scores: Vec<f32>,
    /// `[N, 1, H, W]` anomaly maps, when the model has them.
    pub maps: Option<Array4<f32>>,
}

/// Engine failures. Each message names the model or library and what to do.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The engine could not parse or prepare the model.
    #[error("model {path}: {engine} cannot load it: {reason}; re-export the model, or check that the file is complete")]
    Load {
        /// Engine name.
        engine: &'static str,
        /// Model file.
        path: PathBuf,
        /// The engine's message.
        reason: String,
    },
    /// The model's input does not fit the manifest.
    #[error("model {path}: {problem}; make the manifest's `input` match the model (vigil inspect shows both)")]
    Input {
        /// Model file.
        path: PathBuf,
        /// What differs.
        problem: String,
    },
    /// An output named by the manifest is missing or misshapen.
    #[error("model {path}: {problem}; make the manifest's `outputs` match the model (vigil inspect shows both)")]
    Output {
        /// Model file.
        path: PathBuf,
        /// What differs.
        problem: String,
    },
    /// No ONNX Runtime library was found.
    #[error(
        "ONNX Runtime library not found (looked in: {searched}); install it with `pip install onnxruntime==1.31.1` and set ORT_DYLIB_PATH (or engine.ort_library) to its onnxruntime/capi/libonnxruntime.so.1.31.1, or use the tract engine"
    )]
    OrtNotFound {
        /// Every place looked at, in order.
        searched: String,
    },
    /// A library was found but cannot be used.
    #[error(
        "ONNX Runtime library {path}: {reason}; vigil needs ONNX Runtime 1.31 or newer (`pip install onnxruntime==1.31.1`), or use the tract engine"
    )]
    OrtUnusable {
        /// The library file.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// No OpenVINO library was found.
    #[error(
        "OpenVINO's C library not found (looked in: {searched}); install it with `pip install openvino==2026.4.1` and set VIGIL_OPENVINO_LIBRARY (or engine.openvino_library) to its openvino/libs/libopenvino_c.so.2641, or use another engine"
    )]
    OpenVinoNotFound {
        /// Every place looked at, in order.
        searched: String,
    },
    /// An OpenVINO library was found but cannot be used.
    #[error(
        "OpenVINO library {path}: {reason}; vigil needs OpenVINO 2025.0 or newer (`pip install openvino==2026.4.1`), or use another engine"
    )]
    OpenVinoUnusable {
        /// The library file.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// A conditional model was run without a valid class for every image.
    #[error("{0}")]
    Class(String),
    /// A batch does not have the model's input shape.
    #[error("batch of shape {got:?} does not fit the model input [N, {c}, {h}, {w}] with N at most {max_batch}")]
    BatchShape {
        /// The shape given.
        got: [usize; 4],
        /// Channels expected.
        c: usize,
        /// Height expected.
        h: usize,
        /// Width expected.
        w: usize,
        /// Largest batch the model takes.
        max_batch: usize,
    },
    /// Inference itself failed.
    #[error("{engine} inference failed: {reason}")]
    Run {
        /// Engine name.
        engine: &'static str,
        /// The engine's message.
        reason: String,
    },
}

/// A loaded model that scores batches; shared by workers (`&self`, `Send + Sync`).
pub trait Engine: Send + Sync {
    /// `ort`, `tract` or `openvino`.
    fn name(&self) -> &'static str;
    /// Runs the graph on `[N, C, H, W]` (and, for a conditional model, each image's class
    /// index) and returns what the manifest's outputs hold.
    fn run(&self, batch: ArrayView4<'_, f32>, classes: Option<&[i64]>) -> Result<Scored, EngineError>;
}

/// An engine plus the facts about its model that callers need.
pub struct LoadedEngine {
    engine: Box<dyn Engine>,
    /// Checked model input and outputs.
    pub io: io::ModelIo,
    /// `[C, H, W]` of one input image.
    pub chw: [usize; 3],
}

impl std::fmt::Debug for LoadedEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedEngine").field("engine", &self.engine.name()).field("io", &self.io).finish()
    }
}

impl LoadedEngine {
    /// `ort`, `tract` or `openvino`.
    pub fn name(&self) -> &'static str {
        self.engine.name()
    }

    /// The same model behind another engine built around this one: instrumentation, or a
    /// failing engine in the daemon's tests.
    pub fn wrap(mut self, wrap: impl FnOnce(Box<dyn Engine>) -> Box<dyn Engine>) -> Self {
        self.engine = wrap(self.engine);
        self
    }

    /// The largest batch one call takes.
    pub fn max_batch(&self) -> usize {
        self.io.max_batch
    }

    /// How many classes a conditional model knows (`None` for a model of one product).
    pub fn classes(&self) -> Option<usize> {
        self.io.class_input.as_ref().map(|(_, k)| *k)
    }

    /// Scores a batch of a model of one product after checking its shape.
    pub fn run(&self, batch: ArrayView4<'_, f32>) -> Result<Scored, EngineError> {
        self.run_classes(batch, None)
    }

    /// Scores a batch after checking its shape; a conditional model needs each image's
    /// class index, any other model none.
    pub fn run_classes(&self, batch: ArrayView4<'_, f32>, classes: Option<&[i64]>) -> Result<Scored, EngineError> {
        let s = batch.shape();
        let got = [s[0], s[1], s[2], s[3]];
        let [c, h, w] = self.chw;
        if got[0] == 0 || got[0] > self.io.max_batch || got[1..] != [c, h, w] {
            return Err(EngineError::BatchShape { got, c, h, w, max_batch: self.io.max_batch });
        }
        match (self.classes(), classes) {
            (None, None) => {}
            (None, Some(_)) => {
                return Err(EngineError::Class("this model is not conditional; score it without a class".into()));
            }
            (Some(k), None) => {
                return Err(EngineError::Class(format!(
                    "this model is conditional ({k} classes); give each image its class (`--class`, the camera's `class`)"
                )));
            }
            (Some(k), Some(cl)) => {
                if cl.len() != got[0] {
                    return Err(EngineError::Class(format!("{} class indices for {} images", cl.len(), got[0])));
                }
                if let Some(bad) = cl.iter().find(|&&i| i < 0 || i as usize >= k) {
                    return Err(EngineError::Class(format!("class index {bad} is outside the model's 0..{k}")));
                }
            }
        }
        let out = self.engine.run(batch, classes)?;
        if out.scores.len() != got[0] {
            return Err(EngineError::Run {
                engine: self.engine.name(),
                reason: format!("the score output holds {} values for {} images", out.scores.len(), got[0]),
            });
        }
        Ok(out)
    }
}

/// Loads the bundle's model on the configured engine, checks it and runs a test batch.
pub fn load(bundle: &Bundle, config: &EngineConfig) -> Result<LoadedEngine, EngineError> {
    load_with(&mut bundle.clone(), config, false)
}

/// As [`load`], for serving: the bundle's model bytes are released as soon as the engine
/// holds its own copy (for tract, before the plan is optimised), which takes the model's
/// size off both the load's memory peak and the daemon's resident memory.
pub fn load_releasing(bundle: &mut Bundle, config: &EngineConfig) -> Result<LoadedEngine, EngineError> {
    load_with(bundle, config, true)
}

fn load_with(bundle: &mut Bundle, config: &EngineConfig, release: bool) -> Result<LoadedEngine, EngineError> {
    let io = io::check_model(bundle)?;
    let tract = |bundle: &mut Bundle| -> Result<Box<dyn Engine>, EngineError> {
        let proto = bundle.model_proto().map_err(|e| EngineError::Load {
            engine: "tract",
            path: bundle.model_path.clone(),
            reason: e.to_string(),
        })?;
        if release {
            bundle.model_bytes = Arc::from(Vec::new());
        }
        Ok(Box::new(tract::TractEngine::load(bundle, proto, &io, config)?))
    };
    // Serving: ONNX Runtime and OpenVINO read the file themselves while vigil holds no copy
    // (the load's memory peak is the model's size lower), then the file is hashed again, so
    // the model served is the one checked and reported in alerts.
    let unchanged = |bundle: &Bundle, engine: &'static str| -> Result<(), EngineError> {
        let load_err = |reason: String| EngineError::Load { engine, path: bundle.model_path.clone(), reason };
        let now = crate::digest::sha256_file_hex(&bundle.model_path).map_err(|e| load_err(e.to_string()))?;
        if now != bundle.model_sha256 {
            return Err(load_err(format!(
                "the file changed while it was loaded (SHA-256 {now}, checked as {}); load the bundle again once it is written whole",
                bundle.model_sha256
            )));
        }
        Ok(())
    };
    let onnx_runtime = |bundle: &mut Bundle| -> Result<Box<dyn Engine>, EngineError> {
        let env = ort::OrtEngine::environment(config)?;
        if !release {
            return Ok(Box::new(ort::OrtEngine::load_in(&env, bundle, &io, config)?));
        }
        bundle.model_bytes = Arc::from(Vec::new());
        let engine = ort::OrtEngine::load_in(&env, bundle, &io, config)?;
        unchanged(bundle, "ort")?;
        Ok(Box::new(engine))
    };
    let openvino = |bundle: &mut Bundle| -> Result<Box<dyn Engine>, EngineError> {
        if release {
            bundle.model_bytes = Arc::from(Vec::new());
        }
        let engine = openvino::OpenVinoEngine::load(bundle, &io, config)?;
        if release {
            unchanged(bundle, "openvino")?;
        }
        tracing::info!("engine openvino: computing in {}", engine.precision);
        Ok(Box::new(engine))
    };
    let ort_or_tract = |bundle: &mut Bundle| -> Result<Box<dyn Engine>, EngineError> {
        match onnx_runtime(bundle) {
            Ok(e) => Ok(e),
            Err(e @ (EngineError::OrtNotFound { .. } | EngineError::OrtUnusable { .. })) => {
                tracing::info!("engine auto: using tract, because {e}");
                tract(bundle)
            }
            Err(e) => Err(e),
        }
    };
    let engine: Box<dyn Engine> = match config.kind {
        EngineChoice::Tract => tract(bundle)?,
        EngineChoice::Ort => onnx_runtime(bundle)?,
        EngineChoice::Openvino => openvino(bundle)?,
        // bfloat16 is where OpenVINO outruns ONNX Runtime; in float32 it does not
        // (docs/performance.md), so auto takes it only where the CPU computes in bfloat16.
        EngineChoice::Auto if config.precision == Precision::Auto && openvino::cpu_has_bf16() => {
            match openvino(bundle) {
                Ok(e) => e,
                Err(e @ (EngineError::OpenVinoNotFound { .. } | EngineError::OpenVinoUnusable { .. })) => {
                    tracing::info!("engine auto: this CPU computes in bfloat16 but OpenVINO is not used, because {e}");
                    ort_or_tract(bundle)?
                }
                Err(e) => return Err(e),
            }
        }
        EngineChoice::Auto => ort_or_tract(bundle)?,
    };
    if release {
        bundle.model_bytes = Arc::from(Vec::new());
    }
    let m = &bundle.manifest.input;
    let loaded = LoadedEngine { engine, io, chw: [m.channels, m.height, m.width] };
    smoke_test(bundle, &loaded)?;
    Ok(loaded)
}

/// Runs one blank image through the model and checks the output shapes, so a model that
/// loads but cannot serve is refused now.
fn smoke_test(bundle: &Bundle, engine: &LoadedEngine) -> Result<(), EngineError> {
    let [c, h, w] = engine.chw;
    let blank = Array4::<f32>::zeros((1, c, h, w));
    // A conditional model is tried as its first and its last class: a graph that knows fewer
    // classes than its manifest fails now, not on a camera's frame.
    let classes: Vec<Option<[i64; 1]>> = match engine.classes() {
        Some(k) => vec![Some([0]), Some([k as i64 - 1])],
        None => vec![None],
    };
    let mut out = None;
    for class in classes {
        out = Some(engine.run_classes(blank.view(), class.as_ref().map(|c| &c[..])).map_err(|e| match e {
            EngineError::Run { reason, .. } => EngineError::Output {
                path: bundle.model_path.clone(),
                problem: format!("a test image could not be scored ({reason})"),
            },
            other => other,
        })?);
    }
    let out = out.expect("at least one test run");
    if let Some(maps) = &out.maps
        && maps.shape() != [1, 1, h, w]
    {
        return Err(EngineError::Output {
            path: bundle.model_path.clone(),
            problem: format!("anomaly map has shape {:?}, expected [1, 1, {h}, {w}]", maps.shape()),
        });
    }
    Ok(())
}

/// Turns a map output of shape `[N, 1, H, W]` or `[N, H, W]` into `[N, 1, H, W]`.
pub(crate) fn map_to_nchw(shape: &[usize], data: Vec<f32>) -> Option<Array4<f32>> {
    let dims = match shape {
        [n, 1, h, w] => (*n, 1, *h, *w),
        [n, h, w] => (*n, 1, *h, *w),
        _ => return None,
    };
    Array4::from_shape_vec(dims, data).ok()
}
