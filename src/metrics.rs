//! Counters, gauges and histograms of the running daemon, kept in a `prometheus-client`
//! registry: rendered for Prometheus on `/metrics` (served by `web/`), and as the JSON of the
//! MQTT `stats` topic.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds of the latency histogram, seconds.
const LATENCY_BUCKETS: [f64; 12] = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0];
/// Upper bounds of the normalised-score histogram.
const SCORE_BUCKETS: [f64; 10] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];

/// A metric's labels, in the order they are written.
type Labels = Vec<(String, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

/// The registered families, by the name the exposition shows.
struct Families {
    counters: BTreeMap<&'static str, Family<Labels, Counter>>,
    gauges: BTreeMap<&'static str, Family<Labels, FloatGauge>>,
    histograms: BTreeMap<&'static str, Histograms>,
}

/// The daemon's metrics; cheap to update from any thread.
pub struct Metrics {
    registry: Registry,
    families: Families,
    /// Every series created so far, for the `stats` JSON (the registry only encodes).
    series: Mutex<BTreeMap<(&'static str, Labels), Series>>,
    /// What `/healthz` and the watchdog report.
    pub health: Arc<crate::health::Health>,
}

#[derive(Clone)]
enum Series {
    Counter(Counter),
    Gauge(FloatGauge),
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").field("health", &self.health).finish_non_exhaustive()
    }
}

fn labels(l: &[(&'static str, &str)]) -> Labels {
    l.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

fn score_histogram() -> Histogram {
    Histogram::new(SCORE_BUCKETS)
}

const HELP: &[(&str, &str, &str)] = &[
    ("vigil_frames_total", "counter", "Frames by camera and result (normal, anomalous, rejected)."),
    ("vigil_errors_total", "counter", "Errors by kind (bad input, engine, sink, broker)."),
    ("vigil_alerts_total", "counter", "Alerts emitted by camera."),
    ("vigil_alerts_suppressed_total", "counter", "Anomalous frames not alerted because of cooldown or hysteresis."),
    (
        "vigil_drift",
        "gauge",
        "1 while the camera's scores no longer look like its bundle's calibration (drift), else 0.",
    ),
    (
        "vigil_drift_shift",
        "gauge",
        "Median of the camera's recent scores, in calibration standard deviations from the calibration's median.",
    ),
    ("vigil_drift_raised_total", "counter", "Times drift was raised, by camera."),
    (
        "vigil_frames_dropped_total",
        "counter",
        "Frames of live cameras dropped by camera and reason (busy, decoder_behind).",
    ),
    ("vigil_reloads_total", "counter", "Bundle reloads by result."),
    ("vigil_queue_depth", "gauge", "Frames waiting to be decoded and scored."),
    ("vigil_alerts_pending", "gauge", "Messages (availability, state) not yet acknowledged by the broker."),
    ("vigil_outbox_pending", "gauge", "Alerts in the durable outbox, not yet acknowledged by the broker."),
    ("vigil_alerts_delivered_total", "counter", "Alerts the broker acknowledged."),
    ("vigil_alerts_dropped_total", "counter", "Alerts dropped by reason (a full outbox)."),
    ("vigil_snapshots_dropped_total", "counter", "Snapshots not rendered because the snapshot worker was behind."),
    (
        "vigil_alerts_duplicate_total",
        "counter",
        "Alerts not sent again because the same id was already sent or queued.",
    ),
    (
        "vigil_bundle_rollouts_total",
        "counter",
        "Bundles rolled out over MQTT by camera and result (installed, refused).",
    ),
    (
        "vigil_triggers_total",
        "counter",
        "Trigger messages by camera and result (scored: a frame followed; missed: none in time).",
    ),
    ("vigil_triggers_pending", "gauge", "Triggers waiting for their frame, by camera."),
    (
        "vigil_frames_untriggered_total",
        "counter",
        "Frames of triggered cameras skipped because no trigger was waiting.",
    ),
    (
        "vigil_stream_frames_total",
        "counter",
        "Frames of live cameras (RTSP, V4L2) by what was done: sampled (offered to scoring), decoded (for later frames), skipped, damaged.",
    ),
    ("vigil_stream_connected", "gauge", "1 while a live camera's stream is up, by camera."),
    ("vigil_stream_reconnects_total", "counter", "Live camera streams lost or failed and opened again, by camera."),
    ("vigil_verdicts_total", "counter", "Verdicts given on alerts, by camera and verdict (false_alarm, confirmed)."),
    ("vigil_http_connections", "gauge", "Connections open to the HTTP listener (at most http.max_connections)."),
    (
        "vigil_http_evicted_total",
        "counter",
        "HTTP connections closed to make room when all were taken, by what they were waiting in (head, idle, login_body).",
    ),
    ("vigil_mqtt_connected", "gauge", "1 while connected to the broker."),
    (
        "vigil_health_condition",
        "gauge",
        "1 while a health condition is raised (a stage ended, state_dir full, clock not set), by condition and severity.",
    ),
    (
        "vigil_frame_times_fixed_total",
        "counter",
        "Frames whose time was outside 2000-01-01 .. now + 60 s and was replaced by their arrival, by camera and reason.",
    ),
    (
        "vigil_outbox_failing",
        "gauge",
        "1 while the outbox's last write failed (a full state folder): alerts are not stored.",
    ),
    ("vigil_state_dir_free_bytes", "gauge", "Free bytes on the state folder's file system."),
    ("vigil_model_info", "gauge", "The bundle each camera serves."),
    ("vigil_latency_seconds", "histogram", "From frame arrival to decision."),
    ("vigil_normalized_score", "histogram", "Normalised scores (0.5 = threshold) by camera."),
];

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let mut families = Families { counters: BTreeMap::new(), gauges: BTreeMap::new(), histograms: BTreeMap::new() };
        for (name, kind, help) in HELP {
            match *kind {
                "counter" => {
                    let f = Family::<Labels, Counter>::default();
                    // The client appends `_total` to counters itself.
                    registry.register(name.trim_end_matches("_total"), help.trim_end_matches('.'), f.clone());
                    families.counters.insert(name, f);
                }
                "gauge" => {
                    let f = Family::<Labels, FloatGauge>::default();
                    registry.register(*name, help.trim_end_matches('.'), f.clone());
                    families.gauges.insert(name, f);
                }
                _ => {
                    let make: fn() -> Histogram =
                        if *name == "vigil_latency_seconds" { latency_histogram } else { score_histogram };
                    let f = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(make);
                    registry.register(*name, help.trim_end_matches('.'), f.clone());
                    families.histograms.insert(name, f);
                }
            }
        }
        Metrics { registry, families, series: Mutex::default(), health: Arc::default() }
    }
}

impl Metrics {
    fn counter(&self, name: &'static str, l: &[(&'static str, &str)]) -> Counter {
        let family =
            self.families.counters.get(name).unwrap_or_else(|| panic!("metric {name} is not a counter in HELP"));
        let l = labels(l);
        let c = family.get_or_create_owned(&l);
        self.series.lock().expect("metrics lock").entry((name, l)).or_insert_with(|| Series::Counter(c.clone()));
        c
    }

    fn float_gauge(&self, name: &'static str, l: &[(&'static str, &str)]) -> FloatGauge {
        let family = self.families.gauges.get(name).unwrap_or_else(|| panic!("metric {name} is not a gauge in HELP"));
        let l = labels(l);
        let g = family.get_or_create_owned(&l);
        self.series.lock().expect("metrics lock").entry((name, l)).or_insert_with(|| Series::Gauge(g.clone()));
        g
    }

    /// Adds `n` to a counter.
    pub fn add(&self, name: &'static str, l: &[(&'static str, &str)], n: u64) {
        self.counter(name, l).inc_by(n);
    }

    /// Adds one to a counter.
    pub fn inc(&self, name: &'static str, l: &[(&'static str, &str)]) {
        self.add(name, l, 1);
    }

    /// A counter's value (0 for a series never counted).
    pub fn count(&self, name: &'static str, l: &[(&'static str, &str)]) -> u64 {
        match self.series.lock().expect("metrics lock").get(&(name, labels(l))) {
            Some(Series::Counter(c)) => c.get(),
            _ => 0,
        }
    }

    /// Sets a gauge.
    pub fn set(&self, name: &'static str, l: &[(&'static str, &str)], v: f64) {
        self.float_gauge(name, l).set(v);
    }

    /// Removes every series of gauge `name` whose label `key` is `value` (an info gauge whose
    /// other labels changed, such as a camera's bundle after a reload).
    pub fn remove_gauges(&self, name: &'static str, key: &str, value: &str) {
        let family = self.families.gauges.get(name).unwrap_or_else(|| panic!("metric {name} is not a gauge in HELP"));
        self.series.lock().expect("metrics lock").retain(|(n, l), _| {
            let hit = *n == name && l.iter().any(|(k, v)| k == key && v == value);
            if hit {
                family.remove(l);
            }
            !hit
        });
    }

    /// Adds to a gauge (negative to lower it).
    pub fn shift(&self, name: &'static str, l: &[(&'static str, &str)], d: f64) {
        self.float_gauge(name, l).inc_by(d);
    }

    /// Records a latency in seconds.
    pub fn latency(&self, seconds: f64) {
        self.observe("vigil_latency_seconds", &[], seconds);
    }

    /// Records a normalised score.
    pub fn score(&self, camera: &str, normalized: f64) {
        self.observe("vigil_normalized_score", &[("camera", camera)], normalized);
    }

    fn observe(&self, name: &'static str, l: &[(&'static str, &str)], v: f64) {
        let family = self.families.histograms.get(name).unwrap_or_else(|| panic!("metric {name} is not a histogram"));
        family.get_or_create(&labels(l)).observe(v);
    }

    /// A gauge's value.
    pub fn gauge(&self, name: &'static str, l: &[(&'static str, &str)]) -> f64 {
        match self.series.lock().expect("metrics lock").get(&(name, labels(l))) {
            Some(Series::Gauge(g)) => g.get(),
            _ => 0.0,
        }
    }

    /// Counts and logs a frame refused as bad input (or lost to an engine error).
    pub fn rejected(&self, camera: &str, source: &str, kind: &'static str, reason: &str) {
        tracing::warn!(camera, source, kind, "frame rejected: {source}: {reason}");
        self.inc("vigil_frames_total", &[("camera", camera), ("result", "rejected")]);
        self.inc("vigil_errors_total", &[("kind", kind)]);
    }

    /// Marks the daemon ready (bundles loaded, sources started) or not.
    pub fn set_ready(&self, ready: bool) {
        self.health.set_ready(ready);
    }

    /// Whether `/healthz` says ok: ready, and nothing has failed.
    pub fn is_ready(&self) -> bool {
        self.health.is_ok()
    }

    /// The Prometheus text exposition (version 0.0.4, [`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing into a String does not fail");
        out
    }

    /// Counters and gauges as a JSON object (`{"vigil_frames_total{camera=\"a\",...}": n}`),
    /// for the MQTT `stats` topic.
    pub fn snapshot(&self) -> serde_json::Value {
        let series = self.series.lock().expect("metrics lock");
        let mut m = serde_json::Map::new();
        for ((n, l), s) in series.iter() {
            let key = if l.is_empty() {
                (*n).to_owned()
            } else {
                format!("{n}{{{}}}", l.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","))
            };
            let value: serde_json::Value = match s {
                Series::Counter(c) => c.get().into(),
                Series::Gauge(g) => g.get().into(),
            };
            m.insert(key, value);
        }
        serde_json::Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.inc("vigil_frames_total", &[("camera", "c1"), ("result", "normal")]);
        m.inc("vigil_frames_total", &[("camera", "c1"), ("result", "normal")]);
        m.latency(0.004);
        m.set("vigil_queue_depth", &[], 3.0);
        let text = m.render();
        assert!(text.contains("vigil_frames_total{camera=\"c1\",result=\"normal\"} 2\n"), "{text}");
        assert!(text.contains("vigil_latency_seconds_bucket{le=\"0.005\"} 1\n"), "{text}");
        assert!(text.contains("vigil_latency_seconds_bucket{le=\"0.002\"} 0\n"), "{text}");
        assert!(text.contains("vigil_latency_seconds_count 1\n"), "{text}");
        assert!(text.contains("vigil_queue_depth 3.0\n"), "{text}");
        assert!(text.contains("# TYPE vigil_frames_total counter\n"), "{text}");
        assert_eq!(m.snapshot()["vigil_frames_total{camera=c1,result=normal}"], 2);
    }
}
