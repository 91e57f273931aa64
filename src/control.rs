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
        Ok(ThresholdSet { class: Some(class), .. })
            if valid_id(camera) && policy.slot_of(camera).is_some() && !policy.classes(camera).contains(&class) =>
        {
            let known = policy.classes(camera);
            tracing::warn!(
                camera,
                "threshold/set refused: unknown class `{}`; the camera's bundle knows {}",
                class.escape_default(),
                if known.is_empty() { "no classes (it is not conditional)".to_owned() } else { known.join(", ") }
            );
            metrics.inc("vigil_errors_total", &[("kind", "bad_threshold")]);
            true
        }
        Ok(ThresholdSet { value, class }) if valid_id(camera) && policy.slot_of(camera).is_some() => {
            let key = match &class {
                Some(k) => crate::decide::class_key(camera, k),
                None => camera.to_owned(),
            };
            let saved = policy.thresholds.lock().expect("thresholds lock").set(&key, value);
            let ok = match saved {
                Ok(()) => {
                    tracing::info!(camera, class, "threshold set over MQTT: {value:?}");
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
        Some(v) if v.is_finite() => Ok(ThresholdSet { value: Some(v as f32), class }),
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
    }
}
