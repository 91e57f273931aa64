//! The retrain gate: a held-out part of a camera's data set that no retrain trains or
//! calibrates on, both bundles (the served one and the new one) evaluated on it through their
//! exported graphs, the rule that decides whether the new one may replace the served one, and
//! the `gate.json` report of the decision.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;
use sha2::{Digest, Sha256};
use vigil_model::bundle::Bundle;
use vigil_model::engine::{self, EngineConfig};

use crate::data::{MIN_NORMAL, TestImage, list_images};
use crate::evaluate::evaluate;

/// The report's file name, written into the new bundle's folder.
pub const REPORT_FILE: &str = "gate.json";

/// The share of a data set's files held out, by name.
pub const HOLDOUT_FRACTION: f64 = 0.2;

/// The fewest held-out normal images the gate judges on.
pub const MIN_HELD_NORMAL: usize = 2;

/// How much worse the new bundle may be than the served one and still replace it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Tolerances {
    /// Image AUROC may be this much lower (with confirmed defects).
    pub auroc: f64,
    /// F1 at each bundle's own threshold may be this much lower (with confirmed defects).
    pub f1: f64,
    /// The false-alarm rate on held-out normals may be this much higher (without defects).
    pub false_alarm: f64,
}

impl Default for Tolerances {
    fn default() -> Self {
        Tolerances { auroc: 0.01, f1: 0.02, false_alarm: 0.0 }
    }
}

/// The held-out files of a data set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HeldOut {
    /// Normal images.
    pub normal: Vec<PathBuf>,
    /// Confirmed defects.
    pub abnormal: Vec<PathBuf>,
}

/// Where a file falls, from its name alone: a number in `[0, 1)`; files under
/// [`HOLDOUT_FRACTION`] are held out. Its name alone, so that a file keeps its side as the
/// data set grows and every retrain holds out the same files.
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
/// given), and links the rest into `into/normal` and `into/abnormal`.
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
    // One defect held out at least, when there are any: judging by defects is the stronger
    // rule, and the rest calibrate the threshold.
    let (kept_defects, held_defects) = split_holdout(defects, 1, 0);
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
        held_out: HeldOut { normal: held_normal, abnormal: held_defects },
    })
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
    /// Image AUROC, held-out defects against held-out normals (with defects).
    pub image_auroc: Option<f64>,
    /// F1 at its threshold (with defects).
    pub f1: Option<f64>,
    /// Share of held-out normals over its threshold.
    pub false_alarm_rate: f64,
    /// Held-out normals it scored.
    pub normals: usize,
    /// Held-out defects it scored.
    pub defects: usize,
    /// Files it could not score.
    pub skipped: usize,
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
    }
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
}

/// Below this, a difference is rounding, not a change.
const EPS: f64 = 1e-9;

/// The rule: with held-out defects, the new bundle's image AUROC may be at most
/// `tol.auroc` lower and its F1 at its own threshold at most `tol.f1` lower than the served
/// one's; without, its false-alarm rate on held-out normals (at its own threshold) may be at
/// most `tol.false_alarm` higher.
pub fn judge(served: &Figures, new: &Figures, tol: &Tolerances) -> Decision {
    let with_defects = served.defects > 0 && new.defects > 0;
    if with_defects {
        let rule = format!(
            "with confirmed defects: image AUROC at most {} lower and F1 at the bundle's own threshold at most {} lower than the served bundle's",
            tol.auroc, tol.f1
        );
        let mut failures = vec![];
        let mut figures = vec![];
        for (what, s, n, allowed) in
            [("image AUROC", served.image_auroc, new.image_auroc, tol.auroc), ("F1", served.f1, new.f1, tol.f1)]
        {
            match (s, n) {
                (Some(s), Some(n)) => {
                    let line = format!("{what} {n:.4} against {s:.4}");
                    if n < s - allowed - EPS {
                        failures.push(format!("{line}: {:.4} lower, more than the {allowed} allowed", s - n));
                    } else {
                        figures.push(line);
                    }
                }
                (_, None) => failures.push(format!("{what} of the new bundle could not be computed")),
                // The served bundle gave none: nothing to be worse than.
                (None, Some(n)) => figures.push(format!("{what} {n:.4} (the served bundle gave none)")),
            }
        }
        let held = format!("on {} held-out normal(s) and {} defect(s)", new.normals, new.defects);
        return if failures.is_empty() {
            Decision { passed: true, rule, reason: format!("not worse {held}: {}", figures.join("; ")) }
        } else {
            Decision { passed: false, rule, reason: format!("worse {held}: {}", failures.join("; ")) }
        };
    }
    let rule = format!(
        "no confirmed defects held out: the false-alarm rate on held-out normals, each bundle at its own threshold, at most {} higher than the served bundle's",
        tol.false_alarm
    );
    let line = format!(
        "false-alarm rate {:.4} ({} of {} held-out normals) against {:.4}",
        new.false_alarm_rate,
        (new.false_alarm_rate * new.normals as f64).round(),
        new.normals,
        served.false_alarm_rate
    );
    if new.normals == 0 {
        return Decision { passed: false, rule, reason: "the new bundle scored none of the held-out normals".into() };
    }
    if new.false_alarm_rate > served.false_alarm_rate + tol.false_alarm + EPS {
        Decision { passed: false, rule, reason: format!("more false alarms: {line}") }
    } else {
        Decision { passed: true, rule, reason: format!("no more false alarms: {line}") }
    }
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
}

/// The held-out files' names (the folders are the data set's).
#[derive(Debug, Clone, Serialize)]
pub struct HeldOutNames {
    /// Normal images.
    pub normal: Vec<String>,
    /// Confirmed defects.
    pub abnormal: Vec<String>,
}

impl GateReport {
    /// One line for the log and the terminal.
    pub fn summary(&self) -> String {
        format!(
            "gate {}: {} v{} against served {} v{}: {}",
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
        held_out: HeldOutNames { normal: names(&held.normal), abnormal: names(&held.abnormal) },
    };
    let path = new.path.join(REPORT_FILE);
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(report)
}
