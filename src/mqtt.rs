//! The daemon's MQTT session: its `[mqtt]` config, the connection task (reconnects with
//! backoff; after every ConnAck it resubscribes, announces `online` and asks the control task
//! to republish retained state) and [`MqttClient`], the handle through which the sources
//! acknowledge frames and `sink/` publishes. Alerts have a connection of their own
//! (`sink::delivery`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use anyhow::Context;
use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, Publish, QoS, TlsConfiguration, Transport,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::homeassistant::Announcer;
use crate::metrics::Metrics;
use crate::problem::{Problems, is_loopback, valid_topic_filter};
use crate::topics::{OFFLINE, ONLINE, Topics};

/// `[mqtt]`: the broker connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Broker host name or address; without `[mqtt]`, alerts go to `jsonl`/`stdout` only.
    pub host: String,
    /// Broker port; default 1883, or 8883 with TLS.
    #[serde(default)]
    pub port: Option<u16>,
    /// MQTT client id; default `vigil-<device_id>`. A persistent session: QoS 1 frames wait
    /// at the broker while vigil is away.
    #[serde(default)]
    pub client_id: Option<String>,
    /// User name.
    #[serde(default)]
    pub username: Option<String>,
    /// Password (prefer `password_file` or `VIGIL__MQTT__PASSWORD`).
    #[serde(default)]
    pub password: Option<String>,
    /// A file holding the password (trailing newline ignored), e.g. a systemd credential.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// TLS (rustls), with the server's certificate verified against `ca_file`. Required for a
    /// broker on another machine unless `plaintext = true`; absent: plain TCP.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// QoS of alerts: 2 (with the outbox, each alert reaches the broker once even across a
    /// crash) or 1 for brokers without QoS 2 (some cloud brokers), where an alert cut off by a
    /// crash may arrive twice, under the same id.
    #[serde(default = "default_alert_qos")]
    pub alert_qos: u8,
    /// Accept plain TCP to a broker on another machine (frames, alerts and the password then
    /// cross the network in clear). Off: such a config is refused, never silently insecure;
    /// plain TCP to `localhost`/loopback is always allowed.
    #[serde(default)]
    pub plaintext: bool,
    /// Topic prefix: topics are `<prefix>/<device_id>/...`.
    #[serde(default = "default_prefix")]
    pub topic_prefix: String,
    /// MQTT keep-alive.
    #[serde(default = "default_keep_alive", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub keep_alive: Duration,
    /// Publish every frame's score on `<prefix>/<device>/<camera>/score` (QoS 0).
    #[serde(default)]
    pub publish_scores: bool,
    /// How often counters go to `<prefix>/<device>/stats` (`0s`: never).
    #[serde(default = "default_stats_interval", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub stats_interval: Duration,
    /// Longest wait between reconnection attempts (the wait doubles from 1 s up to this).
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_backoff: Duration,
    /// Announce this box to Home Assistant (MQTT discovery): a device with, per camera, an
    /// anomaly sensor, the last score, the threshold and the latest snapshot
    /// (docs/homeassistant.md). Needs `publish_scores`.
    #[serde(default)]
    pub homeassistant: bool,
    /// Home Assistant's discovery prefix (a setting of its MQTT integration); its birth
    /// message is read on `<prefix>/status`.
    #[serde(default = "default_homeassistant_prefix")]
    pub homeassistant_prefix: String,
    /// How long Home Assistant shows a camera's anomaly sensor on after its last alert.
    #[serde(default = "default_homeassistant_off_delay", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub homeassistant_off_delay: Duration,
}

fn default_prefix() -> String {
    "vigil".into()
}
fn default_alert_qos() -> u8 {
    2
}
fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}
fn default_stats_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(30)
}
fn default_homeassistant_prefix() -> String {
    "homeassistant".into()
}
fn default_homeassistant_off_delay() -> Duration {
    Duration::from_secs(30)
}

/// `[mqtt.tls]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA(s) that signed the broker's certificate; turns TLS on.
    pub ca_file: PathBuf,
    /// PEM client certificate, for brokers that want one (with `client_key`).
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

impl MqttConfig {
    /// The port actually used.
    pub fn effective_port(&self) -> u16 {
        self.port.unwrap_or(if self.tls.is_some() { 8883 } else { 1883 })
    }

    /// The password from `password` or `password_file`.
    pub fn effective_password(&self) -> std::io::Result<Option<String>> {
        if let Some(p) = &self.password {
            return Ok(Some(p.clone()));
        }
        match &self.password_file {
            Some(f) => Ok(Some(std::fs::read_to_string(f)?.trim_end_matches(['\n', '\r']).to_owned())),
            None => Ok(None),
        }
    }

    /// Checks the values (no files are read).
    pub fn validate(&self, p: &mut Problems) {
        if self.host.trim().is_empty() {
            p.add("mqtt.host", "is empty; give the broker's host name");
        }
        let prefix = &self.topic_prefix;
        if prefix.is_empty() || !valid_topic_filter(prefix) || prefix.contains(['+', '#']) {
            p.add("mqtt.topic_prefix", format!("`{prefix}`: a topic without wildcards"));
        }
        if let Some(id) = &self.client_id
            && (id.is_empty() || id.len() > 128)
        {
            p.add("mqtt.client_id", "must be 1 to 128 characters");
        }
        if self.password.is_some() && self.password_file.is_some() {
            p.add("mqtt.password_file", "give `password` or `password_file`, not both");
        }
        if (self.password.is_some() || self.password_file.is_some()) && self.username.is_none() {
            p.add("mqtt.username", "a password needs a username");
        }
        if self.tls.is_none() && !self.plaintext && !is_loopback(&self.host) {
            p.add(
                "mqtt.tls",
                format!(
                    "`{}` is another machine and there is no [mqtt.tls]: frames, alerts and the password would cross the network in clear; add [mqtt.tls] with the broker's ca_file, or set mqtt.plaintext = true to accept that",
                    self.host
                ),
            );
        }
        if let Some(t) = &self.tls
            && t.client_cert.is_some() != t.client_key.is_some()
        {
            p.add("mqtt.tls.client_key", "a client certificate needs both client_cert and client_key");
        }
        if !matches!(self.alert_qos, 1 | 2) {
            p.add("mqtt.alert_qos", format!("{}: use 2, or 1 for a broker without QoS 2", self.alert_qos));
        }
        if self.keep_alive < Duration::from_secs(1) {
            p.add("mqtt.keep_alive", "must be at least 1s");
        }
        crate::homeassistant::validate(self, p);
    }

    /// Checks that the password and TLS files can be read.
    pub fn preflight(&self, p: &mut Problems) {
        if let Some(f) = &self.password_file
            && let Err(e) = std::fs::read(f)
        {
            p.add("mqtt.password_file", format!("{}: {e}", f.display()));
        }
        if let Some(t) = &self.tls {
            for (key, file) in [
                ("ca_file", Some(&t.ca_file)),
                ("client_cert", t.client_cert.as_ref()),
                ("client_key", t.client_key.as_ref()),
            ] {
                if let Some(f) = file
                    && let Err(e) = std::fs::read(f)
                {
                    p.add(format!("mqtt.tls.{key}"), format!("{}: {e}", f.display()));
                }
            }
        }
    }
}

/// Control messages waiting for the control task, most. A publisher flooding the control
/// topics at QoS 0 (which no in-flight window holds back) fills it; what does not fit is
/// dropped and counted (`vigil_errors_total{kind="control_dropped"}`), so the connection
/// task never waits on the control task and frames keep flowing.
pub const CONTROL_QUEUE: usize = 256;

/// The channel from the connection task to the control task, bounded at [`CONTROL_QUEUE`].
pub fn control_channel() -> (mpsc::Sender<Incoming>, mpsc::Receiver<Incoming>) {
    mpsc::channel(CONTROL_QUEUE)
}

/// Messages dropped from a full control queue since the last log line: one line per
/// [`DROP_LOG_EVERY`] at most, so a flood does not become a flood of log lines too.
#[derive(Debug, Default)]
pub struct Dropped {
    since_log: u64,
    logged: Option<Instant>,
}

/// How often a control flood is logged, at most.
const DROP_LOG_EVERY: Duration = Duration::from_secs(10);

/// Hands `msg` to the control task without waiting: when the queue is full it is dropped,
/// counted and logged, and `false` returned (a QoS 1 message is then left unacknowledged, so
/// the broker delivers it again).
pub fn offer(tx: &mpsc::Sender<Incoming>, msg: Incoming, metrics: &Metrics, dropped: &mut Dropped) -> bool {
    match tx.try_send(msg) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Closed(_)) => false,
        Err(mpsc::error::TrySendError::Full(msg)) => {
            metrics.inc("vigil_errors_total", &[("kind", "control_dropped")]);
            dropped.since_log += 1;
            if dropped.logged.is_none_or(|t| t.elapsed() >= DROP_LOG_EVERY) {
                tracing::warn!(
                    "mqtt: the control queue is full ({CONTROL_QUEUE} messages waiting): {} control message(s) dropped, the last {}; a flood on the control topics? (counted in vigil_errors_total{{kind=\"control_dropped\"}})",
                    dropped.since_log,
                    msg.describe()
                );
                dropped.since_log = 0;
                dropped.logged = Some(Instant::now());
            }
            false
        }
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
    /// A message on `<camera>/bundle/set`: one chunk of a rolled-out bundle.
    BundleChunk {
        /// The camera.
        camera: String,
        /// The payload.
        payload: Vec<u8>,
        /// Answered once the chunk is stored (or refused); acknowledged only then.
        handled: tokio::sync::oneshot::Sender<()>,
    },
    /// A message on `<camera>/feedback`: a verdict on an alert.
    Feedback {
        /// The camera.
        camera: String,
        /// The payload.
        payload: Vec<u8>,
        /// Answered once the verdict is written (or refused); acknowledged only then.
        handled: tokio::sync::oneshot::Sender<()>,
    },
}

impl Incoming {
    fn describe(&self) -> String {
        match self {
            Incoming::Connected => "a (re)connection".into(),
            Incoming::ThresholdSet { camera, .. } => format!("on {}/threshold/set", camera.escape_default()),
            Incoming::BundleChunk { camera, .. } => format!("on {}/bundle/set", camera.escape_default()),
            Incoming::Feedback { camera, .. } => format!("on {}/feedback", camera.escape_default()),
        }
    }
}

/// The handle of the daemon's MQTT session: publish, acknowledge frames, ask for redelivery.
#[derive(Clone)]
pub struct MqttClient {
    client: AsyncClient,
    /// The topic names.
    pub topics: Topics,
    connected: Arc<AtomicBool>,
    /// QoS 1 publishes the broker has not acknowledged yet; a stop waits for them.
    pending: Arc<AtomicI64>,
    redeliver: Arc<tokio::sync::Notify>,
    metrics: Arc<Metrics>,
}

/// How long after a frame was left unacknowledged (its alert could not be stored) the
/// connection is renewed so that the broker delivers it again. A broker redelivers only when
/// a session resumes; without this, such frames would wait for the next network failure, and
/// once they fill the broker's in-flight window (20 messages for Mosquitto) no frame would
/// arrive at all, even after the disk had room again. Not at once, so that a disk that stays
/// full costs a reconnect every few seconds, not a loop.
pub const REDELIVERY_DELAY: Duration = Duration::from_secs(5);

impl std::fmt::Debug for MqttClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttClient").field("topics", &self.topics).finish()
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
pub fn no_delay(eventloop: &mut EventLoop) {
    let mut n = eventloop.network_options();
    n.set_tcp_nodelay(true);
    eventloop.set_network_options(n);
}

/// What the daemon's session subscribes to besides its control topics.
pub struct Subscriptions {
    /// MQTT sources' topic filters (QoS 1, acknowledged once the frame is done).
    pub frames: Vec<String>,
    /// Part-present signals (QoS 0: a trigger delivered late would score the wrong part).
    pub triggers: Arc<crate::trigger::Triggers>,
    /// Home Assistant's birth message, when discovery is on.
    pub homeassistant: Option<Arc<Announcer>>,
    /// Bundle rollouts (`[fleet]`).
    pub fleet: bool,
}

/// Connects (in the background: the first attempt happens in the task) and starts the loop.
/// `frame_filters` are subscribed at QoS 1 with manual acknowledgement; a camera flooding
/// faster than vigil scores is held back by TCP (this loop waits on the frame queue), so
/// its backlog waits at the broker instead of in vigil's memory. `homeassistant` announces
/// the box to Home Assistant after each connect and on its birth message.
pub fn start(
    cfg: &MqttConfig,
    device: &str,
    subscriptions: Subscriptions,
    incoming: mpsc::Sender<Incoming>,
    frames: mpsc::Sender<Publish>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<(MqttClient, Connection)> {
    let topics = Topics::new(&cfg.topic_prefix, device);
    let mut opts = options(cfg, &client_id(cfg, device))?;
    opts.set_last_will(LastWill::new(topics.available(), OFFLINE, QoS::AtLeastOnce, true));
    opts.set_manual_acks(true);
    // A persistent session: frames published while vigil is away wait at the broker.
    opts.set_clean_session(false);
    opts.set_request_channel_capacity(4096);
    let (client, mut eventloop) = AsyncClient::new(opts, 4096);
    no_delay(&mut eventloop);
    let vital = metrics.health.vital("MQTT session");
    let handle = MqttClient {
        client,
        topics,
        connected: Arc::new(AtomicBool::new(false)),
        pending: Arc::new(AtomicI64::new(0)),
        redeliver: Arc::new(tokio::sync::Notify::new()),
        metrics,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let Subscriptions { frames: frame_filters, triggers, homeassistant, fleet } = subscriptions;
    let session = Session {
        mqtt: handle.clone(),
        frame_filters,
        triggers,
        fleet,
        homeassistant,
        incoming,
        dropped: Dropped::default(),
        frames,
        endpoint: format!("{}:{}", cfg.host, cfg.effective_port()),
        max_backoff: cfg.max_backoff.max(Duration::from_secs(1)),
        backoff: Duration::from_secs(1),
        stopping: false,
        disconnecting: false,
        stop_deadline: None,
        renew_at: None,
        renewing: false,
    };
    let task = tokio::spawn(async move {
        let _vital = vital;
        session.run(eventloop, stop_rx).await
    });
    Ok((handle, Connection { task, stop: stop_tx }))
}

/// The connection task's state between events.
struct Session {
    mqtt: MqttClient,
    frame_filters: Vec<String>,
    triggers: Arc<crate::trigger::Triggers>,
    fleet: bool,
    homeassistant: Option<Arc<Announcer>>,
    incoming: mpsc::Sender<Incoming>,
    dropped: Dropped,
    frames: mpsc::Sender<Publish>,
    endpoint: String,
    max_backoff: Duration,
    backoff: Duration,
    /// A stop was asked for: publish nothing new, disconnect once what is pending is confirmed.
    stopping: bool,
    /// The stop's DISCONNECT was queued.
    disconnecting: bool,
    /// When the stop stops waiting for the broker.
    stop_deadline: Option<Instant>,
    /// When to renew the connection so that unacknowledged frames are delivered again.
    renew_at: Option<Instant>,
    /// A renewal's DISCONNECT was queued.
    renewing: bool,
}

/// What the loop does after an event.
enum Next {
    Poll,
    End,
}

impl Session {
    async fn run(mut self, mut eventloop: EventLoop, mut stop_rx: watch::Receiver<bool>) {
        loop {
            let redeliver = self.mqtt.redeliver.clone();
            let event = tokio::select! {
                e = eventloop.poll() => e,
                _ = redeliver.notified(), if self.renew_at.is_none() && !self.stopping => {
                    self.renew_at = Some(Instant::now() + REDELIVERY_DELAY);
                    continue;
                }
                _ = sleep_until(self.renew_at), if self.renew_at.is_some() => {
                    self.renew().await;
                    continue;
                }
                _ = stop_rx.changed(), if !self.stopping => {
                    self.stopping = true;
                    self.stop_deadline = Some(Instant::now() + Duration::from_secs(3));
                    continue;
                }
                _ = sleep_until(self.stop_deadline), if self.stop_deadline.is_some() => {
                    if self.disconnecting {
                        break;
                    }
                    // Still a clean DISCONNECT, so the broker does not send the Last-Will.
                    tracing::warn!("mqtt: the broker did not confirm the last messages in time; closing anyway");
                    self.disconnect();
                    continue;
                }
            };
            let next = match event {
                Ok(event) => self.on_event(event, &mut eventloop).await,
                Err(e) => self.on_error(e, &mut stop_rx).await,
            };
            if let Next::End = next {
                break;
            }
            if self.stopping && !self.disconnecting && self.mqtt.pending.load(Ordering::SeqCst) <= 0 {
                self.disconnect();
            }
        }
        self.mqtt.set_connected(false);
    }

    /// A clean DISCONNECT, then one more second for it to leave.
    fn disconnect(&mut self) {
        let _ = self.mqtt.client.try_disconnect();
        self.disconnecting = true;
        self.stop_deadline = Some(Instant::now() + Duration::from_secs(1));
    }

    /// Disconnects cleanly (the broker keeps the session and sends no Last-Will); the next
    /// poll connects again, and the broker delivers what was left unacknowledged.
    async fn renew(&mut self) {
        self.renew_at = None;
        // Frames left while waiting are redelivered by this renewal too: take the permit they
        // stored, or it would start a second renewal for nothing.
        let _ = tokio::time::timeout(Duration::ZERO, self.mqtt.redeliver.notified()).await;
        if !self.stopping && self.mqtt.is_connected() {
            tracing::info!("mqtt: reconnecting so that the broker delivers again the frames left unacknowledged");
            self.renewing = self.mqtt.client.try_disconnect().is_ok();
        }
    }

    async fn on_event(&mut self, event: Event, eventloop: &mut EventLoop) -> Next {
        match event {
            Event::Incoming(Packet::ConnAck(ack)) => {
                tracing::info!("mqtt: connected to {} (session present: {})", self.endpoint, ack.session_present);
                self.backoff = Duration::from_secs(1);
                self.mqtt.set_connected(true);
                // Reconnected while stopping (a renewal under way): `stopped` is queued and
                // must stay the last word.
                if !self.stopping {
                    self.announce();
                }
                // Never dropped (the retained states must be published again), never waited
                // on here.
                if let Err(mpsc::error::TrySendError::Full(m)) = self.incoming.try_send(Incoming::Connected) {
                    let tx = self.incoming.clone();
                    tokio::spawn(async move { tx.send(m).await });
                }
            }
            Event::Incoming(Packet::Publish(p)) => self.on_publish(p).await,
            Event::Incoming(Packet::PubAck(_)) => self.mqtt.settled(),
            // The renewal's DISCONNECT, even if a stop began since: the stop's own comes after
            // it, once what the stop publishes (`stopped`) is confirmed.
            Event::Outgoing(rumqttc::Outgoing::Disconnect) if self.renewing && !self.disconnecting => {
                // The next poll connects again and resumes the session.
                self.renewing = false;
                eventloop.clean();
                self.mqtt.set_connected(false);
            }
            Event::Outgoing(rumqttc::Outgoing::Disconnect) => return Next::End,
            _ => {}
        }
        Next::Poll
    }

    /// Subscribes, announces the box to Home Assistant, then publishes `online`: through the
    /// request queue, which the loop drains, so it is spawned, never awaited here.
    /// Subscriptions first: the broker handles a client's packets in order, so once `online`
    /// is seen, frames and threshold changes are received.
    fn announce(&self) {
        let (m, homeassistant) = (self.mqtt.clone(), self.homeassistant.clone());
        let c = self.mqtt.client.clone();
        let (online, filters) = (self.mqtt.topics.available(), self.frame_filters.clone());
        let mut controls = vec![self.mqtt.topics.threshold_set_filter(), self.mqtt.topics.feedback_filter()];
        if self.fleet {
            controls.push(self.mqtt.topics.bundle_set_filter());
        }
        let triggers = self.triggers.filters();
        self.mqtt.pending.fetch_add(1, Ordering::SeqCst);
        self.mqtt.show_pending();
        tokio::spawn(async move {
            for f in filters {
                let _ = c.subscribe(f, QoS::AtLeastOnce).await;
            }
            for f in controls {
                let _ = c.subscribe(f, QoS::AtLeastOnce).await;
            }
            for f in triggers {
                let _ = c.subscribe(f, QoS::AtMostOnce).await;
            }
            if let Some(ha) = homeassistant {
                ha.connected(&m).await;
            }
            let _ = c.publish(online, QoS::AtLeastOnce, true, ONLINE).await;
        });
    }

    async fn on_publish(&mut self, p: Publish) {
        if let Some(ha) = self.homeassistant.as_ref().filter(|h| h.is_status(&p.topic)) {
            // Subscribed at QoS 0: nothing to acknowledge.
            let (ha, m) = (ha.clone(), self.mqtt.clone());
            if !self.stopping {
                tokio::spawn(async move { ha.status(&p.payload, &m).await });
            }
            return;
        }
        let (handled, done) = tokio::sync::oneshot::channel();
        let control = if let Some(camera) = self.mqtt.topics.threshold_set_camera(&p.topic) {
            Some(Incoming::ThresholdSet { camera: camera.to_owned(), payload: p.payload.to_vec(), handled })
        } else if let Some(camera) = self.mqtt.topics.feedback_camera(&p.topic) {
            Some(Incoming::Feedback { camera: camera.to_owned(), payload: p.payload.to_vec(), handled })
        } else if self.fleet {
            self.mqtt.topics.bundle_set_camera(&p.topic).map(|camera| Incoming::BundleChunk {
                camera: camera.to_owned(),
                payload: p.payload.to_vec(),
                handled,
            })
        } else {
            None
        };
        if control.is_none() && self.triggers.matches(&p.topic) {
            // Not behind queued frames: the part is in front of the camera now. A retained
            // message is an old signal, not a part.
            if !p.retain {
                self.triggers.fire(&p.topic, &p.payload);
            }
            if p.qos != QoS::AtMostOnce {
                let c = self.mqtt.client.clone();
                tokio::spawn(async move { c.ack(&p).await });
            }
            return;
        }
        if let Some(control) = control {
            if !offer(&self.incoming, control, &self.mqtt.metrics, &mut self.dropped) {
                if p.qos != QoS::AtMostOnce {
                    self.mqtt.redeliver();
                }
                return;
            }
            let c = self.mqtt.client.clone();
            tokio::spawn(async move {
                if done.await.is_ok() {
                    let _ = c.ack(&p).await;
                }
            });
        } else {
            // When the frame queue is full, this waits: the connection is not read meanwhile,
            // so a flooding camera is held back by TCP and the broker's queue, not by vigil's
            // memory (alerts have a connection of their own).
            let _ = self.frames.send(p).await;
        }
    }

    async fn on_error(&mut self, e: rumqttc::ConnectionError, stop_rx: &mut watch::Receiver<bool>) -> Next {
        let endpoint = &self.endpoint;
        let wait = crate::backoff::jitter(self.backoff);
        if self.mqtt.connected.swap(false, Ordering::SeqCst) {
            tracing::warn!("mqtt: connection to {endpoint} lost: {e}; reconnecting");
        } else {
            tracing::warn!(
                "mqtt: cannot connect to {endpoint}: {e}; retrying in {:.1}s (check mqtt.host, mqtt.port, credentials and TLS)",
                wait.as_secs_f64()
            );
        }
        self.mqtt.set_connected(false);
        self.mqtt.metrics.inc("vigil_errors_total", &[("kind", "broker")]);
        if self.stopping {
            return Next::End;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop_rx.changed() => return Next::End,
        }
        self.backoff = (self.backoff * 2).min(self.max_backoff);
        Next::Poll
    }
}

async fn sleep_until(at: Option<Instant>) {
    tokio::time::sleep_until(at.expect("guarded by is_some")).await
}

impl MqttClient {
    /// Publishes at QoS 1 (pending until the broker's PUBACK; a stop waits for it).
    pub async fn publish(&self, topic: String, retain: bool, payload: Vec<u8>) -> anyhow::Result<()> {
        self.pending.fetch_add(1, Ordering::SeqCst);
        self.show_pending();
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

    /// Subscribes at QoS 0, for messages that need no acknowledgement.
    pub async fn subscribe_qos0(&self, filter: String) {
        let _ = self.client.subscribe(filter, QoS::AtMostOnce).await;
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

    fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::SeqCst);
        self.metrics.set("vigil_mqtt_connected", &[], if up { 1.0 } else { 0.0 });
    }

    /// A QoS 1 publish was acknowledged.
    fn settled(&self) {
        self.pending.fetch_sub(1, Ordering::SeqCst);
        self.show_pending();
    }

    fn show_pending(&self) {
        self.metrics.set("vigil_alerts_pending", &[], self.pending.load(Ordering::SeqCst) as f64);
    }
}

impl Connection {
    /// Asks the task to stop once the broker confirmed what is pending (bounded), with a clean
    /// DISCONNECT so the Last-Will is not sent, and waits for it.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_control_flood_is_dropped_and_counted_never_queued_without_bound() {
        let metrics = Metrics::default();
        let (tx, mut rx) = control_channel();
        let mut dropped = Dropped::default();
        let mut acks = vec![];
        let mut offered = 0;
        for i in 0..CONTROL_QUEUE + 40 {
            let (handled, done) = tokio::sync::oneshot::channel();
            acks.push(done);
            let msg = Incoming::BundleChunk { camera: "cam1".into(), payload: format!("{i}").into_bytes(), handled };
            offered += usize::from(offer(&tx, msg, &metrics, &mut dropped));
        }
        assert_eq!(offered, CONTROL_QUEUE, "the queue holds {CONTROL_QUEUE}, the rest is dropped");
        assert_eq!(metrics.count("vigil_errors_total", &[("kind", "control_dropped")]), 40);
        // A dropped message's acknowledgement never comes, so a QoS 1 one is delivered again.
        assert!(acks[CONTROL_QUEUE].try_recv().is_err());
        // What was queued comes out in order, and once there is room a message is taken again.
        let Some(Incoming::BundleChunk { payload, .. }) = rx.try_recv().ok() else { panic!("nothing queued") };
        assert_eq!(payload, b"0");
        let (handled, _done) = tokio::sync::oneshot::channel();
        assert!(offer(
            &tx,
            Incoming::Feedback { camera: "cam1".into(), payload: vec![], handled },
            &metrics,
            &mut dropped
        ));
    }
}
