//! Detection metrics: ROC and AUROC, precision/recall/F1 at a threshold, the F1-optimal
//! threshold, quantiles, and AUPRO (per-region overlap) for anomaly maps.

/// One point of a ROC or PR curve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CurvePoint {
    /// The threshold (scores above it are called anomalous).
    pub threshold: f32,
    /// x: false positive rate (ROC) or recall (PR).
    pub x: f64,
    /// y: true positive rate (ROC) or precision (PR).
    pub y: f64,
}

/// Sorts (score, label) pairs by descending score, for threshold sweeps.
fn sorted_desc(scores: &[f32], labels: &[bool]) -> Vec<(f32, bool)> {
    let mut v: Vec<(f32, bool)> = scores.iter().copied().zip(labels.iter().copied()).collect();
    v.sort_by(|a, b| b.0.total_cmp(&a.0));
    v
}

/// One step of a threshold sweep: flagging every score `>= score` gives `tp` and `fp`;
/// `next` is the next lower distinct score, if any.
struct SweepStep {
    score: f32,
    next: Option<f32>,
    tp: usize,
    fp: usize,
}

/// Lowers the threshold through every distinct score, from the highest.
fn sweep(scores: &[f32], labels: &[bool]) -> Vec<SweepStep> {
    let v = sorted_desc(scores, labels);
    let (mut tp, mut fp, mut i) = (0, 0, 0);
    let mut steps = vec![];
    while i < v.len() {
        let score = v[i].0;
        while i < v.len() && v[i].0 == score {
            if v[i].1 {
                tp += 1
            } else {
                fp += 1
            }
            i += 1;
        }
        steps.push(SweepStep { score, next: v.get(i).map(|n| n.0), tp, fp });
    }
    steps
}

/// The ROC curve, one point per distinct score, from (0, 0) to (1, 1).
pub fn roc_curve(scores: &[f32], labels: &[bool]) -> Vec<CurvePoint> {
    let pos = labels.iter().filter(|l| **l).count() as f64;
    let neg = labels.len() as f64 - pos;
    let rate = |n: usize, of: f64| if of > 0.0 { n as f64 / of } else { 0.0 };
    std::iter::once(CurvePoint { threshold: f32::INFINITY, x: 0.0, y: 0.0 })
        .chain(sweep(scores, labels).into_iter().map(|s| CurvePoint {
            threshold: s.score,
            x: rate(s.fp, neg),
            y: rate(s.tp, pos),
        }))
        .collect()
}

/// Area under the ROC curve; `None` when one class is missing.
pub fn auroc(scores: &[f32], labels: &[bool]) -> Option<f64> {
    let pos = labels.iter().filter(|l| **l).count();
    if pos == 0 || pos == labels.len() {
        return None;
    }
    let pts = roc_curve(scores, labels);
    Some(pts.windows(2).map(|w| (w[1].x - w[0].x) * (w[1].y + w[0].y) / 2.0).sum())
}

/// The highest recall (true positive rate) at a threshold whose false positive rate is at
/// most `rate`; `None` when one class is missing.
pub fn recall_at_false_alarm_rate(scores: &[f32], labels: &[bool], rate: f64) -> Option<f64> {
    let pos = labels.iter().filter(|l| **l).count();
    if pos == 0 || pos == labels.len() {
        return None;
    }
    roc_curve(scores, labels).iter().filter(|p| p.x <= rate + 1e-12).map(|p| p.y).reduce(f64::max)
}

/// The precision-recall curve (x = recall, y = precision), one point per distinct score.
pub fn pr_curve(scores: &[f32], labels: &[bool]) -> Vec<CurvePoint> {
    let pos = labels.iter().filter(|l| **l).count() as f64;
    sweep(scores, labels)
        .into_iter()
        .map(|s| CurvePoint {
            threshold: s.score,
            x: if pos > 0.0 { s.tp as f64 / pos } else { 0.0 },
            y: s.tp as f64 / (s.tp + s.fp) as f64,
        })
        .collect()
}

/// Average precision: the precision at each step of the PR curve weighted by the recall it
/// adds (the area under the curve without interpolation); `None` without defects.
pub fn average_precision(scores: &[f32], labels: &[bool]) -> Option<f64> {
    if !labels.iter().any(|l| *l) {
        return None;
    }
    let mut recall = 0.0;
    let mut area = 0.0;
    for p in pr_curve(scores, labels) {
        area += (p.x - recall) * p.y;
        recall = p.x;
    }
    Some(area)
}

/// Counts and rates at one threshold (anomalous when score > threshold).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Confusion {
    /// Defects called defects.
    pub tp: usize,
    /// Normals called defects.
    pub fp: usize,
    /// Normals called normal.
    pub tn: usize,
    /// Defects called normal.
    pub r#fn: usize,
    /// tp / (tp + fp), 0 when nothing was flagged.
    pub precision: f64,
    /// tp / (tp + fn).
    pub recall: f64,
    /// Harmonic mean of precision and recall.
    pub f1: f64,
    /// False alarms per 1000 good parts: 1000 · fp / (fp + tn). Unlike precision it does not
    /// depend on how many defects the test set holds (a line's output is rarely 1 % defective).
    pub false_alarms_per_1000: f64,
}

/// The confusion counts at `threshold`.
pub fn confusion(scores: &[f32], labels: &[bool], threshold: f32) -> Confusion {
    let (mut tp, mut fp, mut tn, mut fnn) = (0, 0, 0, 0);
    for (s, l) in scores.iter().zip(labels) {
        match (*s > threshold, *l) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, false) => tn += 1,
            (false, true) => fnn += 1,
        }
    }
    let precision = if tp + fp > 0 { tp as f64 / (tp + fp) as f64 } else { 0.0 };
    let recall = if tp + fnn > 0 { tp as f64 / (tp + fnn) as f64 } else { 0.0 };
    let f1 = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
    let false_alarms_per_1000 = if fp + tn > 0 { 1000.0 * fp as f64 / (fp + tn) as f64 } else { 0.0 };
    Confusion { tp, fp, tn, r#fn: fnn, precision, recall, f1, false_alarms_per_1000 }
}

/// The threshold with the best F1, placed halfway between the two scores it separates so it
/// does not sit on a training score. `None` without both classes.
pub fn f1_optimal_threshold(scores: &[f32], labels: &[bool]) -> Option<(f32, f64)> {
    let pos = labels.iter().filter(|l| **l).count();
    if pos == 0 || pos == labels.len() {
        return None;
    }
    let mut best: Option<(f32, f64)> = None;
    for s in sweep(scores, labels) {
        let precision = s.tp as f64 / (s.tp + s.fp) as f64;
        let recall = s.tp as f64 / pos as f64;
        let f1 = 2.0 * precision * recall / (precision + recall);
        // Everything scoring >= s.score is flagged: the threshold lies below it, above the next.
        let next = s.next.unwrap_or(s.score - s.score.abs().max(1e-6) * 1e-3);
        if best.is_none_or(|(_, b)| f1 > b) {
            best = Some((next + (s.score - next) / 2.0, f1));
        }
    }
    best
}

/// The `q` quantile (0..=1) with linear interpolation; `None` for no values.
pub fn quantile(values: &[f32], q: f64) -> Option<f32> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f32::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    let f = (pos - lo as f64) as f32;
    Some(v[lo] * (1.0 - f) + v[hi] * f)
}

/// Pixel-level AUROC over many maps: every pixel is a sample. Maps and masks are flat, same
/// length per image. Pixels are subsampled evenly to at most `max_pixels` to bound memory.
pub fn pixel_auroc(maps: &[Vec<f32>], masks: &[Vec<bool>], max_pixels: usize) -> Option<f64> {
    let total: usize = maps.iter().map(Vec::len).sum();
    let step = total.div_ceil(max_pixels.max(1)).max(1);
    let (mut s, mut l) = (Vec::with_capacity(total / step + 1), Vec::with_capacity(total / step + 1));
    let mut k = 0usize;
    for (m, mask) in maps.iter().zip(masks) {
        for (v, t) in m.iter().zip(mask) {
            if k.is_multiple_of(step) {
                s.push(*v);
                l.push(*t);
            }
            k += 1;
        }
    }
    auroc(&s, &l)
}

/// Labels the 4-connected regions of a mask; returns the region id per pixel (0 = none) and
/// the number of regions.
fn regions(mask: &[bool], w: usize, h: usize) -> (Vec<u32>, u32) {
    let mut id = vec![0u32; mask.len()];
    let mut next = 0u32;
    let mut stack = vec![];
    for start in 0..mask.len() {
        if !mask[start] || id[start] != 0 {
            continue;
        }
        next += 1;
        id[start] = next;
        stack.push(start);
        while let Some(p) = stack.pop() {
            let (x, y) = (p % w, p / w);
            let mut visit = |q: usize| {
                if mask[q] && id[q] == 0 {
                    id[q] = next;
                    stack.push(q);
                }
            };
            if x > 0 {
                visit(p - 1)
            }
            if x + 1 < w {
                visit(p + 1)
            }
            if y > 0 {
                visit(p - w)
            }
            if y + 1 < h {
                visit(p + w)
            }
        }
    }
    (id, next)
}

/// AUPRO: the area under the per-region overlap curve up to a false positive rate of
/// `max_fpr` (0.3 in the MVTec AD papers), normalised to 0..1. Each defect region counts
/// equally however large it is, which a pixel AUROC does not do.
pub fn aupro(
    maps: &[Vec<f32>],
    masks: &[Vec<bool>],
    dims: &[(usize, usize)],
    max_fpr: f64,
    steps: usize,
) -> Option<f64> {
    let mut region_list: Vec<(usize, Vec<u32>, u32)> = vec![];
    let mut normal_pixels = vec![];
    for (i, ((m, mask), &(w, h))) in maps.iter().zip(masks).zip(dims).enumerate() {
        let (id, n) = regions(mask, w, h);
        if n > 0 {
            region_list.push((i, id, n));
        }
        normal_pixels.extend(m.iter().zip(mask).filter(|(_, t)| !**t).map(|(v, _)| *v));
    }
    if region_list.is_empty() || normal_pixels.is_empty() {
        return None;
    }
    normal_pixels.sort_by(f32::total_cmp);
    let (mut prev_fpr, mut prev_pro, mut area) = (0.0f64, 0.0f64, 0.0f64);
    for s in 0..=steps {
        let fpr = max_fpr * s as f64 / steps as f64;
        // The threshold at which this fraction of normal pixels lies above it.
        let idx = ((1.0 - fpr) * (normal_pixels.len() - 1) as f64).round() as usize;
        let t = normal_pixels[idx.min(normal_pixels.len() - 1)];
        let (mut sum, mut count) = (0.0, 0usize);
        for (i, id, n) in &region_list {
            let mut hit = vec![0usize; *n as usize + 1];
            let mut size = vec![0usize; *n as usize + 1];
            for (v, r) in maps[*i].iter().zip(id) {
                if *r > 0 {
                    size[*r as usize] += 1;
                    if *v > t {
                        hit[*r as usize] += 1;
                    }
                }
            }
            for r in 1..=*n as usize {
                sum += hit[r] as f64 / size[r] as f64;
                count += 1;
            }
        }
        let pro = sum / count as f64;
        if s > 0 {
            area += (fpr - prev_fpr) * (pro + prev_pro) / 2.0;
        }
        (prev_fpr, prev_pro) = (fpr, pro);
    }
    Some(area / max_fpr)
}

/// The standard normal quantile of a two-sided 95 % interval.
pub const Z: f64 = 1.959_963_984_540_054;

/// The Wilson score interval of `k` successes in `n` trials at 95 % confidence; `[0, 1]`
/// without trials. Unlike the plain normal interval it stays inside `[0, 1]` and is not
/// empty at 0 of n or n of n, which is where small held-out sets are.
pub fn wilson(k: usize, n: usize) -> [f64; 2] {
    if n == 0 {
        return [0.0, 1.0];
    }
    let (k, n) = (k.min(n) as f64, n as f64);
    let p = k / n;
    let z2 = Z * Z;
    let denom = 1.0 + z2 / n;
    let center = (p + z2 / (2.0 * n)) / denom;
    let half = Z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / denom;
    [(center - half).max(0.0), (center + half).min(1.0)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_of_perfect_random_and_inverted_rankings() {
        let labels = [false, false, true, true];
        assert_eq!(auroc(&[0.1, 0.2, 0.8, 0.9], &labels), Some(1.0));
        assert_eq!(auroc(&[0.9, 0.8, 0.2, 0.1], &labels), Some(0.0));
        assert_eq!(auroc(&[0.5, 0.5, 0.5, 0.5], &labels), Some(0.5));
        // One inversion out of four pairs.
        assert_eq!(auroc(&[0.1, 0.85, 0.8, 0.9], &labels), Some(0.75));
        assert_eq!(auroc(&[0.1, 0.2], &[false, false]), None);
    }

    #[test]
    fn f1_threshold_separates_the_classes() {
        let (t, f1) = f1_optimal_threshold(&[0.1, 0.2, 0.3, 0.7, 0.9], &[false, false, false, true, true]).unwrap();
        assert!(t > 0.3 && t < 0.7, "{t}");
        assert_eq!(f1, 1.0);
        let c = confusion(&[0.1, 0.2, 0.3, 0.7, 0.9], &[false, false, false, true, true], t);
        assert_eq!((c.tp, c.fp, c.tn, c.r#fn), (2, 0, 3, 0));
    }

    #[test]
    fn quantiles_interpolate() {
        assert_eq!(quantile(&[3.0, 1.0, 2.0, 4.0], 0.5), Some(2.5));
        assert_eq!(quantile(&[3.0, 1.0, 2.0], 1.0), Some(3.0));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn aupro_is_one_for_a_map_that_marks_exactly_the_defect() {
        let (w, h) = (8, 8);
        let mask: Vec<bool> = (0..64).map(|i| i % 8 < 2 && i / 8 < 2).collect();
        let map: Vec<f32> = mask.iter().map(|m| if *m { 1.0 } else { 0.0 }).collect();
        let v = aupro(std::slice::from_ref(&map), std::slice::from_ref(&mask), &[(w, h)], 0.3, 30).unwrap();
        assert!((v - 1.0).abs() < 1e-9, "{v}");
        let inverted: Vec<f32> = map.iter().map(|v| 1.0 - v).collect();
        assert!(aupro(&[inverted], std::slice::from_ref(&mask), &[(w, h)], 0.3, 30).unwrap() < 0.01);
        assert_eq!(pixel_auroc(&[map], &[mask], 1000), Some(1.0));
    }
}
