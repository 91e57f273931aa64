//! `vigil bench`: the daemon's per-frame path (read file → decode → preprocess → engine →
//! decide), one frame at a time as frames arrive, timed; then the engine call alone, so the
//! daemon's overhead shows. Prints JSON lines in the form of `shared/bench/reference_ort.py`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::bundle::Bundle;
use crate::engine::LoadedEngine;
use crate::preprocess::{Preprocessor, decode};
use crate::tiling::score_frames;

/// The per-frame path's timing.
#[derive(Debug, Clone, Serialize)]
pub struct PathResult {
    /// Frames scored.
    pub frames: usize,
    /// Frames per second over the whole run.
    pub frames_per_s: f64,
    /// Median per-frame time.
    pub p50_ms: f64,
    /// 99th percentile per-frame time.
    pub p99_ms: f64,
    /// Engine threads.
    pub threads: usize,
    /// `ort` or `tract`.
    pub engine: &'static str,
    /// Frames above the threshold (the decision is part of the path).
    pub anomalous: usize,
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
        .filter(|p| {
            p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg" | "bmp" | "tif" | "tiff")
            })
        })
        .collect();
    files.sort();
    anyhow::ensure!(!files.is_empty(), "--frames {}: no PNG, JPEG, BMP or TIFF files", dir.display());
    Ok(files)
}

/// Times the per-frame path over `files`, `repeat` passes.
pub fn per_frame(
    bundle: &Bundle,
    engine: &LoadedEngine,
    files: &[PathBuf],
    repeat: usize,
    threads: usize,
) -> anyhow::Result<PathResult> {
    let pre = Preprocessor::new(&bundle.manifest.input);
    let threshold = bundle.manifest.threshold.value;
    let mut lat = Vec::with_capacity(files.len() * repeat);
    let mut anomalous = 0;
    let t0 = Instant::now();
    for _ in 0..repeat {
        for f in files {
            let t = Instant::now();
            let bytes = std::fs::read(f)?;
            let inputs = pre.inputs(&decode(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?);
            let (score, _) = score_frames(engine, &bundle.manifest.score, &[&inputs])?.remove(0);
            if score > threshold {
                anomalous += 1;
            }
            lat.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let total = t0.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    Ok(PathResult {
        frames: lat.len(),
        frames_per_s: lat.len() as f64 / total,
        p50_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
        threads,
        engine: engine.name(),
        anomalous,
    })
}

/// Times the engine alone on a blank batch of `batch` images.
pub fn engine_only(
    engine: &LoadedEngine,
    batch: usize,
    calls: usize,
    multiply_adds: f64,
) -> anyhow::Result<EngineResult> {
    let [c, h, w] = engine.chw;
    let x = ndarray::Array4::<f32>::from_elem((batch, c, h, w), 0.5);
    engine.run(x.view())?; // warm-up
    let t = Instant::now();
    for _ in 0..calls {
        engine.run(x.view())?;
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
