//! The daemon's MQTT connection task: reconnects with backoff; after every ConnAck it
//! resubscribes, announces `online` and asks the control task to republish retained state;
//! it routes frames, triggers, control messages and Home Assistant's birth message.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, LastWill, Packet, Publish, QoS};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::client::{Connection, Dropped, Incoming, MqttClient, REDELIVERY_DELAY, offer};
use super::config::{MqttConfig, client_id, no_delay, options};
use crate::homeassistant::Announcer;
use crate::metrics::Metrics;
use crate::topics::{OFFLINE, ONLINE, Topics};

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
