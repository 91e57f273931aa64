//! The operator's controls, from MQTT and from the page alike: `<camera>/threshold/set`
//! changes the threshold in force (saved in the state folder, acknowledged to the broker
//! only once saved, the retained `threshold/state` published again after each connection),
//! and `<camera>/feedback` gives a verdict on an alert (acknowledged on `feedback/state`).

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::dataset::{Applied, Dataset, Source, Verdict, VerdictError};
use crate::decide::Policy;
use crate::live::Board;
use crate::metrics::Metrics;
use crate::mqtt::{Incoming, MqttClient};
use crate::problem::valid_id;
use crate::sink::publish::Publisher;

/// What the controls change, shared by the MQTT control task and the page.
pub struct Control {
    /// Publishes the states.
    pub publisher: Publisher,
    /// The thresholds.
    pub policy: Arc<Policy>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Where verdicts put frames.
    pub dataset: Arc<Dataset>,
    /// The page's live state.
    pub board: Arc<Board>,
    /// Bundles rolled out over MQTT (`[fleet]`).
    pub fleet: Option<Arc<crate::fleet::Receiver>>,
}

/// Why a threshold change was refused or not kept.
#[derive(Debug, thiserror::Error)]
pub enum ThresholdError {
    /// Not a camera this box serves.
    #[error("unknown camera `{0}`")]
    UnknownCamera(String),
    /// Not a class of the camera's bundle.
    #[error("unknown class `{class}`; the camera's bundle knows {known}")]
    UnknownClass {
        /// The class asked.
        class: String,
        /// What the bundle knows.
        known: String,
    },
    /// Applied, but not saved.
    #[error("applied, but not saved: {0}; it applies until a restart")]
    NotSaved(String),
}

impl Control {
    /// What `camera` serves now, for `bundle/state`: the model in memory (what scores its
    /// frames), so that answering a message, a malformed one included, never reads or hashes
    /// the bundle on disk.
    pub fn serving(&self, camera: &str) -> Option<serde_json::Value> {
        let model = self.policy.model(self.policy.slot_of(camera)?);
        let m = &model.bundle.manifest;
        Some(serde_json::json!({
            "camera": camera, "name": m.name, "version": m.version, "sha256": model.bundle.model_sha256,
        }))
    }

    async fn publish_state(&self, camera: &str) {
        if let Some(state) = self.policy.state(camera) {
            self.publisher.threshold_state(camera, &state).await;
            self.board.event("threshold", camera, serde_json::json!({ "state": state }));
        }
    }

    /// Applies a threshold change and publishes the camera's new state.
    pub async fn set_threshold(&self, camera: &str, set: &ThresholdSet) -> Result<(), ThresholdError> {
        if !valid_id(camera) || self.policy.slot_of(camera).is_none() {
            self.metrics.inc("vigil_errors_total", &[("kind", "bad_threshold")]);
            return Err(ThresholdError::UnknownCamera(camera.escape_default().to_string()));
        }
        if let Some(class) = &set.class
            && !self.policy.classes(camera).contains(class)
        {
            let known = self.policy.classes(camera);
            self.metrics.inc("vigil_errors_total", &[("kind", "bad_threshold")]);
            return Err(ThresholdError::UnknownClass {
                class: class.escape_default().to_string(),
                known: if known.is_empty() {
                    "no classes (it is not conditional)".to_owned()
                } else {
                    known.join(", ")
                },
            });
        }
        let key = crate::decide::class_key(camera, set.class.as_deref());
        let saved = self.policy.thresholds.lock().expect("thresholds lock").set(&key, set.value);
        self.publish_state(camera).await;
        match saved {
            Ok(()) => {
                tracing::info!(camera, class = set.class, "threshold set: {:?}", set.value);
                Ok(())
            }
            Err(e) => Err(ThresholdError::NotSaved(format!("{e:#}"))),
        }
    }

    /// Gives a verdict on an alert: its clean frame goes into the data set, recorded with
    /// `source`; the outcome is published on `<camera>/feedback/state` and shown on the page.
    pub async fn verdict(
        &self,
        camera: &str,
        id: &str,
        verdict: Verdict,
        source: &Source,
    ) -> Result<Applied, VerdictError> {
        let result = self.dataset.verdict(camera, id, verdict, source);
        let state = match &result {
            Ok(a) => {
                self.metrics.inc("vigil_verdicts_total", &[("camera", camera), ("verdict", verdict.name())]);
                tracing::info!(camera, id, "verdict {} from {source}: {}", verdict.name(), a.file.display());
                self.board.event("verdict", camera, serde_json::json!({ "id": id, "verdict": verdict }));
                serde_json::json!({ "id": id, "verdict": verdict, "ok": true, "changed": a.changed })
            }
            Err(e) => {
                tracing::warn!(camera, "verdict from {source} refused: {e}");
                self.metrics.inc("vigil_errors_total", &[("kind", "bad_feedback")]);
                serde_json::json!({ "id": id, "verdict": verdict, "ok": false, "error": e.to_string() })
            }
        };
        if valid_id(camera) {
            self.publisher.feedback_state(camera, &state).await;
        }
        result
    }
}

/// Handles (re)connections, threshold changes and verdicts until the connection task ends.
pub async fn run(mut rx: mpsc::Receiver<Incoming>, mqtt: MqttClient, control: Arc<Control>) {
    while let Some(msg) = rx.recv().await {
        match msg {
            Incoming::Connected => {
                for camera in control.policy.cameras() {
                    control.publish_state(&camera).await;
                }
                if control.fleet.is_some() {
                    for camera in control.policy.cameras() {
                        if let Some(state) = control.serving(&camera) {
                            let state = serde_json::json!({ "ok": true, "serving": state });
                            control.publisher.bundle_state(&camera, &state).await;
                        }
                    }
                }
            }
            Incoming::BundleChunk { camera, payload, handled } => {
                if let Some(fleet) = &control.fleet {
                    bundle_chunk(&control, fleet, camera, payload).await;
                }
                let _ = handled.send(());
            }
            Incoming::ThresholdSet { camera, payload, handled } => {
                // Acknowledged only once saved: had vigil died before, or had the save failed,
                // the broker delivers it again.
                let result = match parse_threshold(&payload) {
                    Ok(set) => control.set_threshold(&camera, &set).await,
                    Err(e) => {
                        control.metrics.inc("vigil_errors_total", &[("kind", "bad_threshold")]);
                        tracing::warn!(camera, "threshold/set refused: {e}");
                        Ok(())
                    }
                };
                match result {
                    Err(ThresholdError::NotSaved(e)) => {
                        tracing::error!(camera, "threshold could not be saved: {e}; the broker delivers it again");
                        mqtt.redeliver();
                    }
                    Err(e) => {
                        tracing::warn!(camera, "threshold/set refused: {e}");
                        let _ = handled.send(());
                    }
                    Ok(()) => {
                        let _ = handled.send(());
                    }
                }
            }
            Incoming::Feedback { camera, payload, handled } => {
                match parse_feedback(&payload) {
                    Ok(f) => {
                        // MQTT 3.1.1 does not say who published: the topic, and what the
                        // payload says of itself.
                        let source = Source::Mqtt { topic: mqtt.topics.camera(&camera, "feedback"), by: f.by };
                        let _ = control.verdict(&camera, &f.id, f.verdict, &source).await;
                    }
                    Err(e) => {
                        tracing::warn!(camera, "feedback refused: {e}");
                        control.metrics.inc("vigil_errors_total", &[("kind", "bad_feedback")]);
                        if valid_id(&camera) {
                            let state = serde_json::json!({ "ok": false, "error": e });
                            control.publisher.feedback_state(&camera, &state).await;
                        }
                    }
                }
                let _ = handled.send(());
            }
        }
    }
}

/// One chunk on `<camera>/bundle/set`: stored, installed with the last one, or refused; the
/// outcome of an install or a refusal is published on the camera's `bundle/state`.
async fn bundle_chunk(control: &Control, fleet: &Arc<crate::fleet::Receiver>, camera: String, payload: Vec<u8>) {
    let header = crate::fleet::Chunk::parse(&payload).ok().map(|(h, _)| h);
    let (transfer, sequence) = (header.as_ref().map(|h| h.transfer.clone()), header.map(|h| h.sequence));
    let (f, c) = (fleet.clone(), camera.clone());
    // Writing, hashing and test-running a bundle is blocking work.
    let result = tokio::task::spawn_blocking(move || f.receive(&c, &payload))
        .await
        .unwrap_or_else(|e| Err(format!("receiving the bundle failed: {e}")));
    // Only this box's cameras get a counter series and a retained state: a topic's camera id
    // is anyone's to choose.
    let known = control.policy.slot_of(&camera).is_some();
    match result {
        Ok(crate::fleet::Received::Stored) | Ok(crate::fleet::Received::Done) => {}
        Ok(crate::fleet::Received::Installed(state)) => {
            tracing::info!(camera, "bundle rolled out and installed: {state}");
            control.metrics.inc("vigil_bundle_rollouts_total", &[("camera", &camera), ("result", "installed")]);
            let state = serde_json::json!({ "ok": true, "transfer": transfer, "sequence": sequence, "serving": state });
            control.publisher.bundle_state(&camera, &state).await;
        }
        Err(e) if known => {
            tracing::warn!(camera, "bundle rollout refused, the served bundle stays: {e}");
            control.metrics.inc("vigil_bundle_rollouts_total", &[("camera", &camera), ("result", "refused")]);
            let state = serde_json::json!({
                "ok": false, "transfer": transfer, "sequence": sequence, "error": e, "serving": control.serving(&camera),
            });
            control.publisher.bundle_state(&camera, &state).await;
        }
        Err(e) => {
            tracing::warn!("bundle rollout refused: {e}");
            control.metrics.inc("vigil_errors_total", &[("kind", "bad_rollout")]);
        }
    }
}

/// A parsed `feedback` payload.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feedback {
    /// The alert.
    pub id: String,
    /// The verdict.
    pub verdict: Verdict,
    /// Who gives it, as the publisher declares (recorded, not checked).
    #[serde(default)]
    pub by: Option<String>,
}

/// The longest `by` a feedback payload may carry.
pub const MAX_BY: usize = 64;

/// A `feedback` payload: `{"id": "<alert id>", "verdict": "false_alarm" | "confirmed"}`, with
/// an optional `"by": "<who>"` (at most [`MAX_BY`] characters, no control characters).
pub fn parse_feedback(payload: &[u8]) -> Result<Feedback, String> {
    let f: Feedback = serde_json::from_slice(payload).map_err(|e| {
        format!(
            "{e}: send {{\"id\": \"<alert id>\", \"verdict\": \"false_alarm\"}} or {{..., \"verdict\": \"confirmed\"}}, optionally with \"by\": \"<who>\""
        )
    })?;
    if let Some(by) = &f.by
        && (by.chars().count() > MAX_BY || by.chars().any(char::is_control))
    {
        return Err(format!(
            "`by` is at most {MAX_BY} characters without control characters: name who gives the verdict"
        ));
    }
    Ok(f)
}

/// A parsed `threshold/set` payload.
#[derive(Debug, Clone, PartialEq)]
pub struct ThresholdSet {
    /// The new threshold, or `None` to go back to the configured or calibrated one.
    pub value: Option<f32>,
    /// The class it applies to (conditional bundles); `None`: every class of the camera.
    pub class: Option<String>,
}

/// A threshold payload: a number, `{"threshold": n}` (with `"class": "name"` for one class of
/// a conditional bundle), or `reset` / `null` / empty to go back to the configured or
/// calibrated threshold.
pub fn parse_threshold(payload: &[u8]) -> Result<ThresholdSet, String> {
    let text = std::str::from_utf8(payload).map_err(|_| "payload is not UTF-8 text".to_owned())?.trim();
    let reset = |class| Ok(ThresholdSet { value: None, class });
    if text.is_empty() || text.eq_ignore_ascii_case("reset") || text == "null" {
        return reset(None);
    }
    let usage = || {
        format!(
            "`{}`: send a number, {{\"threshold\": n}}, {{\"threshold\": n, \"class\": \"name\"}}, or \"reset\"",
            text.escape_default()
        )
    };
    let (value, class) = match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Number(n)) => (n.as_f64(), None),
        Ok(serde_json::Value::Object(o)) => {
            let class = match o.get("class") {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(c)) => Some(c.clone()),
                Some(_) => return Err(usage()),
            };
            match o.get("threshold") {
                Some(serde_json::Value::Null) => return reset(class),
                Some(v) => (v.as_f64(), class),
                None => (None, class),
            }
        }
        _ => (None, None),
    };
    match value {
        // Finite as the f32 it is kept as: 1e39 is finite as f64 but infinite as f32, which
        // would mute the camera (or, negative, alert on everything) and cannot be saved.
        Some(v) if (v as f32).is_finite() => Ok(ThresholdSet { value: Some(v as f32), class }),
        Some(v) if v.is_finite() => Err(format!(
            "`{}`: {v} is beyond the range of a threshold (±3.4e38); send a score in the bundle's units",
            text.escape_default()
        )),
        _ => Err(usage()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_payloads() {
        let set = |value, class: Option<&str>| Ok(ThresholdSet { value, class: class.map(str::to_owned) });
        assert_eq!(parse_threshold(b"0.25"), set(Some(0.25), None));
        assert_eq!(parse_threshold(br#"{"threshold": 2}"#), set(Some(2.0), None));
        assert_eq!(parse_threshold(br#"{"threshold": 2, "class": "dark"}"#), set(Some(2.0), Some("dark")));
        assert_eq!(parse_threshold(br#"{"threshold": null, "class": "dark"}"#), set(None, Some("dark")));
        assert_eq!(parse_threshold(b"reset"), set(None, None));
        assert_eq!(parse_threshold(br#"{"threshold": null}"#), set(None, None));
        assert!(parse_threshold(br#"{"threshold": 2, "class": 3}"#).is_err());
        assert!(parse_threshold(b"high").is_err());
        assert!(parse_threshold(&[0xff]).is_err());
        // Finite as f64, infinite as the f32 a threshold is kept as: refused, naming the range.
        assert!(parse_threshold(b"1e39").unwrap_err().contains("beyond the range"));
        assert!(parse_threshold(br#"{"threshold": -1e39}"#).unwrap_err().contains("beyond the range"));
        assert_eq!(parse_threshold(b"3e38"), set(Some(3e38), None));
    }

    #[test]
    fn feedback_payloads() {
        let ok = parse_feedback(br#"{"id": "01KB0000000000000000000000", "verdict": "false_alarm"}"#).unwrap();
        let want = Feedback { id: "01KB0000000000000000000000".to_owned(), verdict: Verdict::FalseAlarm, by: None };
        assert_eq!(ok, want);
        assert_eq!(parse_feedback(br#"{"id": "x", "verdict": "confirmed"}"#).unwrap().verdict, Verdict::Confirmed);
        assert!(parse_feedback(br#"{"id": "x", "verdict": "maybe"}"#).unwrap_err().contains("false_alarm"));
        assert!(parse_feedback(b"ok").is_err());
        // Who gives it, as declared; bounded.
        let by = parse_feedback(br#"{"id": "x", "verdict": "confirmed", "by": "line 3 QA"}"#).unwrap().by;
        assert_eq!(by.as_deref(), Some("line 3 QA"));
        let long = format!(r#"{{"id": "x", "verdict": "confirmed", "by": "{}"}}"#, "a".repeat(MAX_BY + 1));
        assert!(parse_feedback(long.as_bytes()).unwrap_err().contains("`by` is at most 64"));
        assert!(parse_feedback(br#"{"id": "x", "verdict": "confirmed", "by": "a\nb"}"#).is_err());
    }
}
