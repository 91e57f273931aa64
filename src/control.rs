//! The MQTT control topics: after each (re)connection the retained threshold states are
//! published again, and `<camera>/threshold/set` changes the threshold in force (saved in
//! the state folder, acknowledged to the broker only once saved).

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::decide::Policy;
use crate::metrics::Metrics;
use crate::mqtt::{Incoming, MqttClient};
use crate::problem::valid_id;
use crate::sink::publish::Publisher;

/// Handles (re)connections and threshold changes until the connection task ends.
pub async fn run(
    mut rx: mpsc::UnboundedReceiver<Incoming>,
    mqtt: MqttClient,
    publisher: Publisher,
    policy: Arc<Policy>,
    metrics: Arc<Metrics>,
) {
    while let Some(msg) = rx.recv().await {
        match msg {
            Incoming::Connected => {
                for camera in policy.cameras() {
                    publish_state(&publisher, &policy, &camera).await;
                }
            }
            Incoming::ThresholdSet { camera, payload, handled } => {
                // Acknowledged only once saved: had vigil died before, or had the save failed,
                // the broker delivers it again.
                if set_threshold(&publisher, &policy, &metrics, &camera, &payload).await {
                    let _ = handled.send(());
                } else {
                    mqtt.redeliver();
                }
            }
        }
    }
}

async fn publish_state(publisher: &Publisher, policy: &Policy, camera: &str) {
    if let Some(state) = policy.state(camera) {
        publisher.threshold_state(camera, &state).await;
    }
}

/// Applies one `threshold/set` message; false when it was applied but could not be saved.
async fn set_threshold(
    publisher: &Publisher,
    policy: &Policy,
    metrics: &Metrics,
    camera: &str,
    payload: &[u8],
) -> bool {
    match parse_threshold(payload) {
        Ok(value) if valid_id(camera) && policy.slot_of(camera).is_some() => {
            let saved = policy.thresholds.lock().expect("thresholds lock").set(camera, value);
            let ok = match saved {
                Ok(()) => {
                    tracing::info!(camera, "threshold set over MQTT: {value:?}");
                    true
                }
                Err(e) => {
                    tracing::error!(
                        camera,
                        "threshold could not be saved: {e:#}; it applies until a restart, and the broker delivers it again"
                    );
                    false
                }
            };
            publish_state(publisher, policy, camera).await;
            ok
        }
        Ok(_) => {
            tracing::warn!("threshold/set for unknown camera `{}` ignored", camera.escape_default());
            metrics.inc("vigil_errors_total", &[("kind", "bad_threshold")]);
            true
        }
        Err(e) => {
            tracing::warn!(camera, "threshold/set refused: {e}");
            metrics.inc("vigil_errors_total", &[("kind", "bad_threshold")]);
            true
        }
    }
}

/// A threshold payload: a number, `{"threshold": n}`, or `reset` / `null` / empty to go back
/// to the configured or calibrated threshold.
pub fn parse_threshold(payload: &[u8]) -> Result<Option<f32>, String> {
    let text = std::str::from_utf8(payload).map_err(|_| "payload is not UTF-8 text".to_owned())?.trim();
    if text.is_empty() || text.eq_ignore_ascii_case("reset") || text == "null" {
        return Ok(None);
    }
    let value = match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Number(n)) => n.as_f64(),
        Ok(serde_json::Value::Object(o)) => match o.get("threshold") {
            Some(serde_json::Value::Null) => return Ok(None),
            Some(v) => v.as_f64(),
            None => None,
        },
        _ => None,
    };
    match value {
        Some(v) if v.is_finite() => Ok(Some(v as f32)),
        _ => Err(format!("`{}`: send a number, {{\"threshold\": n}}, or \"reset\"", text.escape_default())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_payloads() {
        assert_eq!(parse_threshold(b"0.25"), Ok(Some(0.25)));
        assert_eq!(parse_threshold(br#"{"threshold": 2}"#), Ok(Some(2.0)));
        assert_eq!(parse_threshold(b"reset"), Ok(None));
        assert_eq!(parse_threshold(br#"{"threshold": null}"#), Ok(None));
        assert!(parse_threshold(b"high").is_err());
        assert!(parse_threshold(&[0xff]).is_err());
    }
}
