//! The handle of the daemon's MQTT session ([`MqttClient`]): publish, acknowledge frames, ask
//! for redelivery; and the bounded queue of control messages it hands on ([`Incoming`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use anyhow::Context;
use rumqttc::{AsyncClient, Publish, QoS};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::topics::Topics;

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
    pub(super) client: AsyncClient,
    /// The topic names.
    pub topics: Topics,
    pub(super) connected: Arc<AtomicBool>,
    /// QoS 1 publishes the broker has not acknowledged yet; a stop waits for them.
    pub(super) pending: Arc<AtomicI64>,
    pub(super) redeliver: Arc<tokio::sync::Notify>,
    pub(super) metrics: Arc<Metrics>,
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
    pub(super) task: tokio::task::JoinHandle<()>,
    pub(super) stop: watch::Sender<bool>,
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

    pub(super) fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::SeqCst);
        self.metrics.set("vigil_mqtt_connected", &[], if up { 1.0 } else { 0.0 });
    }

    /// A QoS 1 publish was acknowledged.
    pub(super) fn settled(&self) {
        self.pending.fetch_sub(1, Ordering::SeqCst);
        self.show_pending();
    }

    pub(super) fn show_pending(&self) {
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
