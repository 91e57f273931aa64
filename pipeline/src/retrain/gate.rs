//! The retrain gate: a held-out part of a camera's data set that no retrain trains or
//! calibrates on, both bundles (the served one and the new one) evaluated on it through their
//! exported graphs, the rule that decides whether the new one may replace the served one, and
//! the `gate.json` report of the decision.
//!
//! The rule judges counts, not point figures: how many held-out normals each bundle flags
//! (false alarms) and how many held-out defects it catches (recall), each with a 95 % Wilson
//! score interval, and the difference between the bundles with Newcombe's interval built from
//! them. The new bundle fails only when that interval says it is worse by more than the
//! tolerance, so one missed defect out of one cannot decide; recall is judged only from
//! [`MIN_HELD_DEFECTS`] held-out defects, and a pass without them says so.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;
use sha2::{Digest, Sha256};
use vigil_model::bundle::Bundle;
use vigil_model::engine::{self, EngineConfig};

use crate::data::sets::{MIN_NORMAL, TestImage, list_images};
pub use crate::evaluate::metrics::wilson;
use crate::evaluate::scores::evaluate;

/// The report's file name, written into the new bundle's folder.
pub const REPORT_FILE: &str = "gate.json";

/// The folder of a data set that holds its held-out files, as the daemon records them:
/// `<dataset>/held-out/normal/` and `<dataset>/held-out/abnormal/`.
pub const HELD_OUT_DIR: &str = "held-out";

/// The share of a data set's files held out, by name (data sets without a recorded hold-out).
pub const HOLDOUT_FRACTION: f64 = 0.2;

/// The fewest held-out normal images the gate judges on.
pub const MIN_HELD_NORMAL: usize = 2;

/// The fewest held-out confirmed defects (scored by both bundles) from which the gate judges
/// recall; below, it judges false alarms only and says so. With 5, a new bundle that misses 3
/// defects the served one caught fails; 1 or 2 misses are within chance.
pub const MIN_HELD_DEFECTS: usize = 5;

/// The confidence of the intervals.
pub const CONFIDENCE: f64 = 0.95;

/// How much worse the new bundle may be than the served one and still replace it, beyond
/// what chance explains.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Tolerances {
    /// Recall on held-out defects (each bundle at its own threshold) may be this much lower.
    pub recall: f64,
    /// The false-alarm rate on held-out normals (each at its own threshold) may be this much
    /// higher.
    pub false_alarm: f64,
}

impl Default for Tolerances {
    fn default() -> Self {
        Tolerances { recall: 0.0, false_alarm: 0.0 }
    }
}

/// Where the held-out files came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldOutSource {
    /// Chosen here from the files' names (folders not written by the daemon, or written before
    /// it recorded a hold-out).
    #[default]
    ByName,
    /// Read from the data set's `held-out/` folder, where the daemon put each file when it
    /// came in (decided with the box's secret key, so a frame's publisher cannot choose).
    Recorded,
}

/// The held-out files of a data set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HeldOut {
    /// Normal images.
    pub normal: Vec<PathBuf>,
    /// Confirmed defects.
    pub abnormal: Vec<PathBuf>,
    /// Where the split came from.
    pub source: HoldOutSource,
}

/// Where a file falls, from its name alone: a number in `[0, 1)`; files under
/// [`HOLDOUT_FRACTION`] are held out. Its name alone, so that a file keeps its side as the
/// data set grows and every retrain holds out the same files. Anyone who names the files can
/// compute it: the daemon's data set records its own keyed hold-out instead ([`recorded`]).
pub fn holdout_rank(path: &Path) -> f64 {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut h = Sha256::new();
    h.update(b"vigil-gate\0");
    h.update(name.as_bytes());
    let bytes: [u8; 8] = h.finalize()[..8].try_into().expect("8 bytes");
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// Splits `files` into (kept, held out): those ranked under [`HOLDOUT_FRACTION`] are held
/// out, topped up with the next ranked to at least `min_held`, and given back from the top so
/// that at least `min_kept` stay (a small data set needs both sides). Both sorted by path.
pub fn split_holdout(files: Vec<PathBuf>, min_held: usize, min_kept: usize) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut ranked: Vec<(f64, PathBuf)> = files.into_iter().map(|p| (holdout_rank(&p), p)).collect();
    ranked.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    let by_rank = ranked.iter().filter(|(r, _)| *r < HOLDOUT_FRACTION).count();
    let n = by_rank.max(min_held).min(ranked.len().saturating_sub(min_kept));
    let mut held: Vec<PathBuf> = ranked[..n].iter().map(|(_, p)| p.clone()).collect();
    let mut kept: Vec<PathBuf> = ranked[n..].iter().map(|(_, p)| p.clone()).collect();
    held.sort();
    kept.sort();
    (kept, held)
}

/// The training side of a data set after the hold-out: folders of links to the kept files,
/// which is what training and calibration read.
#[derive(Debug, Clone)]
pub struct Staged {
    /// Links to the kept normal images.
    pub normal: PathBuf,
    /// Links to the kept confirmed defects (calibration), when any are kept.
    pub abnormal: Option<PathBuf>,
    /// The held-out files.
    pub held_out: HeldOut,
}

/// Holds out part of the normal images in `normal` and of the defects in `abnormal` (if
/// given) by name, and links the rest into `into/normal` and `into/abnormal`.
pub fn stage(normal: &Path, abnormal: Option<&Path>, into: &Path) -> anyhow::Result<Staged> {
    let normals = list_images(normal)?;
    let needed = MIN_NORMAL + MIN_HELD_NORMAL;
    anyhow::ensure!(
        normals.len() >= needed,
        "data set {}: {} normal image(s); the gate holds out at least {MIN_HELD_NORMAL} and training needs {MIN_NORMAL}, so collect at least {needed} (or retrain without --gate)",
        normal.display(),
        normals.len()
    );
    let (kept_normal, held_normal) = split_holdout(normals, MIN_HELD_NORMAL, MIN_NORMAL);
    let defects = match abnormal {
        Some(dir) => list_images(dir)?,
        None => vec![],
    };
    // Enough defects held out for the gate to judge recall when there are enough to spare as
    // many for calibrating the threshold; fewer are held out by rank alone (recall is then
    // not judged, and the report says so).
    let min_held = if defects.len() >= 2 * MIN_HELD_DEFECTS { MIN_HELD_DEFECTS } else { 0 };
    let (kept_defects, held_defects) = split_holdout(defects, min_held, 0);
    if into.exists() {
        std::fs::remove_dir_all(into).with_context(|| format!("clearing {}", into.display()))?;
    }
    let link_all = |files: &[PathBuf], dir: &Path| -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for f in files {
            let target = std::fs::canonicalize(f).with_context(|| format!("{}: cannot resolve", f.display()))?;
            let link = dir.join(f.file_name().expect("listed files have names"));
            std::os::unix::fs::symlink(&target, &link)
                .with_context(|| format!("linking {} to {}", link.display(), target.display()))?;
        }
        Ok(())
    };
    let staged_normal = into.join("normal");
    link_all(&kept_normal, &staged_normal)?;
    let staged_abnormal = if kept_defects.is_empty() {
        None
    } else {
        let dir = into.join("abnormal");
        link_all(&kept_defects, &dir)?;
        Some(dir)
    };
    Ok(Staged {
        normal: staged_normal,
        abnormal: staged_abnormal,
        held_out: HeldOut { normal: held_normal, abnormal: held_defects, source: HoldOutSource::ByName },
    })
}

/// The hold-out the daemon recorded in a data set (`<dataset>/held-out/{normal,abnormal}`),
/// read as it is: the files there are held out, the ones in `<dataset>/normal` and
/// `<dataset>/abnormal` train and calibrate. `None` when the data set has no such folder.
pub fn recorded(dataset: &Path) -> anyhow::Result<Option<HeldOut>> {
    let dir = dataset.join(HELD_OUT_DIR);
    if !dir.is_dir() {
        return Ok(None);
    }
    let list = |kind: &str| -> anyhow::Result<Vec<PathBuf>> {
        let d = dir.join(kind);
        Ok(if d.is_dir() { list_images(&d)? } else { vec![] })
    };
    let held = HeldOut { normal: list("normal")?, abnormal: list("abnormal")?, source: HoldOutSource::Recorded };
    anyhow::ensure!(
        held.normal.len() >= MIN_HELD_NORMAL,
        "data set {}: {} held-out normal image(s) in {}; the gate judges on at least {MIN_HELD_NORMAL}. The daemon holds out about 1 in {} of the frames it adds: collect more (dataset.sample_normal, false-alarm verdicts) or retrain without --gate",
        dataset.display(),
        held.normal.len(),
        dir.join("normal").display(),
        (1.0 / HOLDOUT_FRACTION).round()
    );
    Ok(Some(held))
}

/// One bundle's figures on the held-out files.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figures {
    /// The bundle folder.
    pub bundle: PathBuf,
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: u32,
    /// Its threshold (raw score units).
    pub threshold: f32,
    /// Image AUROC, held-out defects against held-out normals (with defects); reported, not
    /// judged.
    pub image_auroc: Option<f64>,
    /// F1 at its threshold (with defects); reported, not judged.
    pub f1: Option<f64>,
    /// Share of held-out normals over its threshold.
    pub false_alarm_rate: f64,
    /// Held-out normals it scored.
    pub normals: usize,
    /// Held-out defects it scored.
    pub defects: usize,
    /// Files it could not score.
    pub skipped: usize,
    /// Held-out normals over its threshold.
    pub false_alarms: usize,
    /// Held-out defects over its threshold.
    pub detected: usize,
    /// `detected / defects` (with defects).
    pub recall: Option<f64>,
}

/// Evaluates `bundle` on the held-out files through its exported graph.
pub fn figures(bundle: &Bundle, engine: &engine::LoadedEngine, held: &HeldOut) -> Figures {
    let test: Vec<TestImage> = held
        .normal
        .iter()
        .map(|p| (p, "good"))
        .chain(held.abnormal.iter().map(|p| (p, "defect")))
        .map(|(p, kind)| TestImage { path: p.clone(), kind: kind.into(), mask: None, class: None })
        .collect();
    let (e, _) = evaluate(bundle, engine, &test, &[]);
    let c = &e.at_threshold;
    let (normals, defects) = (c.fp + c.tn, c.tp + c.r#fn);
    let m = &bundle.manifest;
    Figures {
        bundle: bundle.path.clone(),
        name: m.name.clone(),
        version: m.version,
        threshold: e.threshold,
        image_auroc: e.image_auroc,
        f1: (defects > 0).then_some(c.f1),
        false_alarm_rate: if normals > 0 { c.fp as f64 / normals as f64 } else { 0.0 },
        normals,
        defects,
        skipped: e.skipped.len(),
        false_alarms: c.fp,
        detected: c.tp,
        recall: (defects > 0).then(|| c.tp as f64 / defects as f64),
    }
}

/// A count out of a total, with its interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Count {
    /// How many.
    pub count: usize,
    /// Out of how many.
    pub of: usize,
    /// `count / of`, when `of > 0`.
    pub rate: Option<f64>,
    /// The [`CONFIDENCE`] Wilson interval of the rate.
    pub interval: [f64; 2],
}

impl Count {
    /// `count` of `of`.
    pub fn new(count: usize, of: usize) -> Count {
        Count { count, of, rate: (of > 0).then(|| count as f64 / of as f64), interval: wilson(count, of) }
    }
}

/// Newcombe's hybrid score interval of `new.rate - served.rate` (his method 10), from the two
/// Wilson intervals. It treats the two counts as independent; on the same held-out files they
/// are positively correlated, so the interval is wider than need be: the gate errs towards
/// "not shown to be worse".
pub fn difference(new: &Count, served: &Count) -> [f64; 2] {
    let (Some(p1), Some(p2)) = (new.rate, served.rate) else { return [-1.0, 1.0] };
    let ([l1, u1], [l2, u2]) = (new.interval, served.interval);
    let d = p1 - p2;
    [d - ((p1 - l1).powi(2) + (u2 - p2).powi(2)).sqrt(), d + ((u1 - p1).powi(2) + (p2 - l2).powi(2)).sqrt()]
}

/// One judged quantity: both bundles' counts, the interval of their difference, and whether it
/// shows the new bundle worse beyond the tolerance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// Whether it was judged (enough held-out files).
    pub judged: bool,
    /// Why not, when it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_judged: Option<String>,
    /// The served bundle's count.
    pub served: Count,
    /// The new bundle's count.
    pub new: Count,
    /// The [`CONFIDENCE`] interval of the new rate minus the served one.
    pub difference: [f64; 2],
    /// How much worse is allowed.
    pub tolerance: f64,
    /// Judged, and worse beyond the tolerance.
    pub worse: bool,
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// Whether the new bundle may replace the served one.
    pub passed: bool,
    /// The rule applied, in words.
    pub rule: String,
    /// Why it passed or failed, with the figures.
    pub reason: String,
    /// False alarms on the held-out normals.
    pub false_alarms: Comparison,
    /// Recall on the held-out defects.
    pub recall: Comparison,
}

/// Below this, a difference is rounding, not a change.
const EPS: f64 = 1e-9;

fn fraction(c: &Count) -> String {
    format!("{} of {}", c.count, c.of)
}

/// The rule. False alarms: the new bundle fails when the [`CONFIDENCE`] interval of its
/// false-alarm rate minus the served one's (each at its own threshold, on the held-out
/// normals) lies wholly above `tol.false_alarm`. Recall, judged from [`MIN_HELD_DEFECTS`]
/// held-out defects: it fails when the interval of its recall minus the served one's lies
/// wholly below `-tol.recall`. Otherwise it passes; without enough defects the reason says
/// that recall was not judged.
pub fn judge(served: &Figures, new: &Figures, tol: &Tolerances) -> Decision {
    let rule = format!(
        "each bundle at its own threshold, counts on the held-out files with {:.0} % intervals (Wilson; Newcombe for the difference): fails when its false-alarm rate on the held-out normals is shown to be more than {} higher than the served bundle's, or, with at least {MIN_HELD_DEFECTS} held-out confirmed defects, its recall on them shown to be more than {} lower",
        CONFIDENCE * 100.0,
        tol.false_alarm,
        tol.recall
    );
    let fa_served = Count::new(served.false_alarms, served.normals);
    let fa_new = Count::new(new.false_alarms, new.normals);
    let fa_diff = difference(&fa_new, &fa_served);
    let fa_judged = new.normals > 0;
    let false_alarms = Comparison {
        judged: fa_judged,
        not_judged: (!fa_judged).then(|| "the new bundle scored none of the held-out normals".to_owned()),
        worse: fa_judged && fa_diff[0] > tol.false_alarm + EPS,
        served: fa_served,
        new: fa_new,
        difference: fa_diff,
        tolerance: tol.false_alarm,
    };
    let r_served = Count::new(served.detected, served.defects);
    let r_new = Count::new(new.detected, new.defects);
    let r_diff = difference(&r_new, &r_served);
    let defects = served.defects.min(new.defects);
    let recall_judged = defects >= MIN_HELD_DEFECTS;
    let recall = Comparison {
        judged: recall_judged,
        not_judged: (!recall_judged).then(|| {
            format!("{defects} held-out confirmed defect(s), fewer than the {MIN_HELD_DEFECTS} recall is judged from")
        }),
        worse: recall_judged && r_diff[1] < -tol.recall - EPS,
        served: r_served,
        new: r_new,
        difference: r_diff,
        tolerance: tol.recall,
    };
    let held = format!("{} held-out normal(s) and {} defect(s)", new.normals, new.defects);
    let fa_line = format!(
        "false alarms {} against {} (difference {:+.3} to {:+.3})",
        fraction(&false_alarms.new),
        fraction(&false_alarms.served),
        fa_diff[0],
        fa_diff[1]
    );
    let recall_line = format!(
        "recall {} against {} (difference {:+.3} to {:+.3})",
        fraction(&recall.new),
        fraction(&recall.served),
        r_diff[0],
        r_diff[1]
    );
    let mut failures = vec![];
    if !false_alarms.judged {
        failures.push("the new bundle scored none of the held-out normals".to_owned());
    } else if false_alarms.worse {
        failures.push(format!(
            "more false alarms: {} held-out normals against {}: at least {:.3} more ({:.0} % confidence), more than the {} allowed",
            fraction(&false_alarms.new),
            fraction(&false_alarms.served),
            fa_diff[0],
            CONFIDENCE * 100.0,
            tol.false_alarm
        ));
    }
    if recall.worse {
        failures.push(format!(
            "lower recall: {} held-out defects caught against {}: at least {:.3} lower ({:.0} % confidence), more than the {} allowed",
            fraction(&recall.new),
            fraction(&recall.served),
            -r_diff[1],
            CONFIDENCE * 100.0,
            tol.recall
        ));
    }
    let reason = if !failures.is_empty() {
        format!("worse on {held}: {}", failures.join("; "))
    } else if recall.judged {
        format!("not shown to be worse on {held}: {fa_line}; {recall_line}")
    } else {
        format!(
            "passed on false alarms only, recall not judged ({}): not shown to be worse on {held}: {fa_line}",
            recall.not_judged.as_deref().unwrap_or_default()
        )
    };
    Decision { passed: failures.is_empty(), rule, reason, false_alarms, recall }
}

/// What `gate.json` holds.
#[derive(Debug, Clone, Serialize)]
pub struct GateReport {
    /// Whether the new bundle may replace the served one.
    pub passed: bool,
    /// The rule applied.
    pub rule: String,
    /// Why, in words.
    pub reason: String,
    /// The tolerances.
    pub tolerances: Tolerances,
    /// The engine both ran on.
    pub engine: &'static str,
    /// The served bundle's figures.
    pub served: Figures,
    /// The new bundle's figures.
    pub new: Figures,
    /// The held-out files, by name.
    pub held_out: HeldOutNames,
    /// Whether recall on held-out defects was judged; false: the new bundle passed (or failed)
    /// on false alarms alone, and a less sensitive bundle could have passed.
    pub recall_judged: bool,
    /// The fewest held-out defects recall is judged from.
    pub min_held_defects: usize,
    /// The confidence of the intervals.
    pub confidence: f64,
    /// False alarms on the held-out normals, both bundles' counts and their difference.
    pub false_alarms: Comparison,
    /// Recall on the held-out defects, the same.
    pub recall: Comparison,
}

/// The held-out files' names (the folders are the data set's).
#[derive(Debug, Clone, Serialize)]
pub struct HeldOutNames {
    /// Normal images.
    pub normal: Vec<String>,
    /// Confirmed defects.
    pub abnormal: Vec<String>,
    /// Where the split came from: `recorded` (the daemon's `held-out/` folder) or `by_name`.
    pub source: HoldOutSource,
}

impl GateReport {
    /// One line for the log and the terminal.
    pub fn summary(&self) -> String {
        let why = self.recall.not_judged.as_deref().unwrap_or_default();
        let only = match (self.recall_judged, self.passed) {
            (true, _) => String::new(),
            (false, true) => {
                format!(" on false alarms only (recall not judged: {why}; a less sensitive bundle passes this too)")
            }
            (false, false) => format!(" (recall not judged: {why})"),
        };
        format!(
            "gate {}{only}: {} v{} against served {} v{}: {}",
            if self.passed { "passed" } else { "failed" },
            self.new.name,
            self.new.version,
            self.served.name,
            self.served.version,
            self.reason
        )
    }
}

/// Evaluates the served bundle and the new one on `held` with the same engine, applies the
/// rule, and writes `gate.json` into the new bundle's folder.
pub fn gate(
    served: &Path,
    new: &Path,
    held: &HeldOut,
    tol: &Tolerances,
    engine: &EngineConfig,
) -> anyhow::Result<GateReport> {
    let served = Bundle::load(served)?;
    let new = Bundle::load(new)?;
    let served_engine = engine::load(&served, engine)?;
    let new_engine = engine::load(&new, engine)?;
    let (s, n) = (figures(&served, &served_engine, held), figures(&new, &new_engine, held));
    let d = judge(&s, &n, tol);
    let names = |v: &[PathBuf]| -> Vec<String> {
        v.iter().map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()).collect()
    };
    let report = GateReport {
        passed: d.passed,
        rule: d.rule,
        reason: d.reason,
        tolerances: *tol,
        engine: new_engine.name(),
        served: s,
        new: n,
        held_out: HeldOutNames { normal: names(&held.normal), abnormal: names(&held.abnormal), source: held.source },
        recall_judged: d.recall.judged,
        min_held_defects: MIN_HELD_DEFECTS,
        confidence: CONFIDENCE,
        false_alarms: d.false_alarms,
        recall: d.recall,
    };
    let path = new.path.join(REPORT_FILE);
    vigil_model::fsio::write_atomic(&path, &serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(report)
}
