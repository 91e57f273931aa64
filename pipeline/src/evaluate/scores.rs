//! Scoring image files through an exported bundle (the daemon's preprocessing and engines),
//! and the evaluation of a bundle on labelled test images.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ndarray::Array2;
use serde::Serialize;
use vigil_model::bundle::Bundle;
use vigil_model::bundle::manifest::ScoreSpec;
use vigil_model::engine::LoadedEngine;
use vigil_model::preprocess::Preprocessor;
use vigil_model::tiling::{Inputs, score_frames};

use crate::data::sets::{Skipped, TestImage, load_inputs, load_mask};
use crate::evaluate::metrics::{Confusion, aupro, auroc, confusion, pixel_auroc, recall_at_false_alarm_rate};

/// One image's result.
#[derive(Debug, Clone)]
pub struct ScoredFile {
    /// The file.
    pub path: PathBuf,
    /// Its score.
    pub score: f32,
    /// Its anomaly map (`[H, W]`: the model's input size, or the tiled image's), when the
    /// model has one.
    pub map: Option<Array2<f32>>,
    /// The part of the image the map covers, `(x, y, w, h)` in image pixels.
    pub area: (u32, u32, u32, u32),
}

/// Scores files (all of class `class`, for a conditional model) through `engine` exactly as
/// the daemon does; unreadable files are skipped and named.
pub fn score_files(
    engine: &LoadedEngine,
    pre: &Preprocessor,
    score: &ScoreSpec,
    paths: &[PathBuf],
    class: Option<usize>,
) -> (Vec<ScoredFile>, Vec<Skipped>) {
    let mut out = Vec::with_capacity(paths.len());
    let mut skipped = vec![];
    for chunk in paths.chunks(16) {
        let mut loaded = vec![];
        for p in chunk {
            match load_inputs(pre, p) {
                Ok(t) => loaded.push((p.clone(), t)),
                Err(reason) => skipped.push(Skipped { path: p.clone(), reason }),
            }
        }
        if loaded.is_empty() {
            continue;
        }
        let inputs: Vec<&Inputs> = loaded.iter().map(|(_, i)| i).collect();
        let classes = class.map(|k| vec![k as i64; inputs.len()]);
        match score_frames(engine, score, &inputs, classes.as_deref()) {
            Ok(scored) => {
                for ((path, inputs), (score, map)) in loaded.into_iter().zip(scored) {
                    out.push(ScoredFile { path, score, map, area: inputs.area });
                }
            }
            Err(e) => {
                for (path, _) in loaded {
                    skipped.push(Skipped { path, reason: e.to_string() });
                }
            }
        }
    }
    (out, skipped)
}

/// What `vigil-train eval` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    /// The bundle evaluated.
    pub bundle: String,
    /// The engine that ran it.
    pub engine: &'static str,
    /// Image-level AUROC (normal vs defective), when both exist.
    pub image_auroc: Option<f64>,
    /// Pixel-level AUROC over the test images that have masks (and all normal images).
    pub pixel_auroc: Option<f64>,
    /// Per-region overlap up to 30 % false positive rate, normalised.
    pub aupro: Option<f64>,
    /// The threshold: the class's in `per_class`, the bundle's (for a conditional bundle, the
    /// summary of its classes') at the top.
    pub threshold: f32,
    /// Counts, precision, recall and F1 at the threshold.
    pub at_threshold: Confusion,
    /// The highest recall any threshold reaches with at most 1 false alarm per 100 normal
    /// test images: what the model could catch at that operating point, whatever its threshold.
    pub recall_at_1_in_100: Option<f64>,
    /// AUROC of each defect type against the normal test images.
    pub auroc_per_type: BTreeMap<String, Option<f64>>,
    /// Test images per type.
    pub counts: BTreeMap<String, usize>,
    /// Files that could not be scored.
    pub skipped: Vec<Skipped>,
    /// The same per product class, when the test images have classes (a conditional model,
    /// or any model evaluated on the data of several products).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub per_class: BTreeMap<String, Evaluation>,
}

impl Evaluation {
    /// The mean over classes of their image AUROC (the pooled one without classes).
    pub fn mean_class_auroc(&self) -> Option<f64> {
        if self.per_class.is_empty() {
            return self.image_auroc;
        }
        let v: Vec<f64> = self.per_class.values().filter_map(|e| e.image_auroc).collect();
        (v.len() == self.per_class.len()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    }
}

/// Per-image results kept for reports.
#[derive(Debug, Clone)]
pub struct Detail {
    /// The test image.
    pub image: TestImage,
    /// Its score.
    pub score: f32,
    /// Its map.
    pub map: Option<Array2<f32>>,
    /// The part of the image the map covers.
    pub area: (u32, u32, u32, u32),
}

/// Evaluates `bundle` on labelled test images. Images with a class (an index into
/// `classes`, the data's class names) are also evaluated per class; a conditional bundle
/// scores each with its class (by name) and decides it by that class's threshold.
pub fn evaluate(
    bundle: &Bundle,
    engine: &LoadedEngine,
    test: &[TestImage],
    classes: &[String],
) -> (Evaluation, Vec<Detail>) {
    let m = &bundle.manifest;
    let mut details = vec![];
    let mut skipped = vec![];
    // Per class of the data: its images, the bundle's index for it, and its threshold.
    let mut groups: Vec<(Option<&str>, Vec<&TestImage>)> = vec![];
    for t in test {
        let name = t.class.and_then(|k| classes.get(k)).map(String::as_str);
        match groups.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => v.push(t),
            None => groups.push((name, vec![t])),
        }
    }
    let mut per_class_details: Vec<(String, Vec<Detail>, f32)> = vec![];
    for (name, images) in groups {
        let index = match (m.conditioning.is_some(), name) {
            (true, name) => match m.resolve_class(name) {
                Ok(k) => k,
                Err(reason) => {
                    skipped.extend(images.iter().map(|t| Skipped { path: t.path.clone(), reason: reason.clone() }));
                    continue;
                }
            },
            (false, _) => None,
        };
        let threshold = m.calibration(index).0.value;
        let (d, s) = score_details(bundle, engine, &images, index);
        skipped.extend(s);
        if let Some(name) = name {
            per_class_details.push((name.to_owned(), d.clone(), threshold));
        }
        details.extend(d.into_iter().map(|d| (d, threshold)));
    }
    let per_class = per_class_details
        .into_iter()
        .map(|(name, d, threshold)| {
            let d: Vec<(Detail, f32)> = d.into_iter().map(|d| (d, threshold)).collect();
            (name, summarize(bundle, engine, &d, threshold, vec![], BTreeMap::new()))
        })
        .collect();
    let evaluation = summarize(bundle, engine, &details, m.threshold.value, skipped, per_class);
    (evaluation, details.into_iter().map(|(d, _)| d).collect())
}

/// Scores `images` (of class `class`) and pairs each result with its image.
fn score_details(
    bundle: &Bundle,
    engine: &LoadedEngine,
    images: &[&TestImage],
    class: Option<usize>,
) -> (Vec<Detail>, Vec<Skipped>) {
    let pre = Preprocessor::new(&bundle.manifest.input);
    let paths: Vec<PathBuf> = images.iter().map(|t| t.path.clone()).collect();
    let (scored, skipped) = score_files(engine, &pre, &bundle.manifest.score, &paths, class);
    let by_path: BTreeMap<&Path, &TestImage> = images.iter().map(|t| (t.path.as_path(), *t)).collect();
    let details = scored
        .into_iter()
        .map(|s| Detail { image: by_path[s.path.as_path()].clone(), score: s.score, map: s.map, area: s.area })
        .collect();
    (details, skipped)
}

/// The metrics of scored images, each decided by the threshold beside it; `threshold` is the
/// one reported (a class's, or the bundle's).
fn summarize(
    bundle: &Bundle,
    engine: &LoadedEngine,
    details: &[(Detail, f32)],
    threshold: f32,
    mut skipped: Vec<Skipped>,
    per_class: BTreeMap<String, Evaluation>,
) -> Evaluation {
    let scores: Vec<f32> = details.iter().map(|(d, _)| d.score).collect();
    let labels: Vec<bool> = details.iter().map(|(d, _)| d.image.is_defect()).collect();
    // Decided per image by its own threshold: the margin over it against 0.
    let margins: Vec<f32> = details.iter().map(|(d, t)| d.score - t).collect();
    let details: Vec<&Detail> = details.iter().map(|(d, _)| d).collect();

    let mut per_type = BTreeMap::new();
    let mut counts = BTreeMap::new();
    for d in &details {
        *counts.entry(d.image.kind.clone()).or_insert(0) += 1;
    }
    for kind in counts.keys().filter(|k| *k != "good") {
        let (s, l): (Vec<f32>, Vec<bool>) = details
            .iter()
            .filter(|d| !d.image.is_defect() || &d.image.kind == kind)
            .map(|d| (d.score, d.image.is_defect()))
            .unzip();
        per_type.insert(kind.clone(), auroc(&s, &l));
    }

    // Pixel metrics over normal images (all-normal masks) and defects with masks.
    let mut maps = vec![];
    let mut masks = vec![];
    let mut dims = vec![];
    for d in details.iter().copied() {
        let Some(map) = &d.map else { continue };
        let (h, w) = map.dim();
        let mask = match &d.image.mask {
            Some(p) => match load_mask(p, d.area, w as u32, h as u32) {
                Ok(m) => m,
                Err(reason) => {
                    skipped.push(Skipped { path: p.clone(), reason });
                    continue;
                }
            },
            None if !d.image.is_defect() => vec![false; h * w],
            None => continue,
        };
        maps.push(map.iter().copied().collect::<Vec<f32>>());
        masks.push(mask);
        dims.push((w, h));
    }
    let has_masks = masks.iter().any(|m| m.iter().any(|t| *t));
    Evaluation {
        bundle: bundle.path.display().to_string(),
        engine: engine.name(),
        image_auroc: auroc(&scores, &labels),
        pixel_auroc: if has_masks { pixel_auroc(&maps, &masks, 4_000_000) } else { None },
        aupro: if has_masks { aupro(&maps, &masks, &dims, 0.3, 60) } else { None },
        threshold,
        at_threshold: confusion(&margins, &labels, 0.0),
        recall_at_1_in_100: recall_at_false_alarm_rate(&scores, &labels, 0.01),
        auroc_per_type: per_type,
        counts,
        skipped,
        per_class,
    }
}
