//! The alert connection: an MQTT session of its own that publishes what the durable outbox
//! holds, oldest first, at QoS 2, and takes each alert out only once its flow is complete
//! (PUBCOMP).
//!
//! vigil, not the MQTT client, owns the flows: packet ids are chosen and recorded by the
//! outbox before anything is sent, and each connection attempt gets a fresh client whose
//! queue holds only what this task put there. After a reconnect to the same broker session
//! (or a restart), flows resume under their packet ids (PUBLISH again with DUP, or PUBREL
//! where the broker had confirmed receipt), so the broker forwards each alert once; when the
//! broker lost the session, every alert still waiting is sent again.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Outgoing, Packet, PubRel, Publish, QoS, Request};
use tokio::sync::{Notify, watch};

use super::outbox::{Entry, Flow, Outbox, PACKET_IDS, Put};
use crate::config::MqttConfig;
use crate::metrics::Metrics;

/// Alerts in flight at once on the connection.
const WINDOW: usize = 64;

/// The running alert connection.
pub struct Delivery {
    outbox: Arc<Mutex<Outbox>>,
    wake: Arc<Notify>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    metrics: Arc<Metrics>,
}

impl Delivery {
    /// Starts the connection (in the background) over `outbox`; what the outbox already holds
    /// from an earlier run is sent first.
    pub fn start(cfg: &MqttConfig, device: &str, outbox: Outbox, metrics: Arc<Metrics>) -> anyhow::Result<Delivery> {
        let mut opts = crate::broker::options(cfg, &format!("{}-alerts", crate::broker::client_id(cfg, device)))?;
        // A persistent session: the broker keeps its side of unfinished QoS 2 flows across a
        // reconnect or a restart of vigil.
        opts.set_clean_session(false);
        opts.set_inflight(PACKET_IDS);
        let waiting = outbox.len();
        if waiting > 0 {
            tracing::info!("outbox: {waiting} alert(s) from before wait for the broker; sending them first");
        }
        metrics.set("vigil_outbox_pending", &[], waiting as f64);
        let outbox = Arc::new(Mutex::new(outbox));
        let wake = Arc::new(Notify::new());
        let (stop, stop_rx) = watch::channel(false);
        let endpoint = format!("{}:{}", cfg.host, cfg.effective_port());
        let qos = if cfg.alert_qos == 1 { QoS::AtLeastOnce } else { QoS::ExactlyOnce };
        let task = tokio::spawn(run(
            opts,
            endpoint,
            qos,
            cfg.max_backoff,
            outbox.clone(),
            wake.clone(),
            stop_rx,
            metrics.clone(),
        ));
        Ok(Delivery { outbox, wake, stop, task, metrics })
    }

    /// Stores an alert durably and queues it for the broker. An error means it is not stored
    /// (the frame must not be marked done).
    pub fn put(&self, entry: Entry) -> anyhow::Result<()> {
        let id = entry.id.clone();
        let mut o = self.outbox.lock().expect("outbox lock");
        match o.put(entry)? {
            Put::Stored => {}
            Put::StoredDroppingOldest(old) => {
                tracing::warn!(
                    "outbox full (alerts.outbox_max): dropped the oldest undelivered alert {old} to keep {id}; is the broker reachable?"
                );
                self.metrics.inc("vigil_alerts_dropped_total", &[("reason", "outbox_full")]);
            }
            Put::DroppedNewest => {
                tracing::warn!(
                    "outbox full (alerts.outbox_max, outbox_full = \"drop_newest\"): alert {id} dropped; is the broker reachable?"
                );
                self.metrics.inc("vigil_alerts_dropped_total", &[("reason", "outbox_full")]);
            }
            Put::Duplicate => {
                tracing::info!(
                    "alert {id} was already sent or queued (frame scored again after a restart): not sent twice"
                );
                self.metrics.inc("vigil_alerts_duplicate_total", &[]);
            }
        }
        self.metrics.set("vigil_outbox_pending", &[], o.len() as f64);
        drop(o);
        self.wake.notify_one();
        Ok(())
    }

    /// Sends what it can within a few seconds, then disconnects; the rest stays in the outbox
    /// for the next start.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(6), self.task).await;
        let left = self.outbox.lock().expect("outbox lock").len();
        if left > 0 {
            tracing::warn!(
                "outbox: {left} alert(s) not yet acknowledged by the broker; they are sent at the next start"
            );
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run(
    opts: rumqttc::MqttOptions,
    endpoint: String,
    qos: QoS,
    max_backoff: Duration,
    outbox: Arc<Mutex<Outbox>>,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) {
    let mut backoff = Duration::from_secs(1);
    let max_backoff = max_backoff.max(Duration::from_secs(1));
    let mut stopping = false;
    let mut deadline = tokio::time::Instant::now();
    let mut was_connected = false;
    'connections: loop {
        let (client, mut eventloop) = AsyncClient::new(opts.clone(), 16);
        crate::broker::no_delay(&mut eventloop);
        let mut connected = false;
        loop {
            if connected {
                let mut o = outbox.lock().expect("outbox lock");
                let room = WINDOW.saturating_sub(o.in_flight_count());
                if room > 0 {
                    match o.send_next(room) {
                        Ok(next) => {
                            for (e, pkid) in next {
                                eventloop.pending.push_back(Request::Publish(publish(e, pkid, qos, false)));
                            }
                        }
                        Err(e) => {
                            tracing::error!("{e:#}");
                            metrics.inc("vigil_errors_total", &[("kind", "outbox")]);
                        }
                    }
                }
            }
            let empty = outbox.lock().expect("outbox lock").is_empty();
            if stopping && (!connected || empty || tokio::time::Instant::now() >= deadline) {
                if connected {
                    let _ = client.try_disconnect();
                    // Let the DISCONNECT go out.
                    let _ = tokio::time::timeout(Duration::from_millis(500), async {
                        while let Ok(ev) = eventloop.poll().await {
                            if matches!(ev, Event::Outgoing(Outgoing::Disconnect)) {
                                break;
                            }
                        }
                    })
                    .await;
                }
                break 'connections;
            }
            tokio::select! {
                ev = eventloop.poll() => match ev {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        if !was_connected {
                            tracing::info!("mqtt: alert connection to {endpoint} up (session present: {})", ack.session_present);
                        }
                        connected = true;
                        was_connected = true;
                        backoff = Duration::from_secs(1);
                        let mut o = outbox.lock().expect("outbox lock");
                        if ack.session_present {
                            // Resume each flow where it stopped.
                            for (e, flow) in o.in_flight() {
                                eventloop.pending.push_back(match flow {
                                    Flow::Sent(pkid) => Request::Publish(publish(e, pkid, qos, true)),
                                    Flow::Received(pkid) => Request::PubRel(PubRel::new(pkid)),
                                    Flow::Unsent => continue,
                                });
                            }
                        } else if let Err(e) = o.reset() {
                            tracing::error!("{e:#}");
                            metrics.inc("vigil_errors_total", &[("kind", "outbox")]);
                        }
                    }
                    Ok(Event::Incoming(Packet::PubRec(rec))) => {
                        if let Err(e) = outbox.lock().expect("outbox lock").received(rec.pkid) {
                            tracing::error!("{e:#}");
                            metrics.inc("vigil_errors_total", &[("kind", "outbox")]);
                        }
                    }
                    // PUBCOMP ends a QoS 2 exchange, PUBACK a QoS 1 one.
                    Ok(Event::Incoming(Packet::PubComp(rumqttc::PubComp { pkid })))
                    | Ok(Event::Incoming(Packet::PubAck(rumqttc::PubAck { pkid }))) => {
                        let mut o = outbox.lock().expect("outbox lock");
                        match o.completed(pkid) {
                            Ok(Some(_)) => metrics.inc("vigil_alerts_delivered_total", &[]),
                            Ok(None) => {}
                            Err(e) => {
                                tracing::error!("{e:#}");
                                metrics.inc("vigil_errors_total", &[("kind", "outbox")]);
                            }
                        }
                        metrics.set("vigil_outbox_pending", &[], o.len() as f64);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if was_connected {
                            tracing::warn!("mqtt: alert connection to {endpoint} lost: {e}; alerts wait in the outbox");
                            was_connected = false;
                        } else {
                            tracing::debug!("mqtt: alert connection to {endpoint}: {e}; retrying in {}s", backoff.as_secs());
                        }
                        metrics.inc("vigil_errors_total", &[("kind", "broker_alerts")]);
                        if stopping {
                            break 'connections;
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = stop.changed() => { stopping = true; deadline = tokio::time::Instant::now(); }
                        }
                        backoff = (backoff * 2).min(max_backoff);
                        continue 'connections;
                    }
                },
                _ = wake.notified() => {}
                _ = stop.changed(), if !stopping => {
                    stopping = true;
                    deadline = tokio::time::Instant::now() + Duration::from_secs(3);
                }
                _ = tokio::time::sleep_until(deadline), if stopping => {}
            }
        }
    }
}

fn publish(e: Entry, pkid: u16, qos: QoS, dup: bool) -> Publish {
    let mut p = Publish::new(e.topic, qos, e.payload);
    p.pkid = pkid;
    p.dup = dup;
    p
}
