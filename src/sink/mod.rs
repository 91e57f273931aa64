//! Every outbound message: alerts to MQTT (through the durable [`outbox`] and its own
//! [`delivery`] connection), a JSON-lines file and standard output, all with the same alert
//! JSON; the decisions log ([`jsonl`]); [`snapshot`]s; and scores, stats, threshold states and
//! availability ([`publish`]). The `[alerts]` config lives here.

pub mod delivery;
pub mod jsonl;
pub mod outbox;
pub mod publish;
pub mod snapshot;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::alert::Alert;
use crate::metrics::Metrics;
use crate::problem::Problems;

/// `[alerts]`: where alerts go besides MQTT, snapshots, and the decision rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Print each alert as a JSON line on standard output.
    pub stdout: bool,
    /// Append each alert as a JSON line to this file (synced per line).
    pub jsonl: Option<PathBuf>,
    /// Append every frame's decision as a JSON line to this file (`camera`, `source`,
    /// `frame_time`, `score`, `normalized_score`, `threshold`, `result`, `latency_ms`, `alert`;
    /// or `result: rejected` with `kind` and `error`): an audit trail, and what `vigil demo`
    /// reads.
    pub decisions_jsonl: Option<PathBuf>,
    /// Folder for JPEG snapshots (the frame with the heatmap), `<camera>/<alert id>.jpg`;
    /// default `<state_dir>/snapshots`.
    pub snapshot_dir: Option<PathBuf>,
    /// Snapshots kept per camera (oldest removed first); 0 keeps none on disk.
    pub snapshot_keep: usize,
    /// Megabytes of snapshots kept per camera at most (oldest removed first), whatever
    /// `snapshot_keep` allows.
    pub snapshot_max_mb: u64,
    /// After an alert, further anomalous frames of that camera within this time are counted
    /// but not alerted (`0s`: every anomalous frame alerts, right for one-part-per-frame lines).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub cooldown: Duration,
    /// After an alert, the camera re-arms only once a score falls below
    /// `threshold × (1 − hysteresis)` (0: no hysteresis).
    pub hysteresis: f32,
    /// MQTT alerts kept in the durable outbox (`<state_dir>/outbox.jsonl`) while the broker is
    /// away; each leaves it once the broker acknowledged it.
    pub outbox_max: usize,
    /// When the outbox is full: `drop_oldest` (the oldest alert not already on its way to the
    /// broker) or `drop_newest`; either is logged and counted in
    /// `vigil_alerts_dropped_total{reason="outbox_full"}`.
    pub outbox_full: outbox::FullPolicy,
    /// Megabytes kept free on the state folder's file system for the outbox and the state
    /// files: below it, snapshots, alert frames and sampled normals are not written (and
    /// `/healthz` warns), so they can never take the space alerts need.
    pub disk_reserve_mb: u64,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            stdout: false,
            jsonl: None,
            decisions_jsonl: None,
            snapshot_dir: None,
            snapshot_keep: 200,
            snapshot_max_mb: 100,
            cooldown: Duration::ZERO,
            hysteresis: 0.0,
            outbox_max: 100_000,
            outbox_full: outbox::FullPolicy::DropOldest,
            disk_reserve_mb: 64,
        }
    }
}

impl AlertsConfig {
    /// Checks the values; `has_broker`: whether `[mqtt]` is configured (alerts must go
    /// somewhere).
    pub fn validate(&self, has_broker: bool, p: &mut Problems) {
        if !(0.0..1.0).contains(&self.hysteresis) {
            p.add("alerts.hysteresis", format!("{}: must be in [0, 1)", self.hysteresis));
        }
        if !has_broker && self.jsonl.is_none() && !self.stdout {
            p.add("alerts", "alerts would go nowhere: configure [mqtt], alerts.jsonl or alerts.stdout = true");
        }
    }

    /// Checks that the JSON-lines files can be created where asked.
    pub fn preflight(&self, p: &mut Problems) {
        for (key, file) in [("alerts.jsonl", &self.jsonl), ("alerts.decisions_jsonl", &self.decisions_jsonl)] {
            if let Some(j) = file
                && j.parent().is_some_and(|d| !d.as_os_str().is_empty() && !d.is_dir())
            {
                p.add(key, format!("{}: its folder does not exist", j.display()));
            }
        }
    }

    /// `disk_reserve_mb` in bytes.
    pub fn disk_reserve(&self) -> u64 {
        self.disk_reserve_mb.saturating_mul(1024 * 1024)
    }

    /// Where snapshots go.
    pub fn snapshot_dir(&self, state_dir: &Path) -> PathBuf {
        self.snapshot_dir.clone().unwrap_or_else(|| state_dir.join("snapshots"))
    }
}

/// The configured alert sinks.
pub struct Sinks {
    /// Print alerts on standard output.
    pub stdout: bool,
    /// The JSON-lines file.
    pub jsonl: Option<jsonl::Jsonl>,
    /// The daemon's other messages, and the alert topics.
    pub publisher: publish::Publisher,
    /// The outbox and the connection that delivers alerts from it.
    pub delivery: Option<delivery::Delivery>,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

impl Sinks {
    /// Sends one alert to every sink; a failing sink is logged and counted, and does not
    /// keep the alert from the others. An error means the alert could not be stored in the
    /// outbox: the frame must not be marked done, so that it is scored again.
    pub fn alert(&mut self, alert: &Alert) -> anyhow::Result<()> {
        let json = serde_json::to_string(alert).expect("an alert serialises");
        if self.stdout {
            println!("{json}");
        }
        if let Some(j) = &mut self.jsonl
            && let Err(e) = j.append(&json)
        {
            tracing::error!("alert {}: {e:#}", alert.id);
            self.metrics.inc("vigil_errors_total", &[("kind", "sink_jsonl")]);
        }
        if let (Some(topic), Some(d)) = (self.publisher.camera_topic(&alert.camera, "anomaly"), &self.delivery) {
            let entry = outbox::Entry { id: alert.id.clone(), topic, payload: json };
            if let Err(e) = d.put(entry) {
                tracing::error!("alert {}: not stored in the outbox: {e:#}; the frame will be scored again", alert.id);
                self.metrics.inc("vigil_errors_total", &[("kind", "outbox")]);
                return Err(e);
            }
        }
        Ok(())
    }
}
