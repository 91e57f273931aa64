//! The manifest's calibration: the threshold and how it was chosen, and the statistics of the
//! validation normals' scores that normalise scores and judge drift.

use serde::{Deserialize, Serialize};

/// How a threshold was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThresholdMethod {
    /// A quantile of the scores of held-out normal images.
    Quantile,
    /// The threshold that maximises F1 on labelled validation images.
    F1,
    /// The operating point in the line's terms: about `false_alarms_per_1000` of good parts
    /// scored above it (the quantile `1 - rate / 1000` of validation normals).
    FalseAlarms,
    /// The highest threshold that catches the share `recall` of the labelled validation
    /// defects.
    Recall,
    /// Set by a person.
    Manual,
}

/// The decision threshold: a frame is anomalous when `score > value`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    /// Scores strictly above this are anomalous.
    pub value: f32,
    /// How `value` was chosen.
    pub method: ThresholdMethod,
    /// The quantile used (`quantile` method).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantile: Option<f64>,
    /// The false alarms per 1000 good parts asked for (`false_alarms` method).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub false_alarms_per_1000: Option<f64>,
    /// The share of defects asked to be caught (`recall` method).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recall: Option<f64>,
    /// What the threshold was calibrated on, for people (e.g. "validation normals: 120 images").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibrated_on: Option<String>,
}

impl Threshold {
    /// The oldest manifest schema that has this threshold's form: 4 for the operating points
    /// `false_alarms` and `recall`.
    pub fn schema_version(&self) -> u32 {
        match self.method {
            ThresholdMethod::FalseAlarms | ThresholdMethod::Recall => 4,
            ThresholdMethod::Quantile | ThresholdMethod::F1 | ThresholdMethod::Manual => 1,
        }
    }
}

/// Statistics of scores on normal images.
///
/// The normalised score maps the median normal score to 0, the threshold to 0.5 and
/// twice that distance to 1 (clamped), so that 0.5 means "at the threshold" on every model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalization {
    /// How many normal images the statistics come from.
    pub count: usize,
    /// Mean normal score.
    pub mean: f32,
    /// Standard deviation of normal scores.
    pub std: f32,
    /// Smallest normal score.
    pub min: f32,
    /// Median normal score.
    pub median: f32,
    /// Largest normal score.
    pub max: f32,
}

impl Normalization {
    /// Maps a raw score to 0..1 with the threshold at 0.5.
    pub fn normalize(&self, score: f32, threshold: f32) -> f32 {
        let span = threshold - self.median;
        if span.is_nan() || span <= 0.0 || !score.is_finite() {
            // A degenerate calibration (threshold at or below the median) cannot be scaled;
            // fall back to the decision alone.
            return if score > threshold { 1.0 } else { 0.0 };
        }
        (0.5 + 0.5 * (score - threshold) / span).clamp(0.0, 1.0)
    }
}
