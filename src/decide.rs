//! The decide stage, score → decision → alert: the threshold in force ([`Policy`]: set at
//! run time over MQTT, else the camera's config, else the bundle's), cooldown and hysteresis
//! per camera ([`Decider`]), the anomalous region read from the anomaly map, and the alert
//! handed to the sinks; then each frame's source is told it is done.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ndarray::{Array2, ArrayView2};
use tokio::sync::mpsc;

use crate::alert::{ALERT_SCHEMA, Alert, ModelRef, Region, SnapshotRef, alert_id, rfc3339};
use crate::cameras::CameraConfig;
use crate::frame::{Area, Outcome};
use crate::metrics::Metrics;
use crate::scoring::{Finished, Models, Prepared};
use crate::sink::AlertsConfig;
use crate::sink::jsonl::Jsonl;
use crate::sink::{Sinks, snapshot};
use crate::source::SourceConfig;
use crate::state::Thresholds;

/// What to do with a scored frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Below the threshold.
    Normal,
    /// Anomalous and alerted; `suppressed_before` anomalous frames were held back since the
    /// previous alert.
    Alert {
        /// Anomalous frames not alerted since the previous alert.
        suppressed_before: u64,
    },
    /// Anomalous, but within the cooldown or not yet re-armed.
    Suppressed,
}

#[derive(Debug, Default, Clone)]
struct CameraState {
    last_alert: Option<Instant>,
    /// Hysteresis: false after an alert until a score falls below the re-arm level.
    disarmed: bool,
    suppressed: u64,
}

/// Per-camera decision state.
#[derive(Debug, Default)]
pub struct Decider {
    cameras: HashMap<String, CameraState>,
}

/// A camera's decision state as it was before a frame, to put back with [`Decider::restore`].
#[derive(Debug, Clone)]
pub struct Saved(Option<CameraState>);

impl Decider {
    /// The state of `camera` now.
    pub fn save(&self, camera: &str) -> Saved {
        Saved(self.cameras.get(camera).cloned())
    }

    /// Puts back what [`Decider::save`] returned: an alert that could not be stored is taken
    /// back, so that the frame, scored again, alerts then instead of being held back by its
    /// own first decision (cooldown, hysteresis).
    pub fn restore(&mut self, camera: &str, saved: Saved) {
        match saved.0 {
            Some(s) => self.cameras.insert(camera.to_owned(), s),
            None => self.cameras.remove(camera),
        };
    }

    /// Decides for one frame of `camera`.
    pub fn decide(
        &mut self,
        camera: &str,
        score: f32,
        threshold: f32,
        cooldown: Duration,
        hysteresis: f32,
        now: Instant,
    ) -> Decision {
        let s = self.cameras.entry(camera.to_owned()).or_default();
        // A NaN score is not "normal": treat it as anomalous so a broken model is noticed.
        let anomalous = score > threshold || score.is_nan();
        if !anomalous {
            if score < threshold * (1.0 - hysteresis) || hysteresis == 0.0 {
                s.disarmed = false;
            }
            return Decision::Normal;
        }
        let cooling = s.last_alert.is_some_and(|t| now.duration_since(t) < cooldown);
        if cooling || s.disarmed {
            s.suppressed += 1;
            return Decision::Suppressed;
        }
        s.last_alert = Some(now);
        s.disarmed = hysteresis > 0.0;
        Decision::Alert { suppressed_before: std::mem::take(&mut s.suppressed) }
    }
}

/// The bounding box (in frame pixels) and area share of the map above `threshold`. When no
/// pixel is above it (a mean or top-k score can exceed the threshold without any single
/// pixel doing so), the box is the hottest pixel's.
pub fn region(map: ArrayView2<'_, f32>, threshold: f32, area: Area) -> Region {
    let (mh, mw) = map.dim();
    let (mut x0, mut y0, mut x1, mut y1, mut n) = (usize::MAX, usize::MAX, 0, 0, 0usize);
    let mut hottest = (0, 0, f32::NEG_INFINITY);
    for ((y, x), &v) in map.indexed_iter() {
        if v > threshold {
            n += 1;
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
        }
        if v > hottest.2 {
            hottest = (y, x, v);
        }
    }
    if n == 0 {
        (x0, y0, x1, y1) = (hottest.1, hottest.0, hottest.1, hottest.0);
    }
    // Map pixel edges to frame pixels.
    let sx = area.w as f64 / mw.max(1) as f64;
    let sy = area.h as f64 / mh.max(1) as f64;
    let fx0 = area.x + (x0 as f64 * sx).floor() as u32;
    let fy0 = area.y + (y0 as f64 * sy).floor() as u32;
    let fx1 = area.x + ((x1 + 1) as f64 * sx).ceil().min(area.w as f64) as u32;
    let fy1 = area.y + ((y1 + 1) as f64 * sy).ceil().min(area.h as f64) as u32;
    Region { bbox: [fx0, fy0, fx1 - fx0, fy1 - fy0], area_fraction: n as f32 / (mh * mw).max(1) as f32 }
}

/// The key of a camera's threshold and decider state: the camera, or one class on it for a
/// conditional bundle (camera ids have no `/`, so the two never collide).
pub fn class_key(camera: &str, class: Option<&str>) -> String {
    match class {
        Some(class) => format!("{camera}/{class}"),
        None => camera.to_owned(),
    }
}

/// The threshold in force per camera (and, for a conditional bundle, per class): set at run
/// time over MQTT for the class, else for the camera, else the camera's config, else the
/// bundle's calibrated one for the class.
pub struct Policy {
    cameras: Vec<CameraConfig>,
    models: Arc<Models>,
    /// Thresholds set at run time, kept in the state folder.
    pub thresholds: Mutex<Thresholds>,
}

impl Policy {
    /// The policy over `cameras` (in `[[cameras]]` order, as `models`).
    pub fn new(cameras: Vec<CameraConfig>, models: Arc<Models>, thresholds: Thresholds) -> Policy {
        Policy { cameras, models, thresholds: Mutex::new(thresholds) }
    }

    /// The `[[cameras]]` index serving `camera`: its own entry, or the MQTT group that takes
    /// camera ids from topics or payloads.
    pub fn slot_of(&self, camera: &str) -> Option<usize> {
        self.cameras.iter().position(|c| c.id == camera).or_else(|| {
            self.cameras.iter().position(|c| {
                matches!(&c.source, SourceConfig::Mqtt(m) if m.camera_from_topic.is_some() || m.camera_field.is_some())
            })
        })
    }

    /// The threshold for frames of `class` (conditional bundles) from `camera` (served by
    /// `slot`, its current bundle) and where it comes from: `runtime`, `config` or `bundle`.
    pub fn threshold(&self, camera: &str, slot: usize, class: Option<&str>) -> (f32, &'static str) {
        let model = self.models.get(slot);
        self.threshold_with(camera, slot, &model.bundle.manifest, class)
    }

    /// As [`Self::threshold`], with `manifest` the bundle that scored the frame (which a reload
    /// may have replaced since): its class's calibration, never another bundle's.
    pub fn threshold_with(
        &self,
        camera: &str,
        slot: usize,
        manifest: &vigil_model::bundle::Manifest,
        class: Option<&str>,
    ) -> (f32, &'static str) {
        {
            let set = self.thresholds.lock().expect("thresholds lock");
            if let Some(t) = class.and_then(|k| set.get(&class_key(camera, Some(k)))) {
                return (t, "runtime");
            }
            if let Some(t) = set.get(camera) {
                return (t, "runtime");
            }
        }
        if let Some(t) = self.cameras[slot].threshold {
            return (t, "config");
        }
        let index = class.and_then(|k| manifest.class_index(k).ok());
        (manifest.calibration(index).0.value, "bundle")
    }

    /// The model `slot` serves now.
    pub fn model(&self, slot: usize) -> Arc<crate::scoring::Model> {
        self.models.get(slot)
    }

    /// The classes of the bundle `camera` is served by (empty unless conditional).
    pub fn classes(&self, camera: &str) -> Vec<String> {
        self.slot_of(camera)
            .map(|slot| self.models.get(slot).bundle.manifest.class_names().iter().map(|c| c.to_string()).collect())
            .unwrap_or_default()
    }

    /// The retained `threshold/state` of `camera`, or `None` for a camera vigil does not serve.
    /// For a conditional bundle it also lists each class's threshold and source.
    pub fn state(&self, camera: &str) -> Option<serde_json::Value> {
        let slot = self.slot_of(camera)?;
        let class = self.cameras.get(slot).filter(|c| c.id == camera).and_then(|c| c.class.clone());
        let (threshold, source) = self.threshold(camera, slot, class.as_deref());
        let model = self.models.get(slot);
        let manifest = &model.bundle.manifest;
        let index = class.as_deref().and_then(|k| manifest.class_index(k).ok());
        let mut state = serde_json::json!({
            "camera": camera,
            "threshold": threshold,
            "source": source,
            "bundle_threshold": manifest.calibration(index).0.value,
        });
        if let Some(c) = &class {
            state["class"] = c.clone().into();
        }
        if let Some(cond) = &manifest.conditioning {
            let classes: serde_json::Map<String, serde_json::Value> = cond
                .classes
                .iter()
                .map(|k| {
                    let (t, s) = self.threshold(camera, slot, Some(&k.name));
                    let v = serde_json::json!({ "threshold": t, "source": s, "bundle_threshold": k.threshold.value });
                    (k.name.clone(), v)
                })
                .collect();
            state["classes"] = classes.into();
        }
        Some(state)
    }

    /// Every camera with a state to publish: the configured ones and those with a run-time
    /// threshold (members of MQTT groups).
    pub fn cameras(&self) -> Vec<String> {
        let mut cameras: Vec<String> = self.cameras.iter().map(|c| c.id.clone()).collect();
        let set = self.thresholds.lock().expect("thresholds lock");
        cameras.extend(set.all().keys().map(|k| k.split('/').next().unwrap_or(k).to_owned()));
        cameras.sort();
        cameras.dedup();
        cameras
    }
}

/// The decide stage: what it needs besides the scored frames.
pub struct Stage {
    /// This box's id (alert ids and payloads).
    pub device: String,
    /// `[alerts]`: cooldown, hysteresis, snapshots.
    pub alerts: AlertsConfig,
    /// Where snapshots are kept (`alerts.snapshot_dir` under the state folder).
    pub snapshot_dir: PathBuf,
    /// Each camera's cooldown override, by slot.
    pub cooldowns: Vec<Option<Duration>>,
    /// Whether normal frames are offered to the data set (`dataset.sample_normal` > 0).
    pub sample_normal: bool,
    /// Thresholds in force.
    pub policy: Arc<Policy>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// The decisions log (`alerts.decisions_jsonl`).
    pub decisions: Option<Jsonl>,
    /// Where alerts and the other messages go.
    pub sinks: Sinks,
    /// What the page shows.
    pub board: Arc<crate::live::Board>,
    /// Alert frames and sampled normals.
    pub dataset: Arc<crate::dataset::Dataset>,
}

impl Stage {
    /// Decides for every scored frame until the scoring stages close their queue, then hands
    /// the sinks back for the rest of the stop.
    pub async fn run(mut self, mut results: mpsc::Receiver<Finished>) -> Sinks {
        let a = self.alerts.clone();
        let snapshots = snapshot::Worker::start(
            self.snapshot_dir.clone(),
            snapshot::Retention {
                keep: a.snapshot_keep,
                max_bytes: a.snapshot_max_mb.saturating_mul(1 << 20),
                reserve: a.disk_reserve(),
            },
            self.sinks.publisher.clone(),
            self.metrics.clone(),
        );
        let mut decider = Decider::default();
        while let Some(finished) = results.recv().await {
            #[cfg(feature = "fuzzing")]
            if crate::health::faults::take(&self.device, "decide") {
                panic!("a fault armed by a test: the decide stage ends");
            }
            match finished {
                Finished::Rejected { mut frame, kind, reason } => {
                    self.metrics.rejected(&frame.camera, &frame.origin.describe(), kind, &reason);
                    self.record(serde_json::json!({
                        "camera": frame.camera, "source": frame.origin.describe(), "result": "rejected",
                        "kind": kind, "error": reason,
                    }));
                    if let Some(done) = frame.done.take() {
                        let _ = done.send(Outcome::Rejected(reason));
                    }
                }
                Finished::Scored { prepared, score, map } => {
                    // One frame's decision must not end the stage that decides every frame of
                    // every camera: a panic is counted and logged, and the next frame goes on.
                    let camera = prepared.frame.camera.clone();
                    let source = prepared.frame.origin.describe();
                    let decided = crate::guard::catch(|| self.scored(&mut decider, &snapshots, prepared, score, map));
                    if let Err(message) = decided {
                        self.metrics.rejected(
                            &camera,
                            &source,
                            "internal",
                            &crate::guard::reason("deciding", &message),
                        );
                    }
                }
            }
        }
        self.sinks
    }

    /// One scored frame: decision, counters, score message, alert and snapshot, the decisions
    /// log, and the frame's source told it is done.
    fn scored(
        &mut self,
        decider: &mut Decider,
        snapshots: &snapshot::Worker,
        mut prepared: Box<Prepared>,
        score: f32,
        mut map: Option<Array2<f32>>,
    ) {
        let a = &self.alerts;
        let frame = &prepared.frame;
        let manifest = &prepared.model.bundle.manifest;
        let class = prepared.class.and_then(|k| Some(manifest.conditioning.as_ref()?.classes.get(k)?.name.as_str()));
        let (threshold, _) = self.policy.threshold_with(&frame.camera, frame.slot, manifest, class);
        let normalized = manifest
            .calibration(prepared.class)
            .1
            .map(|n| n.normalize(score, threshold))
            .unwrap_or(if score > threshold { 1.0 } else { 0.0 });
        let cooldown = self.cooldowns[frame.slot].unwrap_or(a.cooldown);
        // Cooldown and hysteresis per product: an alert on one class does not hold back
        // another's defect on the same camera.
        let decider_key = class_key(&frame.camera, class);
        let before = decider.save(&decider_key);
        let decision = decider.decide(&decider_key, score, threshold, cooldown, a.hysteresis, Instant::now());
        let result = if decision == Decision::Normal { "normal" } else { "anomalous" };
        self.metrics.inc("vigil_frames_total", &[("camera", &frame.camera), ("result", result)]);
        self.metrics.score(&frame.camera, normalized as f64);
        let source = frame.origin.describe();
        let frame_time = rfc3339(frame.time);
        let mut message = serde_json::json!({
            "camera": frame.camera, "source": source, "frame_time": frame_time,
            "score": score, "normalized_score": normalized, "threshold": threshold, "anomalous": result == "anomalous",
        });
        if let Some(c) = class {
            message["class"] = c.into();
        }
        self.sinks.publisher.score(&frame.camera, &message);
        let mut outcome = Outcome::Scored;
        let mut latest =
            crate::live::Latest { seq: 0, bytes: Default::default(), area: prepared.area, map: None, threshold };
        let mut record = serde_json::json!({
            "camera": frame.camera, "source": source, "frame_time": frame_time, "score": score,
            "normalized_score": normalized, "threshold": threshold, "result": result,
            "latency_ms": frame.received.elapsed().as_secs_f64() * 1e3,
        });
        let frame_time = frame.time;
        match decision {
            Decision::Normal => {
                if self.sample_normal {
                    let id = || alert_id(frame.time, &self.device, &frame.camera, &source, &prepared.sha256);
                    if let Err(e) = self.dataset.sample(&frame.camera, id, &frame.bytes) {
                        tracing::warn!(camera = frame.camera, "sampled normal frame not kept: {e}");
                        self.metrics.inc("vigil_errors_total", &[("kind", "dataset")]);
                    }
                }
            }
            Decision::Suppressed => self.metrics.inc("vigil_alerts_suppressed_total", &[("camera", &frame.camera)]),
            Decision::Alert { suppressed_before } => {
                latest.map = map.clone().map(std::sync::Arc::new);
                let (alert, snapshot) =
                    self.alert(&mut prepared, score, normalized, threshold, map.take(), suppressed_before);
                let bytes = snapshot.as_ref().map_or(&prepared.frame.bytes, |j| &j.frame);
                latest.bytes = std::sync::Arc::new(bytes.clone());
                if let Err(e) = self.dataset.keep_alert(&alert, bytes) {
                    tracing::warn!(
                        camera = alert.camera,
                        "the frame of alert {} is not kept for verdicts: {e}",
                        alert.id
                    );
                    self.metrics.inc("vigil_errors_total", &[("kind", "dataset")]);
                }
                tracing::info!(
                    camera = alert.camera,
                    id = alert.id,
                    "anomaly: score {score:.4} > {threshold:.4} in {}",
                    alert.source
                );
                record["alert"] = alert.id.clone().into();
                if let Err(e) = self.sinks.alert(&alert) {
                    outcome = Outcome::Retry(format!("{e:#}"));
                    decider.restore(&decider_key, before);
                }
                if let Some(job) = snapshot {
                    snapshots.submit(job);
                }
                self.metrics.inc("vigil_alerts_total", &[("camera", &alert.camera)]);
                self.board.alert(&alert);
            }
        }
        let frame = &mut prepared.frame;
        if latest.bytes.is_empty() {
            latest.bytes = std::sync::Arc::new(std::mem::take(&mut frame.bytes));
            latest.map = map.map(std::sync::Arc::new);
        }
        self.board.scored(&frame.camera, frame_time, score, threshold, Some(latest));
        self.metrics.latency(frame.received.elapsed().as_secs_f64());
        self.record(record);
        if let Some(done) = frame.done.take() {
            let _ = done.send(outcome);
        }
    }

    /// The alert of an anomalous frame, and the snapshot job to render after it is on its way
    /// (the alert names where the snapshot will be).
    fn alert(
        &self,
        prepared: &mut Prepared,
        score: f32,
        normalized: f32,
        threshold: f32,
        map: Option<Array2<f32>>,
        suppressed_before: u64,
    ) -> (Alert, Option<snapshot::Job>) {
        let a = &self.alerts;
        let model = prepared.model.clone();
        let frame = &mut prepared.frame;
        let source = frame.origin.describe();
        let id = alert_id(frame.time, &self.device, &frame.camera, &source, &prepared.sha256);
        let reg = map.as_ref().map(|m| region(m.view(), threshold, prepared.area));
        let snapshot = match (map, &reg) {
            (Some(map), Some(region)) => Some(snapshot::Job {
                frame: std::mem::take(&mut frame.bytes),
                area: prepared.area,
                map,
                threshold,
                region: region.clone(),
                camera: frame.camera.clone(),
                id: id.clone(),
            }),
            _ => None,
        };
        let file = (snapshot.is_some() && a.snapshot_keep > 0)
            .then(|| snapshot::path(&self.snapshot_dir, &frame.camera, &id).display().to_string());
        let topic = snapshot.as_ref().and_then(|_| self.sinks.publisher.camera_topic(&frame.camera, "snapshot"));
        let manifest = &model.bundle.manifest;
        let alert = Alert {
            schema: ALERT_SCHEMA.into(),
            id,
            device: self.device.clone(),
            camera: frame.camera.clone(),
            source,
            frame_time: rfc3339(frame.time),
            detected_at: rfc3339(std::time::SystemTime::now()),
            score,
            normalized_score: normalized,
            threshold,
            model: ModelRef {
                name: manifest.name.clone(),
                version: manifest.version,
                sha256: model.bundle.model_sha256.clone(),
                class: frame.class.clone(),
            },
            region: reg,
            snapshot: (topic.is_some() || file.is_some()).then_some(SnapshotRef { topic, file }),
            suppressed_before,
            trigger: frame.trigger.clone(),
        };
        (alert, snapshot)
    }

    /// Appends a frame's decision to `decisions_jsonl`, if configured.
    fn record(&mut self, line: serde_json::Value) {
        if let Some(d) = &mut self.decisions
            && let Err(e) = d.append(&line.to_string())
        {
            tracing::warn!("{e:#}");
            self.metrics.inc("vigil_errors_total", &[("kind", "sink_decisions")]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn an_alert_taken_back_lets_the_same_frame_alert_again() {
        let mut d = Decider::default();
        let (now, cooldown) = (Instant::now(), Duration::from_secs(60));
        assert_eq!(d.decide("c", 2.0, 1.0, cooldown, 0.1, now), Decision::Alert { suppressed_before: 0 });
        assert_eq!(d.decide("c", 0.5, 1.0, cooldown, 0.1, now), Decision::Normal, "re-armed");
        assert_eq!(d.decide("c", 2.0, 1.0, cooldown, 0.1, now), Decision::Suppressed, "cooling down");
        let later = now + cooldown;
        let saved = d.save("c");
        assert_eq!(d.decide("c", 2.0, 1.0, cooldown, 0.1, later), Decision::Alert { suppressed_before: 1 });
        // Without taking it back, the frame scored again would be held back by its own alert.
        let mut kept = Decider { cameras: d.cameras.clone() };
        assert_eq!(kept.decide("c", 2.0, 1.0, cooldown, 0.1, later), Decision::Suppressed);
        d.restore("c", saved);
        assert_eq!(d.decide("c", 2.0, 1.0, cooldown, 0.1, later), Decision::Alert { suppressed_before: 1 });
        // A camera's first alert, taken back, leaves no state.
        let saved = d.save("new");
        assert_eq!(d.decide("new", 2.0, 1.0, cooldown, 0.1, now), Decision::Alert { suppressed_before: 0 });
        d.restore("new", saved);
        assert_eq!(d.decide("new", 2.0, 1.0, cooldown, 0.1, now), Decision::Alert { suppressed_before: 0 });
    }

    #[test]
    fn every_anomalous_frame_alerts_without_cooldown() {
        let mut d = Decider::default();
        let now = Instant::now();
        for _ in 0..3 {
            assert_eq!(d.decide("c", 2.0, 1.0, Duration::ZERO, 0.0, now), Decision::Alert { suppressed_before: 0 });
        }
        assert_eq!(d.decide("c", 0.5, 1.0, Duration::ZERO, 0.0, now), Decision::Normal);
    }

    #[test]
    fn cooldown_holds_back_and_counts() {
        let mut d = Decider::default();
        let t0 = Instant::now();
        let cd = Duration::from_secs(10);
        assert_eq!(d.decide("c", 2.0, 1.0, cd, 0.0, t0), Decision::Alert { suppressed_before: 0 });
        assert_eq!(d.decide("c", 2.0, 1.0, cd, 0.0, t0 + Duration::from_secs(1)), Decision::Suppressed);
        assert_eq!(d.decide("other", 2.0, 1.0, cd, 0.0, t0), Decision::Alert { suppressed_before: 0 });
        assert_eq!(d.decide("c", 2.0, 1.0, cd, 0.0, t0 + Duration::from_secs(2)), Decision::Suppressed);
        assert_eq!(
            d.decide("c", 2.0, 1.0, cd, 0.0, t0 + Duration::from_secs(11)),
            Decision::Alert { suppressed_before: 2 }
        );
    }

    #[test]
    fn hysteresis_rearms_only_well_below_the_threshold() {
        let mut d = Decider::default();
        let t = Instant::now();
        assert!(matches!(d.decide("c", 2.0, 1.0, Duration::ZERO, 0.2, t), Decision::Alert { .. }));
        assert_eq!(d.decide("c", 0.9, 1.0, Duration::ZERO, 0.2, t), Decision::Normal);
        assert_eq!(d.decide("c", 1.1, 1.0, Duration::ZERO, 0.2, t), Decision::Suppressed);
        assert_eq!(d.decide("c", 0.7, 1.0, Duration::ZERO, 0.2, t), Decision::Normal);
        assert_eq!(d.decide("c", 1.1, 1.0, Duration::ZERO, 0.2, t), Decision::Alert { suppressed_before: 1 });
    }

    #[test]
    fn region_maps_to_frame_pixels() {
        let mut m = Array2::<f32>::zeros((4, 4));
        m[[1, 2]] = 5.0;
        m[[2, 3]] = 5.0;
        let r = region(m.view(), 1.0, Area { x: 100, y: 10, w: 40, h: 80 });
        assert_eq!(r.bbox, [120, 30, 20, 40]);
        assert!((r.area_fraction - 2.0 / 16.0).abs() < 1e-6);
        let none = region(Array2::<f32>::zeros((4, 4)).view(), 1.0, Area { x: 0, y: 0, w: 4, h: 4 });
        assert_eq!(none.bbox[2..], [1, 1]);
        assert_eq!(none.area_fraction, 0.0);
    }
}
