//! Threshold calibration on held-out images, and the normal-score statistics behind the
//! normalised 0..1 score.

use vigil_model::bundle::manifest::{Normalization, Threshold, ThresholdMethod};

use crate::evaluate::metrics::{f1_optimal_threshold, quantile};

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
    let (by_quantile, how) = tail_quantile(normal_scores, q)?;
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
        calibrated_on: Some(format!("validation normals: {} images; {how}", normal_scores.len())),
    })
}

/// Fewest samples beyond the quantile for the empirical quantile to be trusted alone.
const TAIL_SAMPLES: f64 = 10.0;

/// The `q` quantile of normal scores, and how it was found. With few samples the empirical
/// quantile is close to the sample maximum and too low (the 0.995 quantile of 20 scores is
/// their largest, about the 0.95 quantile of the population, so a threshold there raises
/// false alarms ten times as often as asked). Then the quantile of a log-normal fitted to
/// the scores (a normal fit when some are not positive) is used if it is higher.
pub fn tail_quantile(scores: &[f32], q: f64) -> Option<(f32, String)> {
    let empirical = quantile(scores, q)?;
    let n = scores.len() as f64;
    if n * (1.0 - q) >= TAIL_SAMPLES || scores.len() < 3 {
        return Some((empirical, format!("the empirical {q} quantile")));
    }
    let z = normal_quantile(q);
    let log = scores.iter().all(|&s| s > 0.0);
    let values: Vec<f64> = scores.iter().map(|&s| if log { (s as f64).ln() } else { s as f64 }).collect();
    let mean = values.iter().sum::<f64>() / n;
    let std = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    let fitted = if log { (mean + z * std).exp() } else { mean + z * std } as f32;
    if fitted > empirical {
        let fit = if log { "log-normal" } else { "normal" };
        Some((
            fitted,
            format!("the {q} quantile of a {fit} fit (the empirical one, {empirical}, is too low with so few)"),
        ))
    } else {
        Some((empirical, format!("the empirical {q} quantile")))
    }
}

/// The standard normal distribution's `p` quantile, by bisection on its CDF.
fn normal_quantile(p: f64) -> f64 {
    let (mut lo, mut hi) = (-10.0, 10.0);
    for _ in 0..100 {
        let mid = (lo + hi) / 2.0;
        if 0.5 * (1.0 + erf(mid / std::f64::consts::SQRT_2)) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (lo + hi) / 2.0
}

/// The error function (Abramowitz and Stegun 7.1.26, absolute error below 1.5e-7).
fn erf(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let poly =
        t * (0.254_829_592 + t * (-0.284_496_736 + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let y = 1.0 - poly * (-x * x).exp();
    if x >= 0.0 { y } else { -y }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_model::rng::Rng;

    #[test]
    fn the_normal_quantile_is_right() {
        assert!((normal_quantile(0.5)).abs() < 1e-6);
        assert!((normal_quantile(0.975) - 1.959_964).abs() < 1e-4);
        assert!((normal_quantile(0.995) - 2.575_829).abs() < 1e-4);
    }

    #[test]
    fn few_scores_get_a_fitted_tail_and_many_the_empirical_one() {
        // Log-normal scores: exp(N(-6, 0.3)); the true 0.995 quantile is exp(-6 + 0.3 * 2.5758).
        let truth = (-6.0f64 + 0.3 * 2.575_829).exp() as f32;
        let mut rng = Rng::new(7);
        let draw = |rng: &mut Rng, n: usize| -> Vec<f32> {
            (0..n).map(|_| (-6.0 + 0.3 * rng.normal() as f64).exp() as f32).collect()
        };
        let few = draw(&mut rng, 20);
        let (t, how) = tail_quantile(&few, 0.995).unwrap();
        assert!(how.contains("log-normal"), "{how}");
        assert!(t > quantile(&few, 0.995).unwrap() && (t / truth - 1.0).abs() < 0.35, "{t} vs {truth}");
        let many = draw(&mut rng, 20_000);
        let (t, how) = tail_quantile(&many, 0.995).unwrap();
        assert!(how.contains("empirical") && (t / truth - 1.0).abs() < 0.05, "{t} vs {truth}: {how}");
    }
}
