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

use rumqttc::{AsyncClient, Event, Packet, PubRel, Publish, QoS, Request};
use tokio::sync::{Notify, watch};

use super::outbox::{Entry, Flow, Outbox, PACKET_IDS, Put};
use crate::metrics::Metrics;
use crate::mqtt::MqttConfig;

/// Alerts in flight at once on the connection (sent, not yet completed). With 64, a burst of
/// 200 alerts after an outage was completed (PUBCOMP) by Mosquitto 2.0.11 for every alert,
/// yet only 73 reached a persistent QoS 1 subscriber; with 16, all 200, every run. Which leg
/// dropped them was not established; 16 stays under Mosquitto's default
/// `max_inflight_messages` of 20.
const WINDOW: usize = 16;

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
        let mut opts = crate::mqtt::options(cfg, &format!("{}-alerts", crate::mqtt::client_id(cfg, device)))?;
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
        let cfg_backoff = cfg.max_backoff;
        let qos = if cfg.alert_qos == 1 { QoS::AtLeastOnce } else { QoS::ExactlyOnce };
        let shared = Shared { qos, outbox: outbox.clone(), wake: wake.clone(), metrics: metrics.clone() };
        let vital = metrics.health.vital("alert delivery");
        let task = tokio::spawn(async move {
            let _vital = vital;
            run(opts, endpoint, cfg_backoff, shared, stop_rx).await
        });
        Ok(Delivery { outbox, wake, stop, task, metrics })
    }

    /// Stores an alert durably and queues it for the broker. An error means it is not stored
    /// (the frame must not be marked done).
    pub fn put(&self, entry: Entry) -> anyhow::Result<()> {
        let id = entry.id.clone();
        let mut o = self.outbox.lock().expect("outbox lock");
        let put = o.put(entry);
        failing(&self.metrics, put.is_err());
        match put? {
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
                    "alert {id} was already sent or queued (the frame scored again after a restart, or redelivered): not sent twice"
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

/// What the connection task shares with its driver.
struct Shared {
    qos: QoS,
    outbox: Arc<Mutex<Outbox>>,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
}

/// Whether the task is stopping, and until when it may still send.
struct Stopping {
    rx: watch::Receiver<bool>,
    stopping: bool,
    deadline: tokio::time::Instant,
}

impl Stopping {
    fn begin(&mut self, grace: Duration) {
        self.stopping = true;
        self.deadline = tokio::time::Instant::now() + grace;
    }
}

async fn run(
    opts: rumqttc::MqttOptions,
    endpoint: String,
    max_backoff: Duration,
    shared: Shared,
    stop: watch::Receiver<bool>,
) {
    let mut stop = Stopping { rx: stop, stopping: false, deadline: tokio::time::Instant::now() };
    let mut backoff = Duration::from_secs(1);
    let max_backoff = max_backoff.max(Duration::from_secs(1));
    let mut was_connected = false;
    loop {
        // The client handle is kept only so that the event loop's request channel stays open.
        let (_client, mut eventloop) = AsyncClient::new(opts.clone(), 16);
        crate::mqtt::no_delay(&mut eventloop);
        let connected = tokio::select! {
            ev = eventloop.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => Ok(ack),
                Ok(other) => Err(format!("unexpected {other:?} before CONNACK")),
                Err(e) => Err(e.to_string()),
            },
            _ = stop.rx.changed(), if !stop.stopping => return,
        };
        let result = match connected {
            Ok(ack) => {
                if !was_connected {
                    tracing::info!(
                        "mqtt: alert connection to {endpoint} up (session present: {})",
                        ack.session_present
                    );
                }
                was_connected = true;
                backoff = Duration::from_secs(1);
                let resumed = resume(&shared, ack.session_present);
                drive(&mut eventloop, &shared, &mut stop, resumed).await
            }
            Err(e) => Err(e),
        };
        let e = match result {
            Ok(()) => return,
            Err(e) => e,
        };
        let wait = crate::backoff::jitter(backoff);
        if was_connected {
            tracing::warn!("mqtt: alert connection to {endpoint} lost: {e}; alerts wait in the outbox");
            was_connected = false;
        } else {
            tracing::debug!("mqtt: alert connection to {endpoint}: {e}; retrying in {:.1}s", wait.as_secs_f64());
        }
        shared.metrics.inc("vigil_errors_total", &[("kind", "broker_alerts")]);
        if stop.stopping {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.rx.changed() => return,
        }
        backoff = (backoff * 2).min(max_backoff);
    }
}

/// After CONNACK: the flows to resume where the broker kept the session, or none (every
/// alert waiting starts again) where it did not.
fn resume(shared: &Shared, session_present: bool) -> Vec<Request> {
    let mut o = shared.outbox.lock().expect("outbox lock");
    if !session_present {
        if let Err(e) = o.reset() {
            tracing::error!("{e:#}");
            shared.metrics.inc("vigil_errors_total", &[("kind", "outbox")]);
        }
        return vec![];
    }
    o.in_flight()
        .into_iter()
        .filter_map(|(e, flow)| match flow {
            Flow::Sent(pkid) => Some(Request::Publish(publish(e, pkid, shared.qos, true))),
            Flow::Received(pkid) => Some(Request::PubRel(PubRel::new(pkid))),
            Flow::Unsent => None,
        })
        .collect()
}

/// Runs one connection until it fails (`Err`) or the task stops (`Ok`).
///
/// rumqttc's own `poll` answers a PUBREC with a PUBREL and flushes it before the caller sees
/// the PUBREC: a crash in between leaves the outbox believing the broker never had the
/// alert, so it is published again after the restart, and a broker that has already
/// released the first copy forwards it twice. So the connection is driven here, with
/// rumqttc's packet state and framing: every PUBREC read is recorded in the outbox before
/// the PUBRELs that answer it are flushed.
async fn drive(
    eventloop: &mut rumqttc::EventLoop,
    shared: &Shared,
    stop: &mut Stopping,
    mut queue: Vec<Request>,
) -> Result<(), String> {
    let keep_alive = eventloop.mqtt_options.keep_alive();
    let io_timeout = Duration::from_secs(eventloop.network_options().connection_timeout());
    let ping_every = if keep_alive.is_zero() { Duration::from_secs(3600) } else { keep_alive };
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    // After a stall, one ping, not a burst (a second ping before the first's answer would
    // count as the broker not answering).
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let net = eventloop.network.as_mut().ok_or("no network after CONNACK")?;
    let state = &mut eventloop.state;
    loop {
        {
            let mut o = shared.outbox.lock().expect("outbox lock");
            let room = WINDOW.saturating_sub(o.in_flight_count());
            if room > 0 {
                match o.send_next(room) {
                    Ok(next) => {
                        if !next.is_empty() {
                            failing(&shared.metrics, false);
                        }
                        queue.extend(
                            next.into_iter().map(|(e, pkid)| Request::Publish(publish(e, pkid, shared.qos, false))),
                        )
                    }
                    Err(e) => {
                        tracing::error!("{e:#}");
                        shared.metrics.inc("vigil_errors_total", &[("kind", "outbox")]);
                        failing(&shared.metrics, true);
                    }
                }
            }
        }
        // Sends what was just queued and the PUBRELs of the PUBRECs recorded below. Writing
        // flushes by itself once the buffer passes 8 KiB, so the whole of it is under the
        // timeout: a broker that stops reading must not hang the task. While stopping, the
        // grace period bounds it too.
        let limit = if stop.stopping {
            io_timeout.min(
                stop.deadline.saturating_duration_since(tokio::time::Instant::now()).max(Duration::from_millis(100)),
            )
        } else {
            io_timeout
        };
        tokio::time::timeout(limit, async {
            for request in queue.drain(..) {
                if let Some(packet) = state.handle_outgoing_packet(request).map_err(|e| e.to_string())? {
                    net.write(packet).await.map_err(|e| e.to_string())?;
                }
            }
            net.flush().await.map_err(|e| e.to_string())
        })
        .await
        .map_err(|_| "timed out writing to the broker".to_string())??;
        // What is left are notices of packets sent.
        state.events.clear();
        if stop.stopping
            && (shared.outbox.lock().expect("outbox lock").is_empty() || tokio::time::Instant::now() >= stop.deadline)
        {
            if let Ok(Some(packet)) = state.handle_outgoing_packet(Request::Disconnect(rumqttc::Disconnect)) {
                let _ = net.write(packet).await;
                let _ = tokio::time::timeout(Duration::from_millis(500), net.flush()).await;
            }
            return Ok(());
        }
        // The write buffer is empty here, so a `readb` cancelled by another branch has at most
        // waited for its first packet (cancel-safe: partial bytes stay in the read buffer);
        // once a packet is read, it handles the rest without suspending.
        tokio::select! {
            read = net.readb(state) => read.map_err(|e| e.to_string())?,
            _ = shared.wake.notified() => {}
            _ = ping.tick() => {
                if let Some(packet) = state.handle_outgoing_packet(Request::PingReq(rumqttc::PingReq)).map_err(|e| e.to_string())? {
                    net.write(packet).await.map_err(|e| e.to_string())?;
                }
            }
            _ = stop.rx.changed(), if !stop.stopping => stop.begin(Duration::from_secs(3)),
            _ = tokio::time::sleep_until(stop.deadline), if stop.stopping => {}
        }
        for event in state.events.drain(..) {
            let mut o = shared.outbox.lock().expect("outbox lock");
            let recorded = match event {
                Event::Incoming(Packet::PubRec(rec)) => o.received(rec.pkid),
                // PUBCOMP ends a QoS 2 exchange, PUBACK a QoS 1 one.
                Event::Incoming(Packet::PubComp(rumqttc::PubComp { pkid }))
                | Event::Incoming(Packet::PubAck(rumqttc::PubAck { pkid })) => {
                    let done = o.completed(pkid);
                    if let Ok(Some(_)) = done {
                        shared.metrics.inc("vigil_alerts_delivered_total", &[]);
                    }
                    shared.metrics.set("vigil_outbox_pending", &[], o.len() as f64);
                    done.map(|_| ())
                }
                _ => Ok(()),
            };
            failing(&shared.metrics, recorded.is_err());
            if let Err(e) = recorded {
                // The PUBRELs just buffered must not go out unrecorded: the connection is
                // dropped with them, and the flows resume from what the outbox holds.
                tracing::error!("{e:#}");
                shared.metrics.inc("vigil_errors_total", &[("kind", "outbox")]);
                return Err(format!("the outbox could not record the broker's answer: {e:#}"));
            }
        }
    }
}

/// `vigil_outbox_failing`: whether the outbox's last write failed (a full disk): the health
/// check reports it, and it clears at the next write that works.
fn failing(metrics: &Metrics, failed: bool) {
    metrics.set("vigil_outbox_failing", &[], if failed { 1.0 } else { 0.0 });
}

fn publish(e: Entry, pkid: u16, qos: QoS, dup: bool) -> Publish {
    let mut p = Publish::new(e.topic, qos, e.payload);
    p.pkid = pkid;
    p.dup = dup;
    p
}
