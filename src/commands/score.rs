//! `vigil score`: score image files with a bundle and print one JSON line per image.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use vigil_model::bundle::Bundle;
use vigil_model::engine::{self, EngineConfig, LoadedEngine};
use vigil_model::preprocess::Preprocessor;
use vigil_model::tiling::{Inputs, score_frames};

/// One line of `vigil score` output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoreLine {
    /// The image file as given.
    pub file: String,
    /// The raw score (higher = more anomalous).
    pub score: f32,
    /// 0..1 with 0.5 at the threshold, when the bundle has normal-score statistics.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub normalized_score: Option<f32>,
    /// The bundle's threshold.
    pub threshold: f32,
    /// `score > threshold`.
    pub anomalous: bool,
    /// `ort` or `tract`.
    pub engine: &'static str,
}

/// The line printed for an image that could not be scored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorLine {
    /// The image file as given.
    pub file: String,
    /// What went wrong and what to do.
    pub error: String,
}

/// Scores `images` (of product `class`, for a conditional bundle) and writes one JSON line
/// per image to `out`, in order. Returns how many images failed; the others are still scored.
pub fn run(
    bundle: &Bundle,
    engine: &LoadedEngine,
    class: Option<&str>,
    images: &[PathBuf],
    out: &mut dyn Write,
) -> anyhow::Result<usize> {
    let pre = Preprocessor::new(&bundle.manifest.input);
    let class = bundle.manifest.resolve_class(class).map_err(anyhow::Error::msg)?;
    let (threshold, normalization) = bundle.manifest.calibration(class);
    let threshold = threshold.value;
    let mut failures = 0;
    for chunk in images.chunks(engine.max_batch().min(16)) {
        // Decode the chunk first, so that bad files do not cost a batch slot.
        let mut inputs = Vec::with_capacity(chunk.len());
        let mut lines: Vec<Result<usize, String>> = Vec::with_capacity(chunk.len());
        for path in chunk {
            match load(&pre, path) {
                Ok(t) => {
                    lines.push(Ok(inputs.len()));
                    inputs.push(t);
                }
                Err(e) => lines.push(Err(e)),
            }
        }
        let scores = if inputs.is_empty() {
            Ok(vec![])
        } else {
            let classes = class.map(|k| vec![k as i64; inputs.len()]);
            score_frames(engine, &bundle.manifest.score, &inputs.iter().collect::<Vec<_>>(), classes.as_deref())
                .map(|s| s.into_iter().map(|(score, _)| score).collect::<Vec<_>>())
        };
        for (path, line) in chunk.iter().zip(lines) {
            let file = path.display().to_string();
            let json = match (line, &scores) {
                (Ok(i), Ok(scores)) => {
                    let score = scores[i];
                    serde_json::to_string(&ScoreLine {
                        file,
                        score,
                        normalized_score: normalization.map(|n| n.normalize(score, threshold)),
                        threshold,
                        anomalous: score > threshold,
                        engine: engine.name(),
                    })?
                }
                (Ok(_), Err(e)) => {
                    failures += 1;
                    serde_json::to_string(&ErrorLine { file, error: e.to_string() })?
                }
                (Err(error), _) => {
                    failures += 1;
                    serde_json::to_string(&ErrorLine { file, error })?
                }
            };
            writeln!(out, "{json}")?;
        }
    }
    Ok(failures)
}

fn load(pre: &Preprocessor, path: &Path) -> Result<Inputs, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read the file: {e}"))?;
    pre.inputs_from_bytes(&bytes).map_err(|e| e.to_string())
}

/// Loads the bundle and engine for `vigil score`.
pub fn prepare(bundle: &Path, config: &EngineConfig) -> anyhow::Result<(Bundle, LoadedEngine)> {
    let bundle = Bundle::load(bundle)?;
    let engine = engine::load(&bundle, config)?;
    Ok((bundle, engine))
}
