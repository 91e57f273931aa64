//! `vigil wrap`: turn a model exported elsewhere into a vigil bundle.
//!
//! An autoencoder that outputs only a reconstruction gets vigil's score head appended; a
//! model that already outputs a score (an anomalib export, say) is kept as it is and only
//! described by a manifest (`family: external`).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use vigil_model::bundle::Bundle;
use vigil_model::bundle::manifest::{
    ColorMode, Family, InputSpec, Layout, Manifest, OutputSpec, PixelError, Reduction, ResizeFilter, ResizeMode,
    ScoreSource, ScoreSpec, Threshold, ThresholdMethod,
};
use vigil_model::onnx::head::{MAP_OUTPUT, SCORE_OUTPUT};
use vigil_model::onnx::{graph, wrap};

/// What the foreign model outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForeignOutputs {
    /// A reconstruction of the input, under this output name.
    Reconstruction(String),
    /// A score (and optionally a map) computed by the model itself.
    Score {
        /// The score output.
        score: String,
        /// The anomaly map output.
        map: Option<String>,
    },
}

/// Everything `vigil wrap` needs.
#[derive(Debug, Clone)]
pub struct WrapRequest {
    /// The foreign `.onnx` file.
    pub model: PathBuf,
    /// The bundle folder to write.
    pub out: PathBuf,
    /// Bundle name; default: the model file's stem.
    pub name: Option<String>,
    /// What the model outputs.
    pub outputs: ForeignOutputs,
    /// The decision threshold on the score.
    pub threshold: f32,
    /// Pixel scaling before mean/std.
    pub scale: f32,
    /// Per-channel mean (one value repeats for every channel).
    pub mean: Vec<f32>,
    /// Per-channel std (one value repeats for every channel).
    pub std: Vec<f32>,
    /// Smoothing of the map, in pixels (reconstruction only).
    pub smoothing_sigma: f32,
    /// Map to score reduction (reconstruction only).
    pub reduction: Reduction,
}

fn per_channel(values: &[f32], channels: usize, what: &str) -> anyhow::Result<Vec<f32>> {
    match values.len() {
        1 => Ok(vec![values[0]; channels]),
        n if n == channels => Ok(values.to_vec()),
        n => bail!("--{what} has {n} values; give one, or one per channel ({channels})"),
    }
}

/// Writes the bundle and returns it loaded.
pub fn wrap(req: &WrapRequest) -> anyhow::Result<Bundle> {
    let origin = req.model.display();
    let bytes = std::fs::read(&req.model).with_context(|| format!("reading {origin}"))?;
    let model = graph::decode(&bytes).with_context(|| format!("{origin} is not a valid ONNX file"))?;
    let input = wrap::foreign_input(&model).with_context(|| origin.to_string())?;
    let Some([c, h, w]) = input.chw else {
        bail!(
            "{origin}: input `{}` must have fixed channels, height and width; re-export it with a fixed image size",
            input.name
        );
    };
    let color = match c {
        1 => ColorMode::Gray,
        3 => ColorMode::Rgb,
        _ => bail!("{origin}: input `{}` has {c} channels; vigil feeds 1 (gray) or 3 (RGB)", input.name),
    };
    let name = match &req.name {
        Some(n) => n.clone(),
        None => file_stem(&req.model),
    };
    let input_spec = InputSpec {
        name: input.name,
        channels: c,
        height: h,
        width: w,
        color,
        resize_filter: ResizeFilter::Bilinear,
        resize_mode: ResizeMode::Stretch,
        scale: req.scale,
        mean: per_channel(&req.mean, c, "mean")?,
        std: per_channel(&req.std, c, "std")?,
        layout: Layout::Nchw,
        tiling: None,
    };
    let mut score = ScoreSpec {
        source: ScoreSource::External,
        pixel_error: PixelError::Squared,
        smoothing_sigma: req.smoothing_sigma,
        reduction: req.reduction,
        feature_weight: None,
    };
    let (model, outputs, description) = match &req.outputs {
        ForeignOutputs::Reconstruction(recon) => {
            score.source = ScoreSource::Reconstruction;
            let wrapped =
                wrap::wrap_reconstruction(model, recon, &score, &input_spec).with_context(|| origin.to_string())?;
            let outputs = OutputSpec { score: SCORE_OUTPUT.into(), anomaly_map: Some(MAP_OUTPUT.into()) };
            (wrapped, outputs, format!("{origin}: reconstruction `{recon}` with vigil's score head"))
        }
        ForeignOutputs::Score { score: s, map } => {
            wrap::check_external(&model, s, map.as_deref()).with_context(|| origin.to_string())?;
            let outputs = OutputSpec { score: s.clone(), anomaly_map: map.clone() };
            (model, outputs, format!("{origin}: scores by itself"))
        }
    };
    let manifest = Manifest {
        schema_version: Family::External.schema_version(),
        name,
        version: 1,
        created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        family: Family::External,
        description: Some(description),
        input: input_spec,
        outputs,
        score,
        threshold: Threshold {
            value: req.threshold,
            method: ThresholdMethod::Manual,
            quantile: None,
            false_alarms_per_1000: None,
            recall: None,
            calibrated_on: None,
        },
        normalization: None,
        metrics: Default::default(),
        training: None,
        parent: None,
        conditioning: None,
    };
    Ok(Bundle::write(&req.out, &manifest, model, &[])?)
}

fn file_stem(p: &Path) -> String {
    let stem: String = p
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '-' })
        .collect();
    if stem.is_empty() { "external".into() } else { stem }
}
