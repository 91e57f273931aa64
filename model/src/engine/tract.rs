//! The tract engine: pure Rust, always available, optimised once at load.

use ndarray::{ArrayView4, Axis};
use tract_onnx::prelude::multithread::{Executor, multithread_tract_scope};
use tract_onnx::prelude::*;

use super::io::ModelIo;
use super::{Engine, EngineConfig, EngineError, Scored, map_to_nchw};
use crate::bundle::Bundle;

/// A model optimised by tract; `run` may be called from many threads at once.
pub struct TractEngine {
    plan: Arc<TypedSimplePlan>,
    /// Images per plan run: 1 for a model with a free batch dimension (a batch is run image
    /// by image), else the model's fixed batch.
    plan_batch: usize,
    executor: Executor,
    has_map: bool,
    conditional: bool,
}

impl TractEngine {
    /// Parses, types and optimises the model for `[N, C, H, W]` input.
    pub fn load(
        bundle: &Bundle,
        proto: tract_onnx::pb::ModelProto,
        io: &ModelIo,
        config: &EngineConfig,
    ) -> Result<Self, EngineError> {
        let load_err = |e: anyhow::Error| EngineError::Load {
            engine: "tract",
            path: bundle.model_path.clone(),
            reason: format!("{e:#}"),
        };
        let mut proto = proto;
        super::widen::widen_half_constants(&mut proto);
        let rewritten = super::deconv::rewrite_for_tract(&mut proto);
        if rewritten > 0 {
            tracing::debug!(rewritten, "transposed convolutions run as phase convolutions on tract");
        }
        let onnx = tract_onnx::onnx();
        let mut model = onnx.model_for_proto_model(&proto).map_err(load_err)?;
        // tract holds its own copy of the weights now; the parsed file's would only raise the
        // load's memory peak (the model's size again) while the plan is optimised.
        drop(proto);
        let m = &bundle.manifest.input;
        // A plan optimised for concrete shapes runs the reference model 2.8x faster than one
        // with a symbolic batch (13.3 against 4.7 ms a frame, measured here): tract picks its
        // convolution kernels and packs the weights only when the shapes are known. Batches
        // of a free-batch model are therefore run image by image through a batch-1 plan;
        // tract loses with larger batches on this model (6.0 ms a frame at batch 8 against
        // 3.9 at batch 1): its lazy im2col, which spares the copy, takes one image at a time.
        let plan_batch = if io.batch_is_free { 1 } else { io.max_batch };
        let input_fact = f32::fact([plan_batch, m.channels, m.height, m.width]);
        model.set_input_fact(0, input_fact.into()).map_err(load_err)?;
        if io.class_input.is_some() {
            model.set_input_fact(1, i64::fact([plan_batch]).into()).map_err(load_err)?;
        }
        let mut outputs = vec![io.score.as_str()];
        outputs.extend(io.map.as_deref());
        model.select_outputs_by_name(&outputs).map_err(load_err)?;
        let plan = model.into_optimized().and_then(|m| m.into_runnable()).map_err(load_err)?;
        let threads = config.effective_threads();
        let executor = if threads > 1 { Executor::multithread(threads) } else { Executor::SingleThread };
        Ok(TractEngine { plan, plan_batch, executor, has_map: io.map.is_some(), conditional: io.class_input.is_some() })
    }
}

impl Engine for TractEngine {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn run(&self, batch: ArrayView4<'_, f32>, classes: Option<&[i64]>) -> Result<Scored, EngineError> {
        if self.plan_batch == batch.shape()[0] {
            return self.run_plan(batch, classes);
        }
        let mut scores = Vec::with_capacity(batch.shape()[0]);
        let mut maps = vec![];
        for (i, chunk) in batch.axis_chunks_iter(Axis(0), self.plan_batch).enumerate() {
            let n = chunk.shape()[0];
            let start = i * self.plan_batch;
            let chunk_classes = classes.map(|c| &c[start..start + n]);
            let scored = if n == self.plan_batch {
                self.run_plan(chunk, chunk_classes)?
            } else {
                // A model with a fixed batch: the last chunk is padded with blank images,
                // whose results are dropped.
                let mut padded = ndarray::Array4::<f32>::zeros((
                    self.plan_batch,
                    chunk.shape()[1],
                    chunk.shape()[2],
                    chunk.shape()[3],
                ));
                padded.slice_mut(ndarray::s![..n, .., .., ..]).assign(&chunk);
                let padded_classes = chunk_classes.map(|c| {
                    let mut all = c.to_vec();
                    all.resize(self.plan_batch, 0);
                    all
                });
                let mut s = self.run_plan(padded.view(), padded_classes.as_deref())?;
                s.scores.truncate(n);
                s.maps = s.maps.map(|m| m.slice(ndarray::s![..n, .., .., ..]).to_owned());
                s
            };
            scores.extend(scored.scores);
            maps.extend(scored.maps);
        }
        let maps = if self.has_map {
            let views: Vec<_> = maps.iter().map(|m| m.view()).collect();
            Some(ndarray::concatenate(Axis(0), &views).map_err(|e| EngineError::Run {
                engine: "tract",
                reason: format!("anomaly maps of one batch differ in shape: {e}"),
            })?)
        } else {
            None
        };
        Ok(Scored { scores, maps })
    }
}

impl TractEngine {
    fn run_plan(&self, batch: ArrayView4<'_, f32>, classes: Option<&[i64]>) -> Result<Scored, EngineError> {
        let run_err = |e: anyhow::Error| EngineError::Run { engine: "tract", reason: format!("{e:#}") };
        let input: Tensor = batch.to_owned().into_tensor();
        let mut inputs: TVec<TValue> = tvec!(input.into());
        if self.conditional {
            let classes =
                classes.ok_or_else(|| EngineError::Class("a conditional model needs each image's class".into()))?;
            let classes = tract_ndarray::Array1::from(classes.to_vec()).into_tensor();
            inputs.push(classes.into());
        }
        let run = || multithread_tract_scope(self.executor.clone(), || self.plan.run(inputs.clone()));
        // The plan runs on one of the pool's own threads: called from outside, the caller
        // would run the single-threaded operators while the pool's two threads spin-wait
        // for the next product, three busy threads on two cores (4.3 against 5.3 ms a frame
        // for the reference model, measured here).
        let outputs = match &self.executor {
            Executor::MultiThread(pool) => pool.install(run),
            _ => run(),
        }
        .map_err(run_err)?;
        let scores = outputs[0].to_plain_array_view::<f32>().map_err(run_err)?.iter().copied().collect();
        let maps = if self.has_map {
            let view = outputs[1].to_plain_array_view::<f32>().map_err(run_err)?;
            let shape = view.shape().to_vec();
            Some(map_to_nchw(&shape, view.iter().copied().collect()).ok_or_else(|| EngineError::Run {
                engine: "tract",
                reason: format!("anomaly map has shape {shape:?}, expected [N, 1, H, W]"),
            })?)
        } else {
            None
        };
        Ok(Scored { scores, maps })
    }
}

/// One kind of operator in tract's optimised plan and the time a frame spends in it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OpProfile {
    /// The operator as tract names it (`OptMatMul`, `DepthWise`, `Im2col`, ...).
    pub op: String,
    /// How many nodes of the plan share it.
    pub nodes: usize,
    /// Milliseconds a frame, averaged over the runs.
    pub ms: f64,
}

impl TractEngine {
    /// Runs the plan `runs` times on `batch` (of the plan's batch) and returns where the time
    /// goes, operator by operator, the slowest first: the profile that says what a rewrite at
    /// load (as [`super::deconv`]) would have to win.
    pub fn profile(&self, batch: ArrayView4<'_, f32>, runs: usize) -> Result<Vec<OpProfile>, EngineError> {
        let run_err = |e: anyhow::Error| EngineError::Run { engine: "tract", reason: format!("{e:#}") };
        let input: Tensor = batch.to_owned().into_tensor();
        let mut totals: std::collections::BTreeMap<String, (std::collections::BTreeSet<usize>, f64)> =
            Default::default();
        let plan = self.plan.clone();
        let mut profile_once = || -> TractResult<()> {
            let mut state = TypedSimpleState::new(&plan)?;
            state.run_plan_with_eval(tvec!(input.clone().into()), |ctx, op_state, node, inputs| {
                let started = std::time::Instant::now();
                let out = tract_onnx::tract_core::plan::eval(ctx, op_state, node, inputs);
                let entry = totals.entry(node.op().name().to_string()).or_default();
                entry.0.insert(node.id);
                entry.1 += started.elapsed().as_secs_f64() * 1e3;
                out
            })?;
            Ok(())
        };
        for _ in 0..runs.max(1) {
            let mut run = || multithread_tract_scope(self.executor.clone(), &mut profile_once);
            match &self.executor {
                Executor::MultiThread(pool) => pool.install(run),
                _ => run(),
            }
            .map_err(run_err)?;
        }
        let mut out: Vec<OpProfile> = totals
            .into_iter()
            .map(|(op, (nodes, ms))| OpProfile {
                op,
                nodes: nodes.len(),
                ms: ms / runs.max(1) as f64 / self.plan_batch as f64,
            })
            .collect();
        out.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        Ok(out)
    }
}

/// Multiply-adds of one frame through the bundle's graph (tract's cost model over the typed,
/// decluttered graph at batch 1): what an engine's GFLOP/s are measured against.
pub fn multiply_adds(bundle: &Bundle) -> anyhow::Result<f64> {
    let proto = bundle.model_proto()?;
    let mut model = tract_onnx::onnx().model_for_proto_model(&proto)?;
    let m = &bundle.manifest.input;
    let batch: TDim = 1.into();
    model.set_input_fact(0, f32::fact(&[batch.clone(), m.channels.into(), m.height.into(), m.width.into()]).into())?;
    if bundle.manifest.conditioning.is_some() {
        model.set_input_fact(1, i64::fact(&[batch]).into())?;
    }
    let typed = model.into_typed()?.into_decluttered()?;
    let mut total = 0f64;
    for node in typed.nodes() {
        let inputs = typed.node_input_facts(node.id)?;
        if node.op_is::<tract_onnx::tract_core::ops::cnn::Deconv>() {
            // tract's cost model leaves transposed convolutions out: each input value meets
            // every output channel's kernel taps (tract holds the kernel as [C_out, C_in, kh, kw]).
            let dims = |f: &TypedFact| f.shape.iter().map(|d| d.to_i64().unwrap_or(0) as f64).collect::<Vec<_>>();
            let volume = |f: &TypedFact| dims(f).iter().product::<f64>();
            let k = dims(inputs[1]);
            let per_input: f64 = k.iter().enumerate().filter(|(i, _)| *i != 1).map(|(_, d)| d).product();
            total += volume(inputs[0]) * per_input;
            continue;
        }
        for (cost, count) in node.op.cost(&inputs)? {
            if let tract_onnx::tract_core::ops::Cost::FMA(_) = cost {
                total += count.to_i64().unwrap_or(0) as f64;
            }
        }
    }
    Ok(total)
}
