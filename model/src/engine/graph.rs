//! Running an arbitrary one-input ONNX graph (not a bundle) on either engine, returning every
//! output: what training uses to extract backbone features, and the tests to compare engines.

use std::sync::Mutex;

use ndarray::{ArrayD, ArrayView4, IxDyn};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;
use tract_onnx::prelude::multithread::{Executor, multithread_tract_scope};
use tract_onnx::prelude::*;

use super::{EngineChoice, EngineConfig, EngineError};

enum Runner {
    Ort(Mutex<Session>),
    Tract { plan: Arc<TypedSimplePlan>, executor: Executor },
}

/// A graph prepared for inputs of one shape, on ONNX Runtime or tract.
pub struct GraphRunner {
    runner: Runner,
    outputs: Vec<String>,
}

impl std::fmt::Debug for GraphRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphRunner").field("engine", &self.name()).field("outputs", &self.outputs).finish()
    }
}

impl GraphRunner {
    /// Prepares `model` (encoded ONNX) for input batches of shape `input` on the configured
    /// engine (`auto`: ONNX Runtime when its library loads, else tract).
    pub fn load(model: &[u8], input: [usize; 4], config: &EngineConfig) -> Result<Self, EngineError> {
        let load_err = |engine: &'static str, reason: String| EngineError::Load {
            engine,
            path: "(graph in memory)".into(),
            reason,
        };
        let proto = crate::onnx::graph::decode(model).map_err(|e| load_err("tract", e.to_string()))?;
        let outputs: Vec<String> = proto.graph.iter().flat_map(|g| g.output.iter().map(|o| o.name.clone())).collect();
        let threads = config.effective_threads();
        let ort = || -> Result<Runner, EngineError> {
            let library = super::ort::find_library(config.ort_library.as_deref())?;
            let env = super::ort::environment(&library)?;
            let err = |e: ort::Error| load_err("ort", e.to_string());
            let session = Session::builder(&env)
                .map_err(err)?
                .with_optimization_level(GraphOptimizationLevel::Level3)
                .map_err(|e| err(e.into()))?
                .with_intra_threads(threads)
                .map_err(|e| err(e.into()))?
                .commit_from_memory(model)
                .map_err(err)?;
            Ok(Runner::Ort(Mutex::new(session)))
        };
        let tract = || -> Result<Runner, EngineError> {
            let err = |e: anyhow::Error| load_err("tract", format!("{e:#}"));
            let mut m = tract_onnx::onnx().model_for_proto_model(&proto).map_err(err)?;
            m.set_input_fact(0, f32::fact(input).into()).map_err(err)?;
            let plan = m.into_optimized().and_then(|m| m.into_runnable()).map_err(err)?;
            let executor = if threads > 1 { Executor::multithread(threads) } else { Executor::SingleThread };
            Ok(Runner::Tract { plan, executor })
        };
        let runner = match config.kind {
            EngineChoice::Ort => ort()?,
            EngineChoice::Tract => tract()?,
            // Training extracts features in float32: OpenVINO's bfloat16 is for serving.
            EngineChoice::Auto | EngineChoice::Openvino => match ort() {
                Ok(r) => r,
                Err(EngineError::OrtNotFound { .. } | EngineError::OrtUnusable { .. }) => tract()?,
                Err(e) => return Err(e),
            },
        };
        Ok(GraphRunner { runner, outputs })
    }

    /// `ort` or `tract`.
    pub fn name(&self) -> &'static str {
        match self.runner {
            Runner::Ort(_) => "ort",
            Runner::Tract { .. } => "tract",
        }
    }

    /// The graph's output names, in order.
    pub fn outputs(&self) -> &[String] {
        &self.outputs
    }

    /// Runs a batch (of the shape given at load for tract) and returns every output in order.
    pub fn run(&self, batch: ArrayView4<'_, f32>) -> Result<Vec<ArrayD<f32>>, EngineError> {
        match &self.runner {
            Runner::Ort(session) => {
                let err = |e: ort::Error| EngineError::Run { engine: "ort", reason: e.to_string() };
                let contiguous = batch.as_standard_layout();
                let input = TensorRef::from_array_view(contiguous.view()).map_err(err)?;
                let mut session = session.lock().unwrap_or_else(|p| p.into_inner());
                let out = session.run(ort::inputs![input]).map_err(err)?;
                self.outputs
                    .iter()
                    .map(|name| {
                        let (shape, data) = out[name.as_str()].try_extract_tensor::<f32>().map_err(err)?;
                        let dims: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
                        ArrayD::from_shape_vec(IxDyn(&dims), data.to_vec())
                            .map_err(|e| EngineError::Run { engine: "ort", reason: e.to_string() })
                    })
                    .collect()
            }
            Runner::Tract { plan, executor } => {
                let err = |e: anyhow::Error| EngineError::Run { engine: "tract", reason: format!("{e:#}") };
                let input: Tensor = batch.to_owned().into_tensor();
                let run = || multithread_tract_scope(executor.clone(), || plan.run(tvec!(input.into())));
                let out = match executor {
                    Executor::MultiThread(pool) => pool.install(run),
                    _ => run(),
                }
                .map_err(err)?;
                out.iter().map(|t| Ok(t.to_plain_array_view::<f32>().map_err(err)?.to_owned())).collect()
            }
        }
    }
}
