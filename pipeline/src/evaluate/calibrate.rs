//! Threshold calibration on held-out images, and the normal-score statistics behind the
//! normalised 0..1 score.

use vigil_model::bundle::manifest::{Normalization, Threshold, ThresholdMethod};

use crate::evaluate::metrics::{f1_optimal_threshold, quantile, wilson};

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

/// Where the threshold goes: the train config's `quantile`, `false_alarms_per_1000` or
/// `recall_target`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OperatingPoint {
    /// The quantile of validation-normal scores (with labelled defects: the F1-optimal
    /// threshold instead).
    Quantile(f64),
    /// About this many false alarms per 1000 good parts: the quantile `1 - rate / 1000` of
    /// validation normals, whether or not defects are labelled.
    FalseAlarms(f64),
    /// The highest threshold that catches this share of the labelled validation defects.
    Recall(f64),
}

/// `k` of `n` as a rate per 1000 with its 95 % interval, for people.
fn per_1000(k: usize, n: usize) -> String {
    let [lo, hi] = wilson(k, n);
    format!(
        "{k} of {n} validation normals above it, {:.1} per 1000 (95 % interval {:.1} to {:.1})",
        1000.0 * k as f64 / n.max(1) as f64,
        1000.0 * lo,
        1000.0 * hi
    )
}

/// The threshold from validation scores at operating point `op`. A recall target without
/// labelled defects falls back to the quantile, and says so.
pub fn threshold(normal_scores: &[f32], defect_scores: &[f32], op: OperatingPoint) -> Option<Threshold> {
    let above = |t: f32| normal_scores.iter().filter(|&&s| s > t).count();
    let caught = |t: f32| defect_scores.iter().filter(|&&s| s > t).count();
    match op {
        OperatingPoint::FalseAlarms(rate) => {
            let q = 1.0 - rate / 1000.0;
            let (value, how) = tail_quantile(normal_scores, q)?;
            let defects = if defect_scores.is_empty() {
                String::new()
            } else {
                format!("; catches {} of {} validation defects", caught(value), defect_scores.len())
            };
            return Some(Threshold {
                value,
                method: ThresholdMethod::FalseAlarms,
                quantile: Some(q),
                false_alarms_per_1000: Some(rate),
                recall: None,
                calibrated_on: Some(format!(
                    "{rate} false alarms per 1000 good parts: {how} of {} validation normals; {}{defects}",
                    normal_scores.len(),
                    per_1000(above(value), normal_scores.len())
                )),
            });
        }
        OperatingPoint::Recall(share) if !defect_scores.is_empty() => {
            let mut d: Vec<f32> = defect_scores.to_vec();
            d.sort_by(|a, b| b.total_cmp(a));
            let k = ((share * d.len() as f64).ceil() as usize).clamp(1, d.len());
            let kth = d[k - 1];
            // Halfway to the next lower score of any image, so that the k-th defect is above it
            // and the threshold does not sit on a validation score.
            let below = normal_scores
                .iter()
                .chain(defect_scores)
                .copied()
                .filter(|&s| s < kth)
                .fold(f32::NEG_INFINITY, f32::max);
            let value = if below.is_finite() { below + (kth - below) / 2.0 } else { kth - kth.abs().max(1.0) * 1e-6 };
            return Some(Threshold {
                value,
                method: ThresholdMethod::Recall,
                quantile: None,
                false_alarms_per_1000: None,
                recall: Some(share),
                calibrated_on: Some(format!(
                    "recall {share}: catches {} of {} validation defects; {}",
                    caught(value),
                    d.len(),
                    per_1000(above(value), normal_scores.len())
                )),
            });
        }
        OperatingPoint::Recall(_) | OperatingPoint::Quantile(_) => {}
    }
    let q = match op {
        OperatingPoint::Quantile(q) => q,
        _ => DEFAULT_QUANTILE,
    };
    let (by_quantile, how) = tail_quantile(normal_scores, q)?;
    if let OperatingPoint::Recall(share) = op {
        tracing::warn!(
            "recall_target {share} needs labelled validation defects (--val-abnormal); the threshold is the {q} quantile of normals instead"
        );
        return Some(quantile_threshold(
            by_quantile,
            q,
            format!(
                "validation normals: {} images; {how} (recall_target {share} was asked for, but no labelled defects were given: pass --val-abnormal)",
                normal_scores.len()
            ),
        ));
    }
    if !defect_scores.is_empty() {
        let scores: Vec<f32> = normal_scores.iter().chain(defect_scores).copied().collect();
        let labels: Vec<bool> = normal_scores.iter().map(|_| false).chain(defect_scores.iter().map(|_| true)).collect();
        if let Some((t, f1)) = f1_optimal_threshold(&scores, &labels) {
            return Some(Threshold {
                value: t,
                method: ThresholdMethod::F1,
                quantile: None,
                false_alarms_per_1000: None,
                recall: None,
                calibrated_on: Some(format!(
                    "validation: {} normal and {} defective images (F1 {f1:.3}; the {q} quantile of normals was {by_quantile})",
                    normal_scores.len(),
                    defect_scores.len()
                )),
            });
        }
    }
    let how = format!(
        "validation normals: {} images; {how}; {}",
        normal_scores.len(),
        per_1000(above(by_quantile), normal_scores.len())
    );
    Some(quantile_threshold(by_quantile, q, how))
}

/// The threshold at the `q` quantile of normals, as found by `how`.
fn quantile_threshold(value: f32, q: f64, how: String) -> Threshold {
    Threshold {
        value,
        method: ThresholdMethod::Quantile,
        quantile: Some(q),
        false_alarms_per_1000: None,
        recall: None,
        calibrated_on: Some(how),
    }
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

#[cfg(test)]
mod operating_points {
    use super::*;

    #[test]
    fn each_operating_point_places_the_threshold_and_says_what_it_costs() {
        // Enough normals for the empirical quantile (25 beyond it).
        let normals: Vec<f32> = (0..5000).map(|i| i as f32 / 5000.0).collect();
        let defects: Vec<f32> = (0..20).map(|i| 0.9 + i as f32 / 100.0).collect();
        // 5 per 1000 is the 0.995 quantile; the defects do not move it.
        let t = threshold(&normals, &defects, OperatingPoint::FalseAlarms(5.0)).unwrap();
        assert_eq!(
            (t.method, t.false_alarms_per_1000, t.schema_version()),
            (ThresholdMethod::FalseAlarms, Some(5.0), 4)
        );
        assert!((t.value - 0.995).abs() < 2e-3, "{t:?}");
        let how = t.calibrated_on.unwrap();
        assert!(how.contains("per 1000 (95 % interval") && how.contains("validation defects"), "{how}");
        // Recall 0.5: the 10th highest defect (1.00) is caught, the 11th (0.99) is not.
        let t = threshold(&normals, &defects, OperatingPoint::Recall(0.5)).unwrap();
        assert_eq!((t.method, t.recall), (ThresholdMethod::Recall, Some(0.5)));
        assert_eq!(defects.iter().filter(|&&d| d > t.value).count(), 10, "{t:?}");
        let how = t.calibrated_on.unwrap();
        assert!(how.contains("catches 10 of 20") && how.contains("validation normals above it"), "{how}");
        // Without defects a recall target falls back to the quantile, and says so.
        let t = threshold(&normals, &[], OperatingPoint::Recall(0.9)).unwrap();
        assert_eq!((t.method, t.schema_version()), (ThresholdMethod::Quantile, 1));
        assert!(t.calibrated_on.unwrap().contains("pass --val-abnormal"));
        // The quantile with defects is the F1-optimal threshold, as before.
        let t = threshold(&normals, &defects, OperatingPoint::Quantile(0.995)).unwrap();
        assert_eq!(t.method, ThresholdMethod::F1);
    }
}
