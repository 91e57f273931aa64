//! Where alerts go: MQTT (see [`crate::broker`]), a JSON-lines file and standard output,
//! all with the same alert JSON.

pub mod jsonl;

use std::sync::Arc;

use crate::alert::Alert;
use crate::broker::Broker;
use crate::metrics::Metrics;

/// The configured sinks.
pub struct Sinks {
    /// Print alerts on standard output.
    pub stdout: bool,
    /// The JSON-lines file.
    pub jsonl: Option<jsonl::Jsonl>,
    /// The MQTT connection.
    pub mqtt: Option<Broker>,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

impl Sinks {
    /// Sends one alert to every sink; a failing sink is logged and counted, and does not
    /// keep the alert from the others.
    pub async fn alert(&mut self, alert: &Alert, snapshot: Option<&[u8]>) {
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
        if let Some(b) = &self.mqtt {
            if let Some(jpeg) = snapshot {
                let topic = b.topics.camera(&alert.camera, "snapshot");
                if let Err(e) = b.publish(&self.metrics, topic, true, jpeg.to_vec()).await {
                    tracing::error!("snapshot of alert {}: {e:#}", alert.id);
                }
            }
            let topic = b.topics.camera(&alert.camera, "anomaly");
            if let Err(e) = b.publish(&self.metrics, topic, false, json.into_bytes()).await {
                tracing::error!("alert {}: {e:#}", alert.id);
                self.metrics.inc("vigil_errors_total", &[("kind", "sink_mqtt")]);
            }
        }
    }
}
