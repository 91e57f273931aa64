//! The one MQTT connection of the daemon: availability (`online`, Last-Will `offline`,
//! `stopped`), publishing alerts, snapshots, scores and stats, and receiving frames and
//! threshold changes. It reconnects with backoff and, after every ConnAck, resubscribes and
//! asks the daemon to republish its retained state.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, Publish, QoS, TlsConfiguration, Transport};
use tokio::sync::{mpsc, watch};

use crate::config::MqttConfig;
use crate::metrics::Metrics;

/// Topic names under `<prefix>/<device>`.
#[derive(Debug, Clone)]
pub struct Topics {
    base: String,
}

impl Topics {
    /// Topics for `prefix` and `device`.
    pub fn new(prefix: &str, device: &str) -> Topics {
        Topics { base: format!("{}/{device}", prefix.trim_end_matches('/')) }
    }
    /// `<prefix>/<device>/available`.
    pub fn available(&self) -> String {
        format!("{}/available", self.base)
    }
    /// `<prefix>/<device>/stats`.
    pub fn stats(&self) -> String {
        format!("{}/stats", self.base)
    }
    /// `<prefix>/<device>/<camera>/<leaf>` (`anomaly`, `snapshot`, `score`, `threshold/state`).
    pub fn camera(&self, camera: &str, leaf: &str) -> String {
        format!("{}/{camera}/{leaf}", self.base)
    }
    /// The filter of threshold changes for every camera.
    pub fn threshold_set_filter(&self) -> String {
        format!("{}/+/threshold/set", self.base)
    }
    /// The camera of a threshold-change topic.
    pub fn threshold_set_camera<'a>(&self, topic: &'a str) -> Option<&'a str> {
        let rest = topic.strip_prefix(&self.base)?.strip_prefix('/')?;
        let camera = rest.strip_suffix("/threshold/set")?;
        (!camera.contains('/')).then_some(camera)
    }
}

/// What the connection hands to the daemon's control task.
#[derive(Debug)]
pub enum Incoming {
    /// A (re)connection: republish retained state.
    Connected,
    /// A message on `<camera>/threshold/set`.
    ThresholdSet {
        /// The camera.
        camera: String,
        /// The payload.
        payload: Vec<u8>,
        /// Answered once the threshold is applied and saved (or refused): the message is
        /// acknowledged only then, so a change vigil dies before saving is delivered again.
        handled: tokio::sync::oneshot::Sender<()>,
    },
}

/// A handle to publish on the connection.
#[derive(Clone)]
pub struct Broker {
    client: AsyncClient,
    /// The topic names.
    pub topics: Topics,
    connected: Arc<AtomicBool>,
    redeliver: Arc<tokio::sync::Notify>,
}

/// How long after a frame was left unacknowledged (its alert could not be stored) the
/// connection is renewed so that the broker delivers it again. A broker redelivers only when
/// a session resumes; without this, such frames would wait for the next network failure, and
/// once they fill the broker's in-flight window (20 messages for Mosquitto) no frame would
/// arrive at all, even after the disk had room again. Not at once, so that a disk that stays
/// full costs a reconnect every few seconds, not a loop.
pub const REDELIVERY_DELAY: Duration = Duration::from_secs(5);

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").field("topics", &self.topics).finish()
    }
}

/// The running connection task.
pub struct Connection {
    task: tokio::task::JoinHandle<()>,
    stop: watch::Sender<bool>,
}

/// Largest MQTT packet read: bigger ones would break the connection (and, with a persistent
/// session, come back after every reconnect), so the hard limit is far above the configured
/// payload limits, which reject and acknowledge oversize frames.
const MAX_INCOMING_PACKET: usize = 256 * 1024 * 1024;

fn tls(cfg: &MqttConfig) -> anyhow::Result<Option<Transport>> {
    let Some(t) = &cfg.tls else { return Ok(None) };
    // One process-wide rustls provider (ring); a second install attempt is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = std::fs::read(&t.ca_file).with_context(|| format!("mqtt.tls.ca_file {}", t.ca_file.display()))?;
    let client_auth = match (&t.client_cert, &t.client_key) {
        (Some(c), Some(k)) => Some((
            std::fs::read(c).with_context(|| format!("mqtt.tls.client_cert {}", c.display()))?,
            std::fs::read(k).with_context(|| format!("mqtt.tls.client_key {}", k.display()))?,
        )),
        _ => None,
    };
    Ok(Some(Transport::tls_with_config(TlsConfiguration::Simple { ca, alpn: None, client_auth })))
}

/// The client id of the main connection (the alert connection appends `-alerts`).
pub fn client_id(cfg: &MqttConfig, device: &str) -> String {
    cfg.client_id.clone().unwrap_or_else(|| format!("vigil-{device}"))
}

/// Options shared by the daemon's connections: endpoint, keep-alive, packet limits,
/// credentials and TLS.
pub fn options(cfg: &MqttConfig, client_id: &str) -> anyhow::Result<MqttOptions> {
    let mut opts = MqttOptions::new(client_id, cfg.host.clone(), cfg.effective_port());
    opts.set_keep_alive(cfg.keep_alive);
    opts.set_max_packet_size(MAX_INCOMING_PACKET, 64 * 1024 * 1024);
    if let Some(user) = &cfg.username {
        let password = cfg.effective_password().context("reading mqtt.password_file")?.unwrap_or_default();
        opts.set_credentials(user.clone(), password);
    }
    if let Some(t) = tls(cfg)? {
        opts.set_transport(t);
    }
    Ok(opts)
}

/// Small packets (acknowledgements, QoS 2 handshakes, alerts) go out at once: with Nagle's
/// algorithm they would wait for the peer's delayed ACK, tens of milliseconds per alert.
pub fn no_delay(eventloop: &mut rumqttc::EventLoop) {
    let mut n = eventloop.network_options();
    n.set_tcp_nodelay(true);
    eventloop.set_network_options(n);
}

/// Connects (in the background: the first attempt happens in the task) and starts the loop.
/// `frame_filters` are subscribed at QoS 1 with manual acknowledgement; a camera flooding
/// faster than vigil scores is held back by TCP (this loop waits on the frame queue), so
/// its backlog waits at the broker instead of in vigil's memory.
pub fn start(
    cfg: &MqttConfig,
    device: &str,
    frame_filters: Vec<String>,
    incoming: mpsc::UnboundedSender<Incoming>,
    frames: mpsc::Sender<Publish>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<(Broker, Connection)> {
    let topics = Topics::new(&cfg.topic_prefix, device);
    let mut opts = options(cfg, &client_id(cfg, device))?;
    opts.set_last_will(LastWill::new(topics.available(), "offline", QoS::AtLeastOnce, true));
    opts.set_manual_acks(true);
    // A persistent session: frames published while vigil is away wait at the broker.
    opts.set_clean_session(false);
    opts.set_request_channel_capacity(4096);
    let (client, mut eventloop) = AsyncClient::new(opts, 4096);
    no_delay(&mut eventloop);
    let connected = Arc::new(AtomicBool::new(false));
    let redeliver = Arc::new(tokio::sync::Notify::new());
    let broker = Broker {
        client: client.clone(),
        topics: topics.clone(),
        connected: connected.clone(),
        redeliver: redeliver.clone(),
    };
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let max_backoff = cfg.max_backoff.max(Duration::from_secs(1));
    let endpoint = format!("{}:{}", cfg.host, cfg.effective_port());
    let task = tokio::spawn(async move {
        let mut backoff = Duration::from_secs(1);
        let mut stopping = false;
        let mut disconnecting = false;
        let mut stop_deadline = None;
        let (mut renew_at, mut renewing) = (None, false);
        loop {
            let event = tokio::select! {
                e = eventloop.poll() => e,
                _ = redeliver.notified(), if renew_at.is_none() && !stopping => {
                    renew_at = Some(tokio::time::Instant::now() + REDELIVERY_DELAY);
                    continue;
                }
                _ = async { tokio::time::sleep_until(renew_at.expect("set when asked")).await }, if renew_at.is_some() => {
                    renew_at = None;
                    // Frames left while waiting are redelivered by this renewal too: take the
                    // permit they stored, or it would start a second renewal for nothing.
                    let _ = tokio::time::timeout(Duration::ZERO, redeliver.notified()).await;
                    if !stopping && connected.load(Ordering::SeqCst) {
                        // A clean DISCONNECT: the broker keeps the session and sends no Last-Will.
                        tracing::info!("mqtt: reconnecting so that the broker delivers again the frames left unacknowledged");
                        renewing = client.try_disconnect().is_ok();
                    }
                    continue;
                }
                _ = stop_rx.changed(), if !stopping => {
                    stopping = true;
                    stop_deadline = Some(tokio::time::Instant::now() + Duration::from_secs(3));
                    continue;
                }
                _ = async { tokio::time::sleep_until(stop_deadline.expect("set when stopping")).await }, if stop_deadline.is_some() => {
                    if disconnecting {
                        break;
                    }
                    // Still a clean DISCONNECT, so the broker does not send the Last-Will.
                    tracing::warn!("mqtt: the broker did not confirm the last messages in time; closing anyway");
                    let _ = client.try_disconnect();
                    disconnecting = true;
                    stop_deadline = Some(tokio::time::Instant::now() + Duration::from_secs(1));
                    continue;
                }
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    tracing::info!("mqtt: connected to {endpoint} (session present: {})", ack.session_present);
                    backoff = Duration::from_secs(1);
                    connected.store(true, Ordering::SeqCst);
                    metrics.set("vigil_mqtt_connected", &[], 1.0);
                    let c = client.clone();
                    let (online, filters, tset) =
                        (topics.available(), frame_filters.clone(), topics.threshold_set_filter());
                    // Through the request queue, which this loop drains: spawn, never await here.
                    // Subscriptions first: the broker handles a client's packets in order, so
                    // once `online` is seen, frames and threshold changes are being received.
                    // Reconnected while stopping (a renewal under way): `stopped` is queued and
                    // must stay the last word.
                    if !stopping {
                        metrics.shift("vigil_alerts_pending", &[], 1.0);
                        tokio::spawn(async move {
                            for f in filters {
                                let _ = c.subscribe(f, QoS::AtLeastOnce).await;
                            }
                            let _ = c.subscribe(tset, QoS::AtLeastOnce).await;
                            let _ = c.publish(online, QoS::AtLeastOnce, true, "online").await;
                        });
                    }
                    let _ = incoming.send(Incoming::Connected);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Some(camera) = topics.threshold_set_camera(&p.topic) {
                        let (handled, done) = tokio::sync::oneshot::channel();
                        let _ = incoming.send(Incoming::ThresholdSet {
                            camera: camera.to_owned(),
                            payload: p.payload.to_vec(),
                            handled,
                        });
                        let c = client.clone();
                        tokio::spawn(async move {
                            if done.await.is_ok() {
                                let _ = c.ack(&p).await;
                            }
                        });
                    } else {
                        // When the frame queue is full, this waits: the connection is not read
                        // meanwhile, so a flooding camera is held back by TCP and the broker's
                        // queue, not by vigil's memory (alerts have a connection of their own).
                        let _ = frames.send(p).await;
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    metrics.shift("vigil_alerts_pending", &[], -1.0);
                }
                // The renewal's DISCONNECT, even if a stop began since: the stop's own comes
                // after it, once what the stop publishes (`stopped`) is confirmed.
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) if renewing && !disconnecting => {
                    // The next poll connects again and resumes the session.
                    renewing = false;
                    eventloop.clean();
                    connected.store(false, Ordering::SeqCst);
                    metrics.set("vigil_mqtt_connected", &[], 0.0);
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => break,
                Ok(_) => {}
                Err(e) => {
                    if connected.swap(false, Ordering::SeqCst) {
                        tracing::warn!("mqtt: connection to {endpoint} lost: {e}; reconnecting");
                    } else {
                        tracing::warn!(
                            "mqtt: cannot connect to {endpoint}: {e}; retrying in {}s (check mqtt.host, mqtt.port, credentials and TLS)",
                            backoff.as_secs()
                        );
                    }
                    metrics.set("vigil_mqtt_connected", &[], 0.0);
                    metrics.inc("vigil_errors_total", &[("kind", "broker")]);
                    if stopping {
                        break;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop_rx.changed() => break,
                    }
                    backoff = (backoff * 2).min(max_backoff);
                }
            }
            if stopping && !disconnecting && pending(&metrics) <= 0.0 {
                let _ = client.try_disconnect();
                disconnecting = true;
                stop_deadline = Some(tokio::time::Instant::now() + Duration::from_secs(1));
            }
        }
        connected.store(false, Ordering::SeqCst);
        metrics.set("vigil_mqtt_connected", &[], 0.0);
    });
    Ok((broker, Connection { task, stop: stop_tx }))
}

fn pending(metrics: &Metrics) -> f64 {
    metrics.gauge("vigil_alerts_pending", &[])
}

impl Broker {
    /// Publishes at QoS 1 (counted as pending until the broker's PUBACK).
    pub async fn publish(
        &self,
        metrics: &Metrics,
        topic: String,
        retain: bool,
        payload: Vec<u8>,
    ) -> anyhow::Result<()> {
        metrics.shift("vigil_alerts_pending", &[], 1.0);
        self.client.publish(topic, QoS::AtLeastOnce, retain, payload).await.context("mqtt: the connection task stopped")
    }

    /// Publishes at QoS 0 (scores, stats, snapshots: the next value replaces a lost one);
    /// callable from any thread. It never waits: while the connection is down, or its request
    /// queue is full, the message is dropped. rumqttc takes requests off that queue only while
    /// connected, so waiting on it during an outage would stall scoring (every camera's
    /// alerts) and the daemon's main loop (stop, reload, watchdog), and hold thousands of
    /// snapshots in memory.
    pub fn publish_lossy(&self, topic: String, retain: bool, payload: Vec<u8>) {
        if self.is_connected() {
            let _ = self.client.try_publish(topic, QoS::AtMostOnce, retain, payload);
        }
    }

    /// Acknowledges a frame message once it was handled.
    pub async fn ack(&self, p: &Publish) {
        let _ = self.client.ack(p).await;
    }

    /// Leaves a frame message unacknowledged and has the broker deliver it again, after
    /// [`REDELIVERY_DELAY`] (one renewal covers every frame left before it).
    pub fn redeliver(&self) {
        self.redeliver.notify_one();
    }

    /// Whether the connection is up.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }
}

impl Connection {
    /// Publishes `stopped`, waits (bounded) for the broker to confirm what is pending, and
    /// disconnects cleanly so the Last-Will is not sent.
    pub async fn stop(self, broker: &Broker, metrics: &Metrics) {
        if broker.is_connected() {
            let _ = broker.publish(metrics, broker.topics.available(), true, b"stopped".to_vec()).await;
        }
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

/// Whether `topic` matches the MQTT filter `filter`.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut t = topic.split('/');
    for f in filter.split('/') {
        match (f, t.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (f, Some(level)) if f == level => {}
            _ => return false,
        }
    }
    t.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_like_a_broker() {
        assert!(topic_matches("factory/+/camera/+/frame", "factory/l1/camera/c7/frame"));
        assert!(!topic_matches("factory/+/camera/+/frame", "factory/l1/camera/c7/frame/x"));
        assert!(topic_matches("factory/#", "factory/a/b"));
        assert!(!topic_matches("a/b", "a"));
        let t = Topics::new("vigil", "box1");
        assert_eq!(t.threshold_set_camera("vigil/box1/cam2/threshold/set"), Some("cam2"));
        assert_eq!(t.threshold_set_camera("vigil/box1/a/b/threshold/set"), None);
    }
}
