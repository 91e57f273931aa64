//! `vigil bench`: the daemon's scoring path (read file → decode → preprocess → engine →
//! decide) timed two ways, then the engine call alone, so the daemon's overhead shows. Prints
//! JSON lines in the form of `shared/bench/reference_ort.py`.
//!
//! - `daemon`: the frames go through the daemon's own scoring stages (decode workers
//!   overlapping the engine, batching when frames queue up) as fast as a camera burst
//!   delivers them; this is the daemon's throughput.
//! - `serial`: one frame at a time, each finished before the next is read, as the Python
//!   reference does; this is the latency of a lone frame.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use serde::Serialize;

use crate::frame::{Frame, Origin};
use crate::scoring::ScoringConfig;
use crate::scoring::{self, Finished, Model, Models};
use vigil_model::bundle::Bundle;
use vigil_model::engine::LoadedEngine;
use vigil_model::preprocess::Preprocessor;
use vigil_model::tiling::score_frames;

/// The scoring path's timing.
#[derive(Debug, Clone, Serialize)]
pub struct PathResult {
    /// `daemon` (the scoring stages, frames queued) or `serial` (one frame at a time).
    pub mode: &'static str,
    /// Frames scored.
    pub frames: usize,
    /// Frames per second over the whole run.
    pub frames_per_s: f64,
    /// Median per-frame time: from reading the file to the decision (`serial`), or from the
    /// frame entering the daemon's queue to its score (`daemon`, so it includes the wait in
    /// the queue behind the burst).
    pub p50_ms: f64,
    /// 99th percentile per-frame time, measured as `p50_ms` is.
    pub p99_ms: f64,
    /// Engine threads.
    pub threads: usize,
    /// `ort` or `tract`.
    pub engine: &'static str,
    /// Frames above the threshold (the decision is part of the path).
    pub anomalous: usize,
}

impl PathResult {
    /// The result of `lat` (per-frame milliseconds) scored in `elapsed` seconds.
    fn of(
        mode: &'static str,
        mut lat: Vec<f64>,
        elapsed: f64,
        threads: usize,
        engine: &'static str,
        anomalous: usize,
    ) -> PathResult {
        lat.sort_by(f64::total_cmp);
        PathResult {
            mode,
            frames: lat.len(),
            frames_per_s: lat.len() as f64 / elapsed,
            p50_ms: percentile(&lat, 0.5),
            p99_ms: percentile(&lat, 0.99),
            threads,
            engine,
            anomalous,
        }
    }
}

/// The engine call alone.
#[derive(Debug, Clone, Serialize)]
pub struct EngineResult {
    /// `engine_only`.
    pub mode: &'static str,
    /// `ort` or `tract`.
    pub engine: &'static str,
    /// Images per call.
    pub batch: usize,
    /// Milliseconds per image.
    pub ms_per_frame: f64,
    /// Calls timed.
    pub calls: usize,
    /// Multiply-adds per frame (tract's cost model of the graph).
    pub multiply_adds: f64,
    /// Achieved GFLOP/s (2 floating-point operations per multiply-add).
    pub gflop_per_s: f64,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

/// Image files (PNG, JPEG, BMP, TIFF) in `dir`, sorted.
pub fn frame_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("--frames {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| vigil_model::preprocess::is_image_file(p))
        .collect();
    files.sort();
    anyhow::ensure!(!files.is_empty(), "--frames {}: no PNG, JPEG, BMP or TIFF files", dir.display());
    Ok(files)
}

/// Times the per-frame path over `files` (of product `class`, conditional bundles), `repeat`
/// passes.
pub fn per_frame(
    bundle: &Bundle,
    engine: &LoadedEngine,
    files: &[PathBuf],
    class: Option<&str>,
    repeat: usize,
    threads: usize,
) -> anyhow::Result<PathResult> {
    let pre = Preprocessor::new(&bundle.manifest.input);
    let index = bundle.manifest.resolve_class(class).map_err(anyhow::Error::msg)?;
    let threshold = bundle.manifest.calibration(index).0.value;
    let classes = index.map(|k| [k as i64]);
    let mut lat = Vec::with_capacity(files.len() * repeat);
    let mut anomalous = 0;
    let t0 = Instant::now();
    for _ in 0..repeat {
        for f in files {
            let t = Instant::now();
            let bytes = std::fs::read(f)?;
            let inputs = pre.inputs_from_bytes(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
            let (score, _) =
                score_frames(engine, &bundle.manifest.score, &[&inputs], classes.as_ref().map(|c| &c[..]))?.remove(0);
            if score > threshold {
                anomalous += 1;
            }
            lat.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(PathResult::of("serial", lat, t0.elapsed().as_secs_f64(), threads, engine.name(), anomalous))
}

/// Times the daemon's scoring stages (with `config`, the daemon's `[scoring]`) over `files`
/// (of product `class`, conditional bundles), `repeat` passes, the files read and queued as
/// fast as the stages take them.
pub fn daemon(
    model: Arc<Model>,
    config: &ScoringConfig,
    files: &[PathBuf],
    class: Option<&str>,
    repeat: usize,
    threads: usize,
) -> anyhow::Result<PathResult> {
    let index = model.bundle.manifest.resolve_class(class).map_err(anyhow::Error::msg)?;
    let threshold = model.bundle.manifest.calibration(index).0.value;
    let class = class.map(str::to_owned);
    let engine = model.engine.name();
    let models = Arc::new(Models::new(vec![model], vec![PathBuf::new()]));
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel(scoring::results_capacity(config));
    let stages = scoring::start(config, models, vec![None], out_tx, &Default::default());
    let total = files.len() * repeat;
    let t0 = Instant::now();
    let feeder = {
        let (frames, files, class) = (stages.frames.clone(), files.to_vec(), class);
        std::thread::spawn(move || -> anyhow::Result<()> {
            for f in (0..repeat).flat_map(|_| files.iter()) {
                let bytes = std::fs::read(f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
                let frame = Frame {
                    slot: 0,
                    camera: "bench".into(),
                    class: class.clone(),
                    origin: Origin::File(f.clone()),
                    bytes,
                    time: SystemTime::now(),
                    received: Instant::now(),
                    trigger: None,
                    done: None,
                };
                if frames.blocking_send(frame).is_err() {
                    break;
                }
            }
            Ok(())
        })
    };
    let (mut lat, mut anomalous) = (Vec::with_capacity(total), 0);
    while lat.len() < total {
        match out_rx.blocking_recv() {
            Some(Finished::Scored { prepared, score, .. }) => {
                lat.push(prepared.frame.received.elapsed().as_secs_f64() * 1e3);
                anomalous += usize::from(score > threshold);
            }
            Some(Finished::Rejected { frame, reason, .. }) => {
                anyhow::bail!("{}: {reason}", frame.origin.describe())
            }
            None => anyhow::bail!("the scoring stages stopped after {} of {total} frames", lat.len()),
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    feeder.join().map_err(|_| anyhow::anyhow!("the frame reader panicked"))??;
    stages.join();
    Ok(PathResult::of("daemon", lat, elapsed, threads, engine, anomalous))
}

/// Times the engine alone on a blank batch of `batch` images (of the first class, for a
/// conditional model: every class costs the same).
pub fn engine_only(
    engine: &LoadedEngine,
    batch: usize,
    calls: usize,
    multiply_adds: f64,
) -> anyhow::Result<EngineResult> {
    let [c, h, w] = engine.chw;
    let x = ndarray::Array4::<f32>::from_elem((batch, c, h, w), 0.5);
    let classes = engine.classes().map(|_| vec![0i64; batch]);
    engine.run_classes(x.view(), classes.as_deref())?; // warm-up
    let t = Instant::now();
    for _ in 0..calls {
        engine.run_classes(x.view(), classes.as_deref())?;
    }
    let ms = t.elapsed().as_secs_f64() * 1e3 / (calls * batch) as f64;
    Ok(EngineResult {
        mode: "engine_only",
        engine: engine.name(),
        batch,
        ms_per_frame: ms,
        calls,
        multiply_adds,
        gflop_per_s: 2.0 * multiply_adds / (ms * 1e6),
    })
}

/// One operator of tract's plan in `vigil bench --profile`.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileLine {
    /// Always `profile`.
    pub mode: &'static str,
    /// The operator, its node count and milliseconds a frame.
    #[serde(flatten)]
    pub op: vigil_model::engine::tract::OpProfile,
    /// Its share of the plan's time.
    pub share: f64,
}

/// Where tract's plan for `bundle` spends a frame, operator by operator (`runs` runs of a
/// blank frame after one to warm up), the slowest first.
pub fn tract_profile(
    bundle: &Bundle,
    config: &vigil_model::engine::EngineConfig,
    runs: usize,
) -> anyhow::Result<Vec<ProfileLine>> {
    let io = vigil_model::engine::io::check_model(bundle)?;
    let engine = vigil_model::engine::tract::TractEngine::load(bundle, bundle.model_proto()?, &io, config)?;
    let m = &bundle.manifest.input;
    let batch = if io.batch_is_free { 1 } else { io.max_batch };
    let blank = ndarray::Array4::<f32>::zeros((batch, m.channels, m.height, m.width));
    engine.profile(blank.view(), 1)?;
    let ops = engine.profile(blank.view(), runs)?;
    let total: f64 = ops.iter().map(|o| o.ms).sum();
    Ok(ops
        .into_iter()
        .map(|op| ProfileLine { mode: "profile", share: op.ms / total.max(f64::MIN_POSITIVE), op })
        .collect())
}
