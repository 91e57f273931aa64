//! Part-present triggers: a camera with `trigger` scores only the first frame that arrives
//! after each trigger message (others are skipped, counted); a trigger that no frame follows
//! within `timeout` is counted and logged. The trigger's `id` is carried into the alert.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::metrics::Metrics;
use crate::problem::Problems;
use crate::problem::valid_topic_filter;
use crate::topics::topic_matches;

/// `trigger = { mqtt = "line1/part_present", timeout = "2s" }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerConfig {
    /// MQTT topic (or filter) of the part-present signal, on the `[mqtt]` broker. Its
    /// payload is empty, or JSON whose `id` (a string or number) is carried into the alert.
    pub mqtt: String,
    /// A trigger no frame follows within this long is counted as missed
    /// (`vigil_triggers_total{result="missed"}`) and logged.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(2)
}

/// The longest trigger id kept; longer ones are refused as a bad payload.
const MAX_ID: usize = 128;

/// Triggers waiting for a frame, per camera, beyond which the oldest are counted as missed:
/// a line cannot hold more parts in front of one camera.
const MAX_PENDING: usize = 64;

impl TriggerConfig {
    /// Checks the values under `key` (`cameras[0].trigger`).
    pub fn validate(&self, key: &str, has_broker: bool, p: &mut Problems) {
        if !has_broker {
            p.add(key, "a trigger needs the [mqtt] broker section");
        }
        if !valid_topic_filter(&self.mqtt) {
            p.at(key, "mqtt", format!("`{}`: not a valid MQTT topic filter", self.mqtt.escape_default()));
        }
        if self.timeout.is_zero() {
            p.at(key, "timeout", "must be positive, e.g. \"2s\"");
        }
    }
}

/// One trigger waiting for its frame.
#[derive(Debug, Clone)]
struct Pending {
    id: Option<String>,
    fired: Instant,
    deadline: Instant,
    /// When a live source took it for the frame it is decoding (that frame takes it for good
    /// when it reaches the queue); other frames leave it alone for [`CLAIM`].
    claimed: Option<Instant>,
}

/// How long a trigger claimed by a live source's frame is left to that frame: decoding and
/// converting it takes milliseconds, and a frame lost on the way (damaged, dropped) must not
/// cost the part its inspection.
const CLAIM: Duration = Duration::from_secs(1);

/// How long after its timeout a trigger is counted as missed by the clock alone: a frame that
/// arrived in time may still be settling in its folder or waiting in the source.
const GRACE: Duration = Duration::from_secs(2);

/// A frame that arrived this little before vigil got the trigger still answers it: the signal
/// and the frame travel different roads (the broker, a file write), a camera triggered by the
/// same signal in hardware can be first, and file times are kept at the kernel's clock tick.
const EARLY: Duration = Duration::from_millis(50);

/// One triggered camera.
struct Gate {
    slot: usize,
    camera: String,
    config: TriggerConfig,
    pending: Mutex<VecDeque<Pending>>,
}

/// Every triggered camera's waiting triggers. Cameras without `trigger` score every frame.
#[derive(Default)]
pub struct Triggers {
    gates: Vec<Gate>,
    metrics: Arc<Metrics>,
    /// Woken when a trigger is added, so the expiry task sees the new deadline.
    added: Notify,
}

/// What a trigger message carried, or why it was refused.
pub fn parse_payload(payload: &[u8]) -> Result<Option<String>, String> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let value: serde_json::Value = serde_json::from_slice(payload)
        .map_err(|e| format!("not JSON ({e}); send an empty payload or {{\"id\": \"...\"}}"))?;
    let id = match value.get("id") {
        None | Some(serde_json::Value::Null) => return Ok(None),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        Some(other) => return Err(format!("`id` is {other}; give a string or a number")),
    };
    if id.len() > MAX_ID || id.chars().any(char::is_control) {
        return Err(format!("`id` must be at most {MAX_ID} characters with no control characters"));
    }
    Ok(Some(id))
}

impl Triggers {
    /// The triggered cameras among `cameras` (`(slot, camera id, trigger)`).
    pub fn new(cameras: impl IntoIterator<Item = (usize, String, TriggerConfig)>, metrics: Arc<Metrics>) -> Self {
        let gates = cameras
            .into_iter()
            .map(|(slot, camera, config)| Gate { slot, camera, config, pending: Mutex::new(VecDeque::new()) })
            .collect();
        Triggers { gates, metrics, added: Notify::new() }
    }

    /// Whether no camera has a trigger.
    /// The counters the triggers and the scoring queue report to.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn is_empty(&self) -> bool {
        self.gates.is_empty()
    }

    /// The topic filters to subscribe to.
    pub fn filters(&self) -> Vec<String> {
        let mut f: Vec<String> = self.gates.iter().map(|g| g.config.mqtt.clone()).collect();
        f.sort();
        f.dedup();
        f
    }

    /// Whether `topic` is a trigger of some camera.
    pub fn matches(&self, topic: &str) -> bool {
        self.gates.iter().any(|g| topic_matches(&g.config.mqtt, topic))
    }

    /// A message on `topic`: arms every camera whose trigger matches it. Returns how many.
    pub fn fire(&self, topic: &str, payload: &[u8]) -> usize {
        let gates: Vec<&Gate> = self.gates.iter().filter(|g| topic_matches(&g.config.mqtt, topic)).collect();
        if gates.is_empty() {
            return 0;
        }
        let id = match parse_payload(payload) {
            Ok(id) => id,
            Err(e) => {
                // The part is there all the same: it is inspected, only without an id.
                tracing::warn!(topic, "trigger payload refused, the frame is scored without a trigger id: {e}");
                self.metrics.inc("vigil_errors_total", &[("kind", "bad_trigger")]);
                None
            }
        };
        let now = Instant::now();
        for g in &gates {
            let mut pending = g.pending.lock().expect("trigger lock");
            if pending.len() == MAX_PENDING {
                pending.pop_front();
                self.missed(g, "more triggers waiting than a line holds parts");
            }
            pending.push_back(Pending { id: id.clone(), fired: now, deadline: now + g.config.timeout, claimed: None });
            self.show(g, pending.len());
        }
        self.added.notify_one();
        gates.len()
    }

    /// Whether a frame of `slot` that arrived at `arrived` is scored: yes for untriggered
    /// cameras; for a triggered one, only when a trigger fired before it arrived and had not
    /// run out, whose id (if any) is returned in `Ok`. A frame older than every waiting
    /// trigger leaves them for the next one.
    pub(crate) fn take(&self, slot: usize, arrived: Instant) -> Result<Option<String>, ()> {
        let Some(g) = self.gates.iter().find(|g| g.slot == slot) else { return Ok(None) };
        let mut pending = g.pending.lock().expect("trigger lock");
        while let Some(p) = pending.front() {
            if p.deadline < arrived {
                pending.pop_front();
                self.show(g, pending.len());
                self.missed(g, "no frame arrived in time");
                continue;
            }
            if arrived + EARLY < p.fired {
                return Err(());
            }
            let p = pending.pop_front().expect("front");
            self.show(g, pending.len());
            self.metrics.inc("vigil_triggers_total", &[("camera", &g.camera), ("result", "scored")]);
            return Ok(p.id);
        }
        Err(())
    }

    /// For a triggered camera, whether a trigger that has not run out, and that no other
    /// frame has claimed, waits for a frame of `slot` taken at `at`, which then claims it;
    /// `None` for a camera without a trigger.
    pub(crate) fn claim(&self, slot: usize, at: Instant) -> Option<bool> {
        let g = self.gates.iter().find(|g| g.slot == slot)?;
        let mut pending = g.pending.lock().expect("trigger lock");
        let now = Instant::now();
        let free = pending.iter_mut().find(|p| {
            p.fired <= at + EARLY && at <= p.deadline && p.claimed.is_none_or(|c| now.duration_since(c) > CLAIM)
        });
        Some(free.map(|p| p.claimed = Some(now)).is_some())
    }

    fn show(&self, g: &Gate, waiting: usize) {
        self.metrics.set("vigil_triggers_pending", &[("camera", &g.camera)], waiting as f64);
    }

    fn missed(&self, g: &Gate, why: &str) {
        tracing::warn!(camera = g.camera, "trigger missed: {why} (within {:?}); check the camera", g.config.timeout);
        self.metrics.inc("vigil_triggers_total", &[("camera", &g.camera), ("result", "missed")]);
    }

    /// Counts the triggers whose time ran out; returns when the next one runs out.
    fn expire(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        for g in &self.gates {
            let mut pending = g.pending.lock().expect("trigger lock");
            while pending.front().is_some_and(|p| p.deadline + GRACE < now) {
                pending.pop_front();
                self.show(g, pending.len());
                self.missed(g, "no frame arrived in time");
            }
            if let Some(p) = pending.front() {
                let due = p.deadline + GRACE;
                next = Some(next.map_or(due, |n| n.min(due)));
            }
        }
        next
    }

    /// Counts missed triggers as their time runs out (not only when the next frame comes), until
    /// `stop` fires.
    pub async fn watch(self: Arc<Self>, mut stop: crate::shutdown::Shutdown) {
        loop {
            let next = self.expire();
            let wait = async {
                match next {
                    Some(t) => tokio::time::sleep_until((t + Duration::from_millis(1)).into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = wait => {}
                _ = self.added.notified() => {}
                _ = stop.recv() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn triggers(timeout: Duration) -> Triggers {
        let config = TriggerConfig { mqtt: "line1/+/part_present".into(), timeout };
        Triggers::new([(1, "cam1".to_owned(), config)], Arc::new(Metrics::default()))
    }

    #[test]
    fn payloads_are_empty_or_carry_an_id() {
        assert_eq!(parse_payload(b""), Ok(None));
        assert_eq!(parse_payload(b" \n"), Ok(None));
        assert_eq!(parse_payload(br#"{"id": "part-17"}"#), Ok(Some("part-17".into())));
        assert_eq!(parse_payload(br#"{"id": 17, "x": 1}"#), Ok(Some("17".into())));
        assert_eq!(parse_payload(br#"{"station": 3}"#), Ok(None));
        assert!(parse_payload(b"part-17").unwrap_err().contains("not JSON"));
        assert!(parse_payload(br#"{"id": [1]}"#).unwrap_err().contains("string or a number"));
        assert!(parse_payload(format!(r#"{{"id": "{}"}}"#, "x".repeat(200)).as_bytes()).is_err());
    }

    #[test]
    fn each_trigger_lets_one_frame_through_with_its_id() {
        let t = triggers(Duration::from_secs(60));
        let before = Instant::now();
        assert_eq!(t.take(0, before), Ok(None), "an untriggered camera scores every frame");
        assert_eq!(t.take(1, before), Err(()), "no trigger yet: skipped");
        assert_eq!(t.fire("line1/a/part_present", br#"{"id":"p1"}"#), 1);
        assert_eq!(t.fire("line1/a/part_present", b""), 1);
        assert_eq!(t.fire("line2/a/part_present", b""), 0, "another line's signal");
        assert_eq!(
            t.take(1, before - EARLY - Duration::from_millis(1)),
            Err(()),
            "a frame from before the trigger does not use it up"
        );
        let now = Instant::now();
        assert_eq!(t.take(1, now), Ok(Some("p1".into())));
        assert_eq!(t.take(1, now), Ok(None));
        assert_eq!(t.take(1, now), Err(()));
        assert_eq!(t.metrics.count("vigil_triggers_total", &[("camera", "cam1"), ("result", "scored")]), 2);
    }

    #[test]
    fn a_trigger_no_frame_follows_in_time_is_counted_as_missed() {
        let t = triggers(Duration::from_millis(20));
        t.fire("line1/a/part_present", b"");
        t.fire("line1/a/part_present", b"not json");
        assert_eq!(t.metrics.count("vigil_errors_total", &[("kind", "bad_trigger")]), 1);
        std::thread::sleep(Duration::from_millis(40));
        assert!(t.expire().is_some(), "within the grace a late frame may still come");
        assert_eq!(t.take(1, Instant::now()), Err(()), "a frame after the timeout is not the part's");
        assert_eq!(t.metrics.count("vigil_triggers_total", &[("camera", "cam1"), ("result", "missed")]), 2);
        assert_eq!(t.expire(), None);
    }

    #[test]
    fn a_live_camera_decodes_one_frame_per_trigger() {
        let t = triggers(Duration::from_secs(60));
        let now = Instant::now();
        assert_eq!(t.claim(0, now), None, "an untriggered camera goes by its rate");
        assert_eq!(t.claim(1, now), Some(false), "no trigger: nothing to decode");
        t.fire("line1/a/part_present", br#"{"id":"p1"}"#);
        let after = Instant::now();
        assert_eq!(t.claim(1, after), Some(true), "the first frame after the trigger is decoded");
        assert_eq!(t.claim(1, after), Some(false), "the next ones are not, while the first is on its way");
        assert_eq!(t.take(1, after), Ok(Some("p1".into())), "the claiming frame takes the trigger");
        assert_eq!(t.claim(1, after), Some(false));
    }
}
