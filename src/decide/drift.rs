//! Drift: whether a camera's recent scores still look like the ones its bundle was calibrated
//! on. A bumped camera, an ageing lamp, a dirty lens or a new batch of material moves every
//! frame's score a little (an alert storm to come) or flattens the map (silence); neither is a
//! defect, and both mean the model no longer matches the camera.
//!
//! Two measures over each camera's last `window` scored frames (alerts too, so a storm is
//! seen), each frame in the units of its bundle's calibration (the manifest's `normalization`
//! and threshold; a conditional model's per class):
//!
//! - **the centre**: the window's median of `(score - median) / std` of the validation normals'
//!   scores. The median, not the mean: a real defect now and then does not move it, a change
//!   of the whole view does, up (more alerts to come) or down (a flat map: silence). The bound
//!   widens with what is not known: the calibration's median comes from `count` images and the
//!   window's from `window` frames, so a difference of `sensitivity` standard errors of the two
//!   medians together (1.25·σ/√n each) is needed, and never less than `min_shift`;
//! - **the tail**: the share of the window above the bundle's calibrated threshold, which a
//!   degrading view raises long before it moves the centre (a map's maximum feels a change
//!   first); drift when it exceeds `tail_share`, several times what the calibration lets
//!   through (a 0.995 quantile: 0.5 %).
//!
//! It clears when both are back within half their bounds.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::problem::Problems;

/// `[drift]`: when a camera's scores no longer look like its calibration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DriftConfig {
    /// Judge drift (per camera, on every scored frame).
    pub enabled: bool,
    /// Scored frames whose median is compared with the calibration's.
    pub window: usize,
    /// How many standard errors of the two medians (the window's and the calibration's) the
    /// difference must exceed; higher: fewer false drifts, later true ones.
    pub sensitivity: f64,
    /// The smallest shift reported as drift, in calibration standard deviations, however many
    /// images the calibration had.
    pub min_shift: f64,
    /// The share of the window above the bundle's calibrated threshold that is drift (an alert
    /// storm in the making); a line whose real defect rate is near it should raise it.
    pub tail_share: f64,
}

impl Default for DriftConfig {
    fn default() -> Self {
        DriftConfig { enabled: true, window: 200, sensitivity: 5.0, min_shift: 0.25, tail_share: 0.05 }
    }
}

impl DriftConfig {
    /// Checks the values.
    pub fn validate(&self, p: &mut Problems) {
        if !(20..=100_000).contains(&self.window) {
            p.add("drift.window", "must be between 20 and 100000 frames");
        }
        if !(self.sensitivity.is_finite() && self.sensitivity > 0.0) {
            p.add("drift.sensitivity", "must be a positive number (standard errors; the default is 5)");
        }
        if !(self.min_shift.is_finite() && self.min_shift >= 0.0) {
            p.add("drift.min_shift", "must be 0 or more (calibration standard deviations)");
        }
        if !(self.tail_share > 0.0 && self.tail_share <= 1.0) {
            p.add("drift.tail_share", "must be in (0, 1]: a share of the window's frames (the default is 0.05)");
        }
    }

    /// The bound on the median's shift, in calibration standard deviations, for a calibration
    /// of `count` images.
    pub fn bound(&self, count: usize) -> f64 {
        let se = 1.25 * (1.0 / count.max(1) as f64 + 1.0 / self.window.max(1) as f64).sqrt();
        (self.sensitivity * se).max(self.min_shift)
    }
}

/// A change of a camera's drift state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Change {
    /// The window's median left the bound.
    Raised(Reading),
    /// It came back within half the bound.
    Cleared(Reading),
    /// The first judgement of a window (after a start or a new bundle): no drift.
    Quiet(Reading),
    /// A drifting camera got a new bundle: its state is unknown until a new window is full.
    Reset,
}

/// Where a camera's scores stand.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Reading {
    /// The window's median, in calibration standard deviations from the calibration's median
    /// (positive: higher scores).
    pub shift: f64,
    /// The bound it is judged against.
    pub bound: f64,
    /// The share of the window above the calibrated threshold.
    pub tail: f64,
    /// Frames in the window.
    pub frames: usize,
}

impl Reading {
    /// Whether this reading is drift under `cfg`.
    pub fn beyond(&self, cfg: &DriftConfig) -> bool {
        self.shift.abs() > self.bound || self.tail > cfg.tail_share
    }

    /// Whether it is back within half of both bounds.
    pub fn settled(&self, cfg: &DriftConfig) -> bool {
        self.shift.abs() <= self.bound / 2.0 && self.tail <= cfg.tail_share / 2.0
    }

    /// What an operator reads when `camera` drifts: what moved, and what to do.
    pub fn message(&self, camera: &str, cfg: &DriftConfig) -> String {
        let direction = if self.shift > 0.0 { "above" } else { "below" };
        format!(
            "The scores of {camera} have drifted: of its last {} frames, {:.1} % scored above the calibrated threshold (drift beyond {:.1} %), and their median is {:.2} calibration standard deviations {direction} the calibration's (drift beyond {:.2}). The view may have changed (camera moved, lighting, dirty lens, new material): check the camera, or retrain on current good parts (`vigil retrain --camera {camera}`).",
            self.frames,
            100.0 * self.tail,
            100.0 * cfg.tail_share,
            self.shift.abs(),
            self.bound
        )
    }
}

/// One camera's recent scores, in calibration units, and its drift state.
#[derive(Debug, Clone)]
pub struct Tracker {
    window: usize,
    /// Each frame: its score in calibration units, and whether it was above the calibrated
    /// threshold.
    recent: VecDeque<(f32, bool)>,
    /// How many of `recent` were above the threshold.
    above: usize,
    /// Reused for the median, so that a frame allocates nothing.
    scratch: Vec<f32>,
    /// The bundle whose calibration the window is in (its model's SHA-256): a new bundle
    /// starts a new window.
    model: String,
    bound: f64,
    drifting: bool,
    /// The reading of the last frame, once the window is full.
    last: Option<Reading>,
}

impl Tracker {
    /// An empty tracker.
    pub fn new(window: usize) -> Tracker {
        Tracker {
            window,
            recent: VecDeque::with_capacity(window),
            above: 0,
            scratch: Vec::with_capacity(window),
            model: String::new(),
            bound: 0.0,
            drifting: false,
            last: None,
        }
    }

    /// Whether the camera is drifting now.
    pub fn drifting(&self) -> bool {
        self.drifting
    }

    /// The reading after the last frame, once a window is full.
    pub fn last(&self) -> Option<Reading> {
        self.last
    }

    /// Adds one scored frame of the bundle `model`: `z`, its score in the units of a calibration
    /// of `count` images, and whether it was `above` the calibrated threshold; a change of
    /// state, if any. A new bundle clears the window (and the state: it is judged afresh once
    /// its window is full).
    pub fn observe(&mut self, cfg: &DriftConfig, model: &str, z: f32, above: bool, count: usize) -> Option<Change> {
        let mut change = None;
        if self.model != model {
            if self.drifting {
                change = Some(Change::Reset);
            }
            self.model = model.to_owned();
            self.recent.clear();
            self.above = 0;
            self.drifting = false;
            self.last = None;
        }
        self.bound = cfg.bound(count);
        if !z.is_finite() {
            return change;
        }
        if self.recent.len() == self.window
            && let Some((_, was_above)) = self.recent.pop_front()
        {
            self.above -= usize::from(was_above);
        }
        self.recent.push_back((z, above));
        self.above += usize::from(above);
        if self.recent.len() < self.window {
            return change;
        }
        let reading = Reading {
            shift: self.median(),
            bound: self.bound,
            tail: self.above as f64 / self.recent.len() as f64,
            frames: self.recent.len(),
        };
        let first = self.last.replace(reading).is_none();
        if !self.drifting && reading.beyond(cfg) {
            self.drifting = true;
            return Some(Change::Raised(reading));
        }
        if first {
            return Some(Change::Quiet(reading));
        }
        if self.drifting && reading.settled(cfg) {
            self.drifting = false;
            return Some(Change::Cleared(reading));
        }
        change
    }

    /// The window's median now (0 when empty).
    pub fn median(&mut self) -> f64 {
        if self.recent.is_empty() {
            return 0.0;
        }
        self.scratch.clear();
        self.scratch.extend(self.recent.iter().map(|(z, _)| *z));
        let mid = self.scratch.len() / 2;
        let (_, m, _) = self.scratch.select_nth_unstable_by(mid, f32::total_cmp);
        *m as f64
    }
}

/// A score in its calibration's units: `(score - median) / std` (`None` when the calibration
/// cannot scale: no spread).
pub fn standardise(score: f32, n: &vigil_model::bundle::manifest::Normalization) -> Option<f32> {
    (n.std.is_finite() && n.std > 0.0).then(|| (score - n.median) / n.std)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_model::rng::Rng;

    fn normal(rng: &mut Rng) -> f32 {
        // Box–Muller.
        let (u, v) = (rng.uniform().max(1e-12), rng.uniform());
        ((-2.0 * (u as f64).ln()).sqrt() * (2.0 * std::f64::consts::PI * v as f64).cos()) as f32
    }

    #[test]
    fn a_shift_raises_drift_and_its_return_clears_it() {
        let cfg = DriftConfig::default();
        let mut t = Tracker::new(cfg.window);
        let mut rng = Rng::new(1);
        let feed = |t: &mut Tracker, rng: &mut Rng, offset: f32, n: usize| -> Vec<Change> {
            (0..n).filter_map(|_| t.observe(&cfg, "m", normal(rng) + offset, false, 120)).collect()
        };
        let first = feed(&mut t, &mut rng, 0.0, 1000);
        assert!(matches!(first[..], [Change::Quiet(r)] if r.frames == cfg.window), "judged once full: {first:?}");
        let raised = feed(&mut t, &mut rng, 1.5, 400);
        assert!(matches!(raised[..], [Change::Raised(r)] if r.shift > r.bound), "{raised:?}");
        assert!(t.drifting());
        let cleared = feed(&mut t, &mut rng, 0.0, 400);
        assert!(matches!(cleared[..], [Change::Cleared(_)]), "{cleared:?}");
        // Silence (a flat map) is drift too.
        let down = feed(&mut t, &mut rng, -2.0, 400);
        assert!(matches!(down[..], [Change::Raised(r)] if r.shift < -r.bound), "{down:?}");
        // A new bundle: judged afresh.
        assert_eq!(t.observe(&cfg, "other", 0.0, false, 120), Some(Change::Reset));
        assert!(!t.drifting() && t.last().is_none());
    }

    #[test]
    fn the_bound_widens_for_a_small_calibration_and_never_falls_below_the_floor() {
        let cfg = DriftConfig::default();
        assert!(cfg.bound(20) > cfg.bound(120));
        assert!(cfg.bound(120) > cfg.bound(100_000));
        assert_eq!(DriftConfig { sensitivity: 0.01, ..cfg.clone() }.bound(20), cfg.min_shift);
        let mut p = Problems::default();
        DriftConfig { window: 3, sensitivity: f64::NAN, min_shift: -1.0, enabled: true, tail_share: 0.0 }
            .validate(&mut p);
        let text: String = p.into_vec().iter().map(|x| x.to_string()).collect();
        assert!(
            text.contains("drift.window") && text.contains("drift.sensitivity") && text.contains("drift.min_shift")
        );
    }

    #[test]
    fn an_alert_storm_raises_it_before_the_centre_moves() {
        let cfg = DriftConfig::default();
        let mut t = Tracker::new(cfg.window);
        let mut rng = Rng::new(3);
        // The centre stays; one frame in twelve crosses the threshold (8 %).
        let changes: Vec<Change> =
            (0..1000).filter_map(|i| t.observe(&cfg, "m", normal(&mut rng), i % 12 == 0, 120)).collect();
        assert!(
            matches!(changes[..], [Change::Raised(r)] if r.tail > cfg.tail_share && r.shift.abs() < r.bound),
            "{changes:?}"
        );
    }

    #[test]
    fn occasional_defects_do_not_raise_it() {
        let cfg = DriftConfig::default();
        let mut t = Tracker::new(cfg.window);
        let mut rng = Rng::new(2);
        let changes: Vec<Change> = (0..5000)
            .filter_map(|i| {
                // One frame in fifty far above: a bad day on the line, not a changed camera.
                let z = if i % 50 == 0 { 8.0 } else { normal(&mut rng) };
                t.observe(&cfg, "m", z, i % 50 == 0, 120)
            })
            .collect();
        assert!(matches!(changes[..], [Change::Quiet(_)]), "{changes:?}");
    }
}
