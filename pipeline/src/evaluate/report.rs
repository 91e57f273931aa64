//! The evaluation report folder: ROC and PR curves, the score histogram with the threshold,
//! heatmap overlays of the best and worst cases as PNG, and an `index.md` that shows them.
//!
//! The charts ([`crate::chart`]) carry their own titles, axis labels, legends and the
//! threshold's value, so they read on their own outside the page.

use std::path::Path;

use image::RgbImage;
use vigil_model::bundle::Bundle;
use vigil_model::overlay::overlay;

use crate::chart::{self, Marker, number};
use crate::evaluate::metrics::{average_precision, pr_curve, roc_curve};
use crate::evaluate::scores::{Detail, Evaluation};

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
        "| recall / false alarms per 1000 good parts at the threshold | {:.4} / {:.1} |\n| F1 / precision at the threshold | {:.4} / {:.4} |\n| TP / FP / TN / FN | {} / {} / {} / {} |\n",
        c.recall, c.false_alarms_per_1000, c.f1, c.precision, c.tp, c.fp, c.tn, c.r#fn
    ));
    for (kind, a) in &e.auroc_per_type {
        md.push_str(&format!("| image AUROC, {kind} ({} images) | {} |\n", e.counts.get(kind).unwrap_or(&0), fmt(*a)));
    }
    if labels.iter().any(|l| *l) && labels.iter().any(|l| !*l) {
        let at = format!("at threshold {}", number(e.threshold as f64));
        let fpr = c.fp as f64 / (c.fp + c.tn).max(1) as f64;
        let roc_mark = Marker { at: (fpr, c.recall), name: format!("{at}: TPR {:.3}, FPR {fpr:.3}", c.recall) };
        let roc: Vec<(f64, f64)> = roc_curve(&scores, &labels).iter().map(|p| (p.x, p.y)).collect();
        save(&chart::roc(&roc, e.image_auroc, Some(&roc_mark))?.image, &dir.join("roc.png"))?;
        // Precision is undefined where nothing is flagged.
        let pr_mark =
            (c.tp + c.fp > 0).then(|| Marker { at: (c.recall, c.precision), name: format!("{at}: F1 {:.3}", c.f1) });
        let pr: Vec<(f64, f64)> = pr_curve(&scores, &labels).iter().map(|p| (p.x, p.y)).collect();
        let share = labels.iter().filter(|l| **l).count() as f64 / labels.len() as f64;
        let ap = average_precision(&scores, &labels);
        save(&chart::precision_recall(&pr, ap, share, pr_mark.as_ref())?.image, &dir.join("pr.png"))?;
        md.push_str("\n## ROC curve\n\n![ROC](roc.png)\n");
        md.push_str("\n## Precision–recall curve\n\n![PR](pr.png)\n");
    }
    let normal: Vec<f32> = details.iter().filter(|d| !d.image.is_defect()).map(|d| d.score).collect();
    let defect: Vec<f32> = details.iter().filter(|d| d.image.is_defect()).map(|d| d.score).collect();
    save(&chart::score_histogram(&normal, &defect, e.threshold)?.image, &dir.join("histogram.png"))?;
    md.push_str("\n## Scores\n\n![histogram](histogram.png)\n");

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
                .and_then(|b| vigil_model::preprocess::decode(&b).map_err(|e| e.to_string()))
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
