//! The evaluation report folder: ROC and PR curves, the score histogram with the threshold,
//! heatmap overlays of the best and worst cases as PNG, and an `index.md` that shows them;
//! and the loss-curve PNG of a training run.
//!
//! Charts are drawn directly into images (no font or plotting dependency); titles, axes
//! and numbers are in the Markdown page beside them.

use std::path::Path;

use image::{Rgb, RgbImage};
use vigil::bundle::Bundle;
use vigil::overlay::overlay;

use crate::evaluate::{Detail, Evaluation};
use crate::metrics::{pr_curve, roc_curve};

const W: u32 = 480;
const H: u32 = 360;
const MARGIN: u32 = 30;
const COLORS: [[u8; 3]; 6] =
    [[31, 119, 180], [214, 39, 40], [44, 160, 44], [255, 127, 14], [148, 103, 189], [23, 190, 207]];

fn canvas() -> RgbImage {
    let mut img = RgbImage::from_pixel(W, H, Rgb([255, 255, 255]));
    // Grid at quarters, then the frame.
    for q in 0..=4 {
        let x = MARGIN + q * (W - 2 * MARGIN) / 4;
        let y = MARGIN + q * (H - 2 * MARGIN) / 4;
        let shade = if q == 0 || q == 4 { [0, 0, 0] } else { [225, 225, 225] };
        for t in MARGIN..=H - MARGIN {
            img.put_pixel(x, t, Rgb(shade));
        }
        for t in MARGIN..=W - MARGIN {
            img.put_pixel(t, y, Rgb(shade));
        }
    }
    img
}

fn to_px(x: f64, y: f64, xr: (f64, f64), yr: (f64, f64)) -> (f64, f64) {
    let fx = (x - xr.0) / (xr.1 - xr.0).max(f64::EPSILON);
    let fy = (y - yr.0) / (yr.1 - yr.0).max(f64::EPSILON);
    (MARGIN as f64 + fx * (W - 2 * MARGIN) as f64, (H - MARGIN) as f64 - fy * (H - 2 * MARGIN) as f64)
}

fn dot(img: &mut RgbImage, x: f64, y: f64, c: [u8; 3]) {
    for dx in -1i32..=1 {
        for dy in -1i32..=1 {
            let (px, py) = (x.round() as i32 + dx, y.round() as i32 + dy);
            if px >= 0 && py >= 0 && (px as u32) < W && (py as u32) < H {
                img.put_pixel(px as u32, py as u32, Rgb(c));
            }
        }
    }
}

fn line(img: &mut RgbImage, a: (f64, f64), b: (f64, f64), c: [u8; 3]) {
    let n = ((b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil() as usize).max(1);
    for i in 0..=n {
        let t = i as f64 / n as f64;
        dot(img, a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t, c);
    }
}

/// A line chart of several series over shared ranges.
pub fn line_chart(series: &[Vec<(f64, f64)>], xr: (f64, f64), yr: (f64, f64)) -> RgbImage {
    let mut img = canvas();
    for (i, s) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        for w in s.windows(2) {
            line(&mut img, to_px(w[0].0, w[0].1, xr, yr), to_px(w[1].0, w[1].1, xr, yr), c);
        }
        if let [only] = s.as_slice() {
            let p = to_px(only.0, only.1, xr, yr);
            dot(&mut img, p.0, p.1, c);
        }
    }
    img
}

/// Histogram of normal (blue) and defective (red) scores with the threshold (black line).
pub fn histogram(normal: &[f32], defect: &[f32], threshold: f32) -> RgbImage {
    let all = normal.iter().chain(defect).chain(std::iter::once(&threshold));
    let (lo, hi) = all.fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), v| (a.min(*v), b.max(*v)));
    let bins = 40usize;
    let count = |v: &[f32]| {
        let mut c = vec![0usize; bins];
        for x in v {
            let i = (((x - lo) / (hi - lo).max(f32::EPSILON)) * bins as f32) as usize;
            c[i.min(bins - 1)] += 1;
        }
        c
    };
    let (cn, cd) = (count(normal), count(defect));
    let top = cn.iter().chain(&cd).copied().max().unwrap_or(1).max(1) as f64;
    let mut img = canvas();
    let bw = (W - 2 * MARGIN) as f64 / bins as f64;
    for (counts, color, offset) in [(&cn, [31, 119, 180], 0.0), (&cd, [214, 39, 40], 0.5)] {
        for (i, c) in counts.iter().enumerate() {
            let height = (*c as f64 / top) * (H - 2 * MARGIN) as f64;
            let x0 = MARGIN as f64 + i as f64 * bw + offset * bw;
            for x in x0 as u32..(x0 + bw / 2.0).max(x0 + 1.0) as u32 {
                for y in ((H - MARGIN) as f64 - height) as u32..H - MARGIN {
                    img.put_pixel(x.min(W - 1), y, Rgb(color));
                }
            }
        }
    }
    let tx = MARGIN as f64 + ((threshold - lo) / (hi - lo).max(f32::EPSILON)) as f64 * (W - 2 * MARGIN) as f64;
    line(&mut img, (tx, MARGIN as f64), (tx, (H - MARGIN) as f64), [0, 0, 0]);
    img
}

/// The loss curves of a run, one series per loss, each scaled to its own range.
pub fn loss_chart(history: &[crate::train::EpochLog]) -> RgbImage {
    let mut names: Vec<String> = vec![];
    for e in history {
        for (k, _) in &e.losses {
            let key = format!("{}/{k}", e.phase);
            if !names.contains(&key) {
                names.push(key);
            }
        }
    }
    let series: Vec<Vec<(f64, f64)>> = names
        .iter()
        .map(|key| {
            let pts: Vec<(f64, f64)> = history
                .iter()
                .filter_map(|e| {
                    e.losses.iter().find(|(k, _)| format!("{}/{k}", e.phase) == *key).map(|(_, v)| (e.epoch as f64, *v))
                })
                .collect();
            let (lo, hi) = pts.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.1), b.max(p.1)));
            pts.into_iter().map(|(x, y)| (x, (y - lo) / (hi - lo).max(f64::EPSILON))).collect()
        })
        .collect();
    let max_epoch = history.iter().map(|e| e.epoch).max().unwrap_or(1) as f64;
    line_chart(&series, (1.0, max_epoch.max(2.0)), (0.0, 1.0))
}

fn save(img: &RgbImage, path: &Path) -> anyhow::Result<()> {
    img.save(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Writes the evaluation report into `dir`.
pub fn write(dir: &Path, bundle: &Bundle, e: &Evaluation, details: &[Detail]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let scores: Vec<f32> = details.iter().map(|d| d.score).collect();
    let labels: Vec<bool> = details.iter().map(|d| d.image.is_defect()).collect();
    let mut md = format!("# Evaluation of {} (version {})\n\n", bundle.manifest.name, bundle.manifest.version);
    md.push_str(&format!(
        "Engine `{}`, threshold {} ({:?}).\n\n",
        e.engine, e.threshold, bundle.manifest.threshold.method
    ));
    md.push_str("| metric | value |\n| --- | --- |\n");
    let fmt = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.4}"));
    md.push_str(&format!(
        "| image AUROC | {} |\n| pixel AUROC | {} |\n| AUPRO (FPR ≤ 0.3) | {} |\n",
        fmt(e.image_auroc),
        fmt(e.pixel_auroc),
        fmt(e.aupro)
    ));
    let c = &e.at_threshold;
    md.push_str(&format!(
        "| F1 / precision / recall at the threshold | {:.4} / {:.4} / {:.4} |\n| TP / FP / TN / FN | {} / {} / {} / {} |\n",
        c.f1, c.precision, c.recall, c.tp, c.fp, c.tn, c.r#fn
    ));
    for (kind, a) in &e.auroc_per_type {
        md.push_str(&format!("| image AUROC, {kind} ({} images) | {} |\n", e.counts.get(kind).unwrap_or(&0), fmt(*a)));
    }
    if labels.iter().any(|l| *l) && labels.iter().any(|l| !*l) {
        let roc: Vec<(f64, f64)> = roc_curve(&scores, &labels).iter().map(|p| (p.x, p.y)).collect();
        save(&line_chart(&[roc, vec![(0.0, 0.0), (1.0, 1.0)]], (0.0, 1.0), (0.0, 1.0)), &dir.join("roc.png"))?;
        let pr: Vec<(f64, f64)> = pr_curve(&scores, &labels).iter().map(|p| (p.x, p.y)).collect();
        save(&line_chart(&[pr], (0.0, 1.0), (0.0, 1.0)), &dir.join("pr.png"))?;
        md.push_str("\n## ROC curve\n\nFalse positive rate (x) against true positive rate (y), 0 to 1; the diagonal is chance.\n\n![ROC](roc.png)\n");
        md.push_str("\n## Precision–recall curve\n\nRecall (x) against precision (y), 0 to 1.\n\n![PR](pr.png)\n");
    }
    let normal: Vec<f32> = details.iter().filter(|d| !d.image.is_defect()).map(|d| d.score).collect();
    let defect: Vec<f32> = details.iter().filter(|d| d.image.is_defect()).map(|d| d.score).collect();
    save(&histogram(&normal, &defect, e.threshold), &dir.join("histogram.png"))?;
    md.push_str("\n## Scores\n\nNormal images in blue, defective in red, the threshold as the black line.\n\n![histogram](histogram.png)\n");

    // Cases: the most confident detections, the missed defects, the false alarms.
    let mut defects: Vec<&Detail> = details.iter().filter(|d| d.image.is_defect()).collect();
    defects.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut normals: Vec<&Detail> = details.iter().filter(|d| !d.image.is_defect()).collect();
    normals.sort_by(|a, b| b.score.total_cmp(&a.score));
    let groups: [(&str, Vec<&Detail>); 3] = [
        ("Highest-scoring defects", defects.iter().take(4).copied().collect()),
        ("Lowest-scoring defects (hardest to catch)", defects.iter().rev().take(4).copied().collect()),
        ("Highest-scoring normal images (closest to false alarms)", normals.iter().take(4).copied().collect()),
    ];
    let m = &bundle.manifest;
    let low = m.normalization.as_ref().map_or(0.0, |n| n.median);
    let high = (m.threshold.value * 2.0 - low).max(m.threshold.value + f32::EPSILON);
    let mut n = 0;
    for (title, cases) in groups {
        if cases.is_empty() {
            continue;
        }
        md.push_str(&format!("\n## {title}\n\n"));
        for d in cases {
            let Some(map) = &d.map else { continue };
            let Ok(img) = std::fs::read(&d.image.path)
                .map_err(|e| e.to_string())
                .and_then(|b| vigil::preprocess::decode(&b).map_err(|e| e.to_string()))
            else {
                continue;
            };
            let (x, y, w, h) = d.area;
            let frame = image::imageops::crop_imm(&img.to_rgb8(), x, y, w, h).to_image();
            let (mh, mw) = map.dim();
            let values: Vec<f32> = map.iter().copied().collect();
            let over = overlay(&frame, &values, mh, mw, low, high);
            n += 1;
            let name = format!("case_{n:02}.png");
            save(&over, &dir.join(&name))?;
            md.push_str(&format!(
                "- `{}` ({}), score {:.5}\n\n  ![{name}]({name})\n\n",
                d.image.path.display(),
                d.image.kind,
                d.score
            ));
        }
    }
    std::fs::write(dir.join("index.md"), md)?;
    std::fs::write(dir.join("evaluation.json"), serde_json::to_vec_pretty(e)?)?;
    Ok(())
}
