//! What the page shows, kept as the decide stage goes: per camera the latest frame with its
//! anomaly map, the score over the last hours, the recent alerts; and the stream of events
//! (scores, alerts, thresholds, verdicts) the page follows live.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ndarray::Array2;
use tokio::sync::broadcast;

use crate::alert::Alert;
use crate::frame::Area;

/// How far back the score chart goes.
pub const HISTORY: Duration = Duration::from_secs(6 * 3600);
/// Alerts listed per camera.
pub const RECENT_ALERTS: usize = 20;
/// Events a slow page may fall behind by before it misses some (it then reloads its state).
const EVENTS: usize = 512;
/// Cameras the board follows, at most: an MQTT group takes its ids from messages, and made-up
/// ids must not grow the board (each holds its latest frame and hours of points) without end.
pub const MAX_CAMERAS: usize = 256;

/// The board's entry of `camera`, made if there is room.
fn entry<'a>(cameras: &'a mut HashMap<String, Camera>, camera: &str) -> Option<&'a mut Camera> {
    if !cameras.contains_key(camera) {
        if cameras.len() >= MAX_CAMERAS {
            return None;
        }
        cameras.insert(camera.to_owned(), Camera::default());
    }
    cameras.get_mut(camera)
}

/// One point of the score chart: the highest score of a second.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Point {
    /// Milliseconds since 1970, at the start of the second.
    pub t: u64,
    /// The highest raw score in that second.
    pub score: f32,
    /// The threshold in force for it.
    pub threshold: f32,
}

/// The latest frame of a camera, rendered on request.
#[derive(Debug, Clone)]
pub struct Latest {
    /// Counts frames, so a rendering can be cached.
    pub seq: u64,
    /// The encoded frame.
    pub bytes: std::sync::Arc<Vec<u8>>,
    /// The scored part.
    pub area: Area,
    /// The anomaly map, when the model has one.
    pub map: Option<std::sync::Arc<Array2<f32>>>,
    /// The threshold in force.
    pub threshold: f32,
}

#[derive(Debug, Default)]
struct Camera {
    history: VecDeque<Point>,
    latest: Option<Latest>,
    alerts: VecDeque<Alert>,
    /// The camera's drift state as the page shows it (`decide::drift`), once judged.
    drift: Option<serde_json::Value>,
}

/// The live state of every camera and the event stream.
#[derive(Debug)]
pub struct Board {
    cameras: Mutex<HashMap<String, Camera>>,
    events: broadcast::Sender<String>,
    seq: std::sync::atomic::AtomicU64,
}

impl Default for Board {
    fn default() -> Self {
        Board { cameras: Mutex::default(), events: broadcast::channel(EVENTS).0, seq: Default::default() }
    }
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Board {
    /// Follows the events: each is a JSON object with `type` (`score`, `alert`, `threshold`,
    /// `verdict`, `drift`) and `camera`.
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.events.subscribe()
    }

    /// Sends an event to every page following.
    pub fn event(&self, kind: &str, camera: &str, mut body: serde_json::Value) {
        body["type"] = kind.into();
        body["camera"] = camera.into();
        let _ = self.events.send(body.to_string());
    }

    /// Records a scored frame: a point of the chart, and the latest frame.
    pub fn scored(&self, camera: &str, time: SystemTime, score: f32, threshold: f32, latest: Option<Latest>) {
        // A clock ahead (a camera's, or a file's time) must not hold later points back.
        let now = millis(SystemTime::now());
        let t = millis(time).min(now) / 1000 * 1000;
        {
            let mut cameras = self.cameras.lock().expect("board lock");
            let Some(c) = entry(&mut cameras, camera) else { return };
            match c.history.back_mut() {
                Some(p) if p.t == t => {
                    if score > p.score || score.is_nan() {
                        p.score = score;
                    }
                    p.threshold = threshold;
                }
                // Frames can arrive out of order (file times): keep the chart sorted.
                Some(p) if p.t > t => {}
                _ => c.history.push_back(Point { t, score, threshold }),
            }
            let oldest = now.saturating_sub(HISTORY.as_millis() as u64);
            while c.history.front().is_some_and(|p| p.t < oldest) {
                c.history.pop_front();
            }
            if let Some(mut l) = latest {
                l.seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                c.latest = Some(l);
            }
        }
        let score = if score.is_finite() { serde_json::json!(score) } else { serde_json::Value::Null };
        self.event("score", camera, serde_json::json!({ "t": millis(time), "score": score, "threshold": threshold }));
    }

    /// Records an alert.
    pub fn alert(&self, alert: &Alert) {
        {
            let mut cameras = self.cameras.lock().expect("board lock");
            let Some(c) = entry(&mut cameras, &alert.camera) else { return };
            // The same frame alerted again (a redelivery): one row.
            if c.alerts.iter().any(|a| a.id == alert.id) {
                return;
            }
            c.alerts.push_front(alert.clone());
            c.alerts.truncate(RECENT_ALERTS);
        }
        self.event("alert", &alert.camera, serde_json::json!({ "alert": alert }));
    }

    /// Seeds a camera's alert list (at start, from the kept frames), newest first.
    pub fn seed_alerts(&self, camera: &str, alerts: Vec<Alert>) {
        let mut cameras = self.cameras.lock().expect("board lock");
        let Some(c) = entry(&mut cameras, camera) else { return };
        c.alerts = alerts.into_iter().take(RECENT_ALERTS).collect();
    }

    /// The chart's points of `camera` after `since` (milliseconds since 1970).
    pub fn history(&self, camera: &str, since: u64) -> Vec<Point> {
        let cameras = self.cameras.lock().expect("board lock");
        cameras.get(camera).map(|c| c.history.iter().filter(|p| p.t > since).copied().collect()).unwrap_or_default()
    }

    /// The recent alerts of `camera`, newest first.
    pub fn alerts(&self, camera: &str) -> Vec<Alert> {
        let cameras = self.cameras.lock().expect("board lock");
        cameras.get(camera).map(|c| c.alerts.iter().cloned().collect()).unwrap_or_default()
    }

    /// The latest frame of `camera`.
    pub fn latest(&self, camera: &str) -> Option<Latest> {
        self.cameras.lock().expect("board lock").get(camera).and_then(|c| c.latest.clone())
    }

    /// Records a camera's drift state (`state` `ON` or `OFF`, with the reading) and tells the
    /// pages.
    pub fn drift(&self, camera: &str, state: serde_json::Value) {
        {
            let mut cameras = self.cameras.lock().expect("board lock");
            let Some(c) = entry(&mut cameras, camera) else { return };
            c.drift = Some(state.clone());
        }
        self.event("drift", camera, serde_json::json!({ "drift": state }));
    }

    /// A camera's drift state, once judged.
    pub fn drift_state(&self, camera: &str) -> Option<serde_json::Value> {
        self.cameras.lock().expect("board lock").get(camera).and_then(|c| c.drift.clone())
    }

    /// Every camera seen so far.
    pub fn cameras(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.cameras.lock().expect("board lock").keys().cloned().collect();
        ids.sort();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_point_per_second_keeps_the_highest_score() {
        let b = Board::default();
        let mut events = b.subscribe();
        let t0 = UNIX_EPOCH + Duration::from_millis(millis(SystemTime::now()) / 1000 * 1000 - 5000);
        b.scored("c", t0, 0.2, 1.0, None);
        b.scored("c", t0 + Duration::from_millis(400), 0.7, 1.0, None);
        b.scored("c", t0 + Duration::from_millis(900), 0.1, 1.0, None);
        b.scored("c", t0 + Duration::from_millis(1200), 0.3, 1.1, None);
        let h = b.history("c", 0);
        assert_eq!(h.len(), 2);
        assert_eq!((h[0].score, h[1].score, h[1].threshold), (0.7, 0.3, 1.1));
        assert_eq!(b.history("c", h[0].t).len(), 1, "since");
        let first: serde_json::Value = serde_json::from_str(&events.try_recv().unwrap()).unwrap();
        assert_eq!((first["type"].as_str(), first["camera"].as_str()), (Some("score"), Some("c")));
        // A clock ahead: the point lands now, and later points are not held back.
        b.scored("ahead", SystemTime::now() + Duration::from_secs(3600), 0.4, 1.0, None);
        let now = millis(SystemTime::now());
        assert!(b.history("ahead", 0)[0].t <= now, "clamped to now");
        // Older than the chart's span: dropped.
        b.scored("old", UNIX_EPOCH + Duration::from_secs(1), 0.5, 1.0, None);
        assert!(b.history("old", 0).is_empty());
    }
}
