//! `vigil-train reference-bundle`: a bundle of a reference architecture with seeded random
//! weights, for benchmarks and engine checks that need the real graph but no training.

use std::path::Path;

use vigil_model::bundle::Bundle;
use vigil_model::bundle::manifest::{
    ColorMode, Family, InputSpec, Manifest, OutputSpec, PixelError, Reduction, ScoreSource, ScoreSpec, Threshold,
    ThresholdMethod,
};
use vigil_model::onnx::head::{MAP_OUTPUT, SCORE_OUTPUT, build_scoring_model};
use vigil_model::onnx::reference::{ArchSpec, scoring_net};

/// Writes an untrained reference bundle of `family` to `out`.
pub fn write_reference_bundle(out: &Path, family: Family, spec: &ArchSpec, seed: u64) -> anyhow::Result<Bundle> {
    let color = if spec.channels == 1 { ColorMode::Gray } else { ColorMode::Rgb };
    let source = match family {
        Family::Gan | Family::Wgan => ScoreSource::Discriminator,
        _ => ScoreSource::Reconstruction,
    };
    let net = scoring_net(family, spec, false, seed).map_err(anyhow::Error::msg)?;
    let input = InputSpec::unit_range("image", color, spec.size, spec.size);
    let score = ScoreSpec {
        source,
        pixel_error: PixelError::Squared,
        smoothing_sigma: 4.0,
        reduction: Reduction::Max,
        feature_weight: None,
    };
    let model = build_scoring_model(&net, &input, &score, 0)?;
    let manifest = Manifest {
        schema_version: family.schema_version(),
        name: format!("reference-{}", family.as_str()),
        version: 1,
        created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        family,
        description: Some(format!(
            "untrained reference {} ({}x{}x{}, seed {seed}): random weights, for benchmarks only",
            family.as_str(),
            spec.channels,
            spec.size,
            spec.size
        )),
        input,
        outputs: OutputSpec {
            score: SCORE_OUTPUT.into(),
            anomaly_map: (source == ScoreSource::Reconstruction).then(|| MAP_OUTPUT.into()),
        },
        score,
        threshold: Threshold {
            value: 0.05,
            method: ThresholdMethod::Manual,
            quantile: None,
            false_alarms_per_1000: None,
            recall: None,
            calibrated_on: Some("nothing: untrained reference model".into()),
        },
        normalization: None,
        metrics: Default::default(),
        training: None,
        parent: None,
        conditioning: None,
    };
    Ok(Bundle::write(out, &manifest, model, &[])?)
}
