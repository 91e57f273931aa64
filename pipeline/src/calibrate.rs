//! Threshold calibration on held-out images, and the normal-score statistics behind the
//! normalised 0..1 score.

use vigil::bundle::manifest::{Normalization, Threshold, ThresholdMethod};

use crate::metrics::{f1_optimal_threshold, quantile};

/// The quantile of validation-normal scores used as the threshold unless told otherwise:
/// about one false alarm in 200 normal frames.
pub const DEFAULT_QUANTILE: f64 = 0.995;

/// Statistics of scores on normal images.
pub fn normalization(normal_scores: &[f32]) -> Option<Normalization> {
    if normal_scores.is_empty() {
        return None;
    }
    let n = normal_scores.len() as f64;
    let mean = normal_scores.iter().map(|&s| s as f64).sum::<f64>() / n;
    let var = normal_scores.iter().map(|&s| (s as f64 - mean).powi(2)).sum::<f64>() / n;
    Some(Normalization {
        count: normal_scores.len(),
        mean: mean as f32,
        std: var.sqrt() as f32,
        min: normal_scores.iter().copied().fold(f32::INFINITY, f32::min),
        median: quantile(normal_scores, 0.5)?,
        max: normal_scores.iter().copied().fold(f32::NEG_INFINITY, f32::max),
    })
}

/// The threshold from validation scores: the `q` quantile of normal scores, or the
/// F1-optimal threshold when labelled defects were given for validation.
pub fn threshold(normal_scores: &[f32], defect_scores: &[f32], q: f64) -> Option<Threshold> {
    let by_quantile = quantile(normal_scores, q)?;
    if !defect_scores.is_empty() {
        let scores: Vec<f32> = normal_scores.iter().chain(defect_scores).copied().collect();
        let labels: Vec<bool> = normal_scores.iter().map(|_| false).chain(defect_scores.iter().map(|_| true)).collect();
        if let Some((t, f1)) = f1_optimal_threshold(&scores, &labels) {
            return Some(Threshold {
                value: t,
                method: ThresholdMethod::F1,
                quantile: None,
                calibrated_on: Some(format!(
                    "validation: {} normal and {} defective images (F1 {f1:.3}; the {q} quantile of normals was {by_quantile})",
                    normal_scores.len(),
                    defect_scores.len()
                )),
            });
        }
    }
    Some(Threshold {
        value: by_quantile,
        method: ThresholdMethod::Quantile,
        quantile: Some(q),
        calibrated_on: Some(format!("validation normals: {} images", normal_scores.len())),
    })
}
