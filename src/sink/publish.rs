//! Every MQTT message of the daemon besides alerts: scores, stats, threshold states,
//! snapshots and the `stopped` availability, on the daemon's session ([`MqttClient`]). Alerts
//! take the durable outbox and a connection of their own ([`super::delivery`]); `online` and
//! the `offline` Last-Will belong to the session itself, since `online` must follow its
//! subscriptions ([`crate::mqtt`]).

use crate::mqtt::MqttClient;
use crate::topics::STOPPED;

/// Publishes the daemon's messages other than alerts; without a broker, each call does nothing.
#[derive(Clone, Debug, Default)]
pub struct Publisher {
    mqtt: Option<MqttClient>,
    scores: bool,
}

impl Publisher {
    /// A publisher on `mqtt` (none: every message is dropped); `scores` turns on the per-frame
    /// score topic.
    pub fn new(mqtt: Option<MqttClient>, scores: bool) -> Publisher {
        Publisher { mqtt, scores }
    }

    /// Whether there is a broker to publish to.
    pub fn has_broker(&self) -> bool {
        self.mqtt.is_some()
    }

    /// The topic of `leaf` for `camera` (`anomaly`, `snapshot`, ...), when there is a broker.
    pub fn camera_topic(&self, camera: &str, leaf: &str) -> Option<String> {
        self.mqtt.as_ref().map(|m| m.topics.camera(camera, leaf))
    }

    /// A frame's score on `<camera>/score` (QoS 0), with `mqtt.publish_scores`.
    pub fn score(&self, camera: &str, body: &impl serde::Serialize) {
        if let Some(m) = self.mqtt.as_ref().filter(|_| self.scores) {
            let body = serde_json::to_vec(body).expect("a score message serialises");
            m.publish_lossy(m.topics.camera(camera, "score"), false, body);
        }
    }

    /// The counters on `stats` (QoS 0).
    pub fn stats(&self, body: &serde_json::Value) {
        if let Some(m) = &self.mqtt {
            m.publish_lossy(m.topics.stats(), false, body.to_string().into_bytes());
        }
    }

    /// A snapshot JPEG, retained on `<camera>/snapshot` (QoS 0).
    pub fn snapshot(&self, camera: &str, jpeg: Vec<u8>) {
        if let Some(m) = &self.mqtt {
            m.publish_lossy(m.topics.camera(camera, "snapshot"), true, jpeg);
        }
    }

    /// A camera's threshold state, retained on `<camera>/threshold/state` (QoS 1).
    pub async fn threshold_state(&self, camera: &str, state: &serde_json::Value) {
        if let Some(m) = &self.mqtt {
            let _ = m.publish(m.topics.camera(camera, "threshold/state"), true, state.to_string().into_bytes()).await;
        }
    }

    /// The outcome of a verdict on `<camera>/feedback/state` (QoS 1, not retained: each
    /// answers one message).
    pub async fn feedback_state(&self, camera: &str, state: &serde_json::Value) {
        if let Some(m) = &self.mqtt {
            let _ = m.publish(m.topics.camera(camera, "feedback/state"), false, state.to_string().into_bytes()).await;
        }
    }

    /// A camera's bundle: what it serves, or why a rollout was refused; retained on
    /// `<camera>/bundle/state` (QoS 1), so the fleet shows which box runs which model.
    pub async fn bundle_state(&self, camera: &str, state: &serde_json::Value) {
        if let Some(m) = &self.mqtt {
            let _ = m.publish(m.topics.camera(camera, "bundle/state"), true, state.to_string().into_bytes()).await;
        }
    }

    /// A camera's drift state, retained on `<camera>/drift` (QoS 1, sent in the background: the
    /// decide stage does not wait on the broker).
    pub fn drift_state(&self, camera: &str, state: &serde_json::Value) {
        if let Some(m) = self.mqtt.clone() {
            let (topic, body) = (m.topics.camera(camera, "drift"), state.to_string().into_bytes());
            tokio::spawn(async move {
                let _ = m.publish(topic, true, body).await;
            });
        }
    }

    /// `stopped`, retained on `available` (QoS 1), at a clean stop while connected.
    pub async fn stopped(&self) {
        if let Some(m) = self.mqtt.as_ref().filter(|m| m.is_connected()) {
            let _ = m.publish(m.topics.available(), true, STOPPED.as_bytes().to_vec()).await;
        }
    }
}
