//! Where alerts go: MQTT (through the durable [`outbox`] and its own [`delivery`]
//! connection), a JSON-lines file and standard output, all with the same alert JSON.

pub mod delivery;
pub mod jsonl;
pub mod outbox;

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
    /// The MQTT connection (snapshots, retained state).
    pub mqtt: Option<Broker>,
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
        if let (Some(b), Some(d)) = (&self.mqtt, &self.delivery) {
            let topic = b.topics.camera(&alert.camera, "anomaly");
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
