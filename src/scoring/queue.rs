//! The scoring queue as every source sees it: each frame's time checked, triggered cameras'
//! frames without a waiting trigger answered `Skipped` before they are decoded, and a live
//! camera's frame dropped (counted) rather than waited for when the queue is full.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::sync::mpsc;

use crate::frame::{Frame, Outcome};
use crate::trigger::Triggers;

/// The scoring queue as the sources see it: frames of a triggered camera without a waiting
/// trigger are answered `Skipped` here (the file is done, the message acknowledged) and never
/// decoded.
#[derive(Clone)]
pub struct Queue {
    tx: mpsc::Sender<Frame>,
    triggers: Arc<Triggers>,
}

impl Queue {
    /// The queue in front of `tx`.
    pub fn new(tx: mpsc::Sender<Frame>, triggers: Arc<Triggers>) -> Self {
        Queue { tx, triggers }
    }

    /// Queues `frame` if its camera scores it (waiting while the queue is full); errs only when
    /// the scoring side has stopped.
    pub async fn send(&self, mut frame: Frame) -> Result<(), mpsc::error::SendError<Frame>> {
        self.check_time(&mut frame);
        match self.triggers.take(frame.slot, arrival(&frame)) {
            Ok(id) => {
                frame.trigger = id;
                self.tx.send(frame).await
            }
            Err(()) => {
                self.untriggered(frame);
                Ok(())
            }
        }
    }

    /// Queues `frame` of a live source if its camera scores it and the queue has room: a live
    /// camera's next frame is worth more than a stale one, so a frame the scoring side has no
    /// room for is dropped (and counted) rather than waited for. Errs only when the scoring side
    /// has stopped.
    pub fn offer(&self, mut frame: Frame) -> Result<(), Closed> {
        self.check_time(&mut frame);
        // The room is taken before the trigger, so a full queue does not use a trigger up.
        let permit = match self.tx.try_reserve() {
            Ok(p) => p,
            Err(mpsc::error::TrySendError::Full(())) => {
                self.dropped(&frame.camera);
                return Ok(());
            }
            Err(mpsc::error::TrySendError::Closed(())) => return Err(Closed),
        };
        match self.triggers.take(frame.slot, arrival(&frame)) {
            Ok(id) => {
                frame.trigger = id;
                permit.send(frame);
            }
            Err(()) => self.untriggered(frame),
        }
        Ok(())
    }

    /// Whether a live source should decode and hand over its frame taken at `time`: always for
    /// cameras without a trigger (`None`: their own rate decides), and for a triggered camera
    /// only for the first frame taken while a trigger waits (which claims it).
    pub fn wanted(&self, slot: usize, time: SystemTime) -> Option<bool> {
        self.triggers.claim(slot, instant_of(time, Instant::now()))
    }

    /// Every frame passes here, whatever its source: a time outside the sane window (a file
    /// dated 1969, a message in year 10000) is replaced by the arrival and counted, so that
    /// nothing after (alert ids, RFC 3339 text, pruning) meets a time it cannot handle.
    fn check_time(&self, frame: &mut Frame) {
        let (time, fix) = crate::frame::checked_time(frame.time, SystemTime::now());
        if let Some(fix) = fix {
            tracing::warn!(
                camera = frame.camera,
                source = frame.origin.describe(),
                "frame time {:?} is {}: scored with its arrival time instead; check the camera's or file system's clock",
                frame
                    .time
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i128)
                    .unwrap_or_else(|e| -(e.duration().as_millis() as i128)),
                fix.name().replace('_', " ")
            );
            self.triggers
                .metrics()
                .inc("vigil_frame_times_fixed_total", &[("camera", &frame.camera), ("reason", fix.name())]);
            frame.time = time;
        }
    }

    fn untriggered(&self, mut frame: Frame) {
        self.triggers.metrics().inc("vigil_frames_untriggered_total", &[("camera", &frame.camera)]);
        if let Some(done) = frame.done.take() {
            let _ = done.send(Outcome::Skipped);
        }
    }

    fn dropped(&self, camera: &str) {
        self.triggers.metrics().inc("vigil_frames_dropped_total", &[("camera", camera), ("reason", "busy")]);
    }
}

/// The scoring side has stopped.
#[derive(Debug, thiserror::Error)]
#[error("the scoring stages have stopped")]
pub struct Closed;

/// When `frame` came into being, on the clock triggers are kept by: a file when it was last
/// written (it may have settled since), a stream's frame when it was taken (decoding takes a
/// while), a message when vigil took it from the broker.
fn arrival(frame: &Frame) -> Instant {
    match &frame.origin {
        crate::frame::Origin::File(_) | crate::frame::Origin::Stream(_) => {
            instant_of(frame.time, Instant::now()).min(frame.received)
        }
        crate::frame::Origin::Topic(_) => frame.received,
    }
}

/// The instant of wall-clock `time`, `now` being the instant of this moment's wall clock (read
/// together, so the two clocks are compared at one point).
fn instant_of(time: SystemTime, now: Instant) -> Instant {
    match time.elapsed() {
        Ok(age) => now.checked_sub(age).unwrap_or(now),
        // A time ahead of this clock (a camera's clock, a coarse file time): now.
        Err(_) => now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::trigger::TriggerConfig;
    use std::time::Duration;

    fn live_frame(slot: usize) -> Frame {
        Frame {
            slot,
            camera: "cam1".into(),
            origin: crate::frame::Origin::Stream("rtsp://cam/live".into()),
            class: None,
            bytes: vec![],
            trigger: None,
            time: SystemTime::now(),
            received: Instant::now(),
            done: None,
        }
    }

    #[test]
    fn a_live_frame_that_finds_the_queue_full_is_dropped_and_keeps_the_trigger_for_the_next() {
        let config = TriggerConfig { mqtt: "line1/+/part_present".into(), timeout: Duration::from_secs(60) };
        let t = Arc::new(Triggers::new([(1, "cam1".to_owned(), config)], Arc::new(Metrics::default())));
        let (tx, mut rx) = mpsc::channel(1);
        let q = Queue::new(tx, t.clone());
        t.fire("line1/a/part_present", br#"{"id":"p1"}"#);
        q.offer(live_frame(0)).unwrap();
        q.offer(live_frame(1)).unwrap();
        let busy = [("camera", "cam1"), ("reason", "busy")];
        assert_eq!(t.metrics().count("vigil_frames_dropped_total", &busy), 1);
        assert!(rx.try_recv().is_ok_and(|f| f.slot == 0));
        // Room again: the triggered camera's frame takes the trigger that waited.
        q.offer(live_frame(1)).unwrap();
        assert_eq!(rx.try_recv().unwrap().trigger.as_deref(), Some("p1"));
        drop(rx);
        assert!(q.offer(live_frame(0)).is_err(), "scoring stopped");
    }
}
