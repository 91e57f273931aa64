//! The decide stage's task: each scored frame's decision, counters, score message, alert and
//! snapshot, the decisions log, and the frame's source told it is done.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ndarray::Array2;
use tokio::sync::mpsc;

use super::decider::{Decider, Decision, region};
use super::drift::{self, Change, DriftConfig, Tracker};
use super::policy::{Policy, class_key};
use super::record::{DecisionRecord, ScoreMessage, Scored};
use crate::alert::{ALERT_SCHEMA, Alert, ModelRef, SnapshotRef, alert_id, rfc3339};
use crate::frame::Outcome;
use crate::metrics::Metrics;
use crate::scoring::{Finished, Prepared};
use crate::sink::AlertsConfig;
use crate::sink::jsonl::Jsonl;
use crate::sink::{Sinks, snapshot};

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
    /// `[drift]`.
    pub drift: DriftConfig,
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
        let mut drift: HashMap<String, Tracker> = HashMap::new();
        while let Some(finished) = results.recv().await {
            #[cfg(feature = "fuzzing")]
            if crate::health::faults::take(&self.device, "decide") {
                panic!("a fault armed by a test: the decide stage ends");
            }
            match finished {
                Finished::Rejected { mut frame, kind, reason } => {
                    self.metrics.rejected(&frame.camera, &frame.origin.describe(), kind, &reason);
                    let source = frame.origin.describe();
                    self.record(&DecisionRecord::Rejected {
                        camera: &frame.camera,
                        source: &source,
                        result: "rejected",
                        kind,
                        error: &reason,
                    });
                    if let Some(done) = frame.done.take() {
                        let _ = done.send(Outcome::Rejected(reason));
                    }
                }
                Finished::Scored { prepared, score, map } => {
                    // One frame's decision must not end the stage that decides every frame of
                    // every camera: a panic is counted and logged, and the next frame goes on.
                    let camera = prepared.frame.camera.clone();
                    let source = prepared.frame.origin.describe();
                    let decided = crate::guard::catch(|| {
                        self.judge_drift(&mut drift, &prepared, score);
                        self.scored(&mut decider, &snapshots, prepared, score, map)
                    });
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
        let time_text = rfc3339(frame.time);
        // Owned: the frame is handed on (alert, snapshot) before the decision is logged.
        let camera = frame.camera.clone();
        let scored = Scored {
            camera: &camera,
            source: &source,
            frame_time: &time_text,
            score,
            normalized_score: normalized,
            threshold,
        };
        let message = ScoreMessage { scored, anomalous: result == "anomalous", class };
        self.sinks.publisher.score(&frame.camera, &message);
        let mut outcome = Outcome::Scored;
        let mut latest =
            crate::live::Latest { seq: 0, bytes: Default::default(), area: prepared.area, map: None, threshold };
        let latency_ms = frame.received.elapsed().as_secs_f64() * 1e3;
        let mut alerted = None;
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
                alerted = Some(alert.id.clone());
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
        self.record(&DecisionRecord::Scored { scored, result, latency_ms, alert: alerted.as_deref() });
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

    /// Adds a scored frame to its camera's drift window (every frame, alerts too); on a change
    /// of state, says so: log, metrics, `<camera>/drift`, the page.
    fn judge_drift(&self, trackers: &mut HashMap<String, Tracker>, prepared: &Prepared, score: f32) {
        if !self.drift.enabled {
            return;
        }
        let camera = &prepared.frame.camera;
        let bundle = &prepared.model.bundle;
        // A bundle without calibration statistics (a foreign model with a hand-set threshold)
        // has nothing to compare with.
        let (threshold, n) = bundle.manifest.calibration(prepared.class);
        let Some(n) = n else { return };
        let Some(z) = drift::standardise(score, n) else { return };
        // The calibrated threshold, not one set at run time: the tail is judged against what
        // the calibration lets through.
        let above = score > threshold.value;
        if !trackers.contains_key(camera.as_str()) && trackers.len() >= crate::live::MAX_CAMERAS {
            return;
        }
        let tracker = trackers.entry(camera.clone()).or_insert_with(|| Tracker::new(self.drift.window));
        let change = tracker.observe(&self.drift, &bundle.model_sha256, z, above, n.count);
        if let Some(r) = tracker.last() {
            self.metrics.set("vigil_drift_shift", &[("camera", camera)], r.shift);
        }
        let (on, reading) = match change {
            None => return,
            Some(Change::Raised(r)) => {
                let message = r.message(camera, &self.drift);
                tracing::warn!(camera = camera.as_str(), "drift: {message}");
                self.metrics.inc("vigil_drift_raised_total", &[("camera", camera)]);
                (Some(message), Some(r))
            }
            Some(Change::Cleared(r)) => {
                tracing::info!(
                    camera = camera.as_str(),
                    "drift cleared: of the last {} frames {:.1} % scored above the calibrated threshold, their median {:+.2} calibration standard deviations from the calibration's",
                    r.frames,
                    100.0 * r.tail,
                    r.shift
                );
                (None, Some(r))
            }
            Some(Change::Quiet(r)) => (None, Some(r)),
            Some(Change::Reset) => {
                tracing::info!(
                    camera = camera.as_str(),
                    "drift: a new bundle; judged afresh once {} frames are scored",
                    self.drift.window
                );
                (None, None)
            }
        };
        self.metrics.set("vigil_drift", &[("camera", camera)], if on.is_some() { 1.0 } else { 0.0 });
        let state = serde_json::json!({
            "state": if on.is_some() { "ON" } else { "OFF" },
            "shift": reading.map(|r| r.shift),
            "bound": reading.map(|r| r.bound),
            "tail": reading.map(|r| r.tail),
            "tail_bound": self.drift.tail_share,
            "frames": reading.map_or(0, |r| r.frames),
            "message": on.unwrap_or_default(),
            "time": rfc3339(std::time::SystemTime::now()),
        });
        self.sinks.publisher.drift_state(camera, &state);
        self.board.drift(camera, state);
    }

    /// Appends a frame's decision to `decisions_jsonl`, if configured.
    fn record(&mut self, line: &DecisionRecord<'_>) {
        if let Some(d) = &mut self.decisions
            && let Err(e) = d.append(&serde_json::to_string(line).expect("a record serialises"))
        {
            tracing::warn!("{e:#}");
            self.metrics.inc("vigil_errors_total", &[("kind", "sink_decisions")]);
        }
    }
}
