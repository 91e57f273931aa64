//! Counters, gauges and histograms of the running daemon, rendered for Prometheus
//! (`/metrics`) and as the JSON of the MQTT `stats` topic; and the small HTTP server that
//! serves them with `/healthz`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// `[http]`: metrics and health.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of `/metrics` and `/healthz`; absent: no HTTP server.
    pub listen: Option<SocketAddr>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { listen: Some(SocketAddr::from(([127, 0, 0, 1], 9187))) }
    }
}

/// Upper bounds of the latency histogram, seconds.
const LATENCY_BUCKETS: [f64; 12] = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0];
/// Upper bounds of the normalised-score histogram.
const SCORE_BUCKETS: [f64; 10] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];

type Labels = Vec<(&'static str, String)>;

#[derive(Debug, Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

#[derive(Debug, Default)]
struct Inner {
    counters: BTreeMap<(&'static str, Labels), u64>,
    gauges: BTreeMap<(&'static str, Labels), f64>,
    histograms: BTreeMap<(&'static str, Labels), Histogram>,
}

/// The daemon's metrics; cheap to update from any thread.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    ready: AtomicBool,
}

fn labels(l: &[(&'static str, &str)]) -> Labels {
    l.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

const HELP: &[(&str, &str, &str)] = &[
    ("vigil_frames_total", "counter", "Frames by camera and result (normal, anomalous, rejected)."),
    ("vigil_errors_total", "counter", "Errors by kind (bad input, engine, sink, broker)."),
    ("vigil_alerts_total", "counter", "Alerts emitted by camera."),
    ("vigil_alerts_suppressed_total", "counter", "Anomalous frames not alerted because of cooldown or hysteresis."),
    ("vigil_frames_dropped_total", "counter", "Frames dropped by reason (only where the config allows dropping)."),
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
    ("vigil_mqtt_connected", "gauge", "1 while connected to the broker."),
    ("vigil_model_info", "gauge", "The bundle each camera serves."),
    ("vigil_latency_seconds", "histogram", "From frame arrival to decision."),
    ("vigil_normalized_score", "histogram", "Normalised scores (0.5 = threshold) by camera."),
];

fn known(name: &str) -> bool {
    HELP.iter().any(|(n, _, _)| *n == name)
}

impl Metrics {
    /// Adds `n` to a counter.
    pub fn add(&self, name: &'static str, l: &[(&'static str, &str)], n: u64) {
        debug_assert!(known(name), "metric {name} has no HELP entry, so it would never be shown");
        *self.inner.lock().expect("metrics lock").counters.entry((name, labels(l))).or_default() += n;
    }

    /// Adds one to a counter.
    pub fn inc(&self, name: &'static str, l: &[(&'static str, &str)]) {
        self.add(name, l, 1);
    }

    /// Sets a gauge.
    pub fn set(&self, name: &'static str, l: &[(&'static str, &str)], v: f64) {
        debug_assert!(known(name), "metric {name} has no HELP entry, so it would never be shown");
        self.inner.lock().expect("metrics lock").gauges.insert((name, labels(l)), v);
    }

    /// Adds to a gauge (negative to lower it).
    pub fn shift(&self, name: &'static str, l: &[(&'static str, &str)], d: f64) {
        *self.inner.lock().expect("metrics lock").gauges.entry((name, labels(l))).or_default() += d;
    }

    /// Records a latency in seconds.
    pub fn latency(&self, seconds: f64) {
        self.observe("vigil_latency_seconds", &[], &LATENCY_BUCKETS, seconds);
    }

    /// Records a normalised score.
    pub fn score(&self, camera: &str, normalized: f64) {
        self.observe("vigil_normalized_score", &[("camera", camera)], &SCORE_BUCKETS, normalized);
    }

    fn observe(&self, name: &'static str, l: &[(&'static str, &str)], buckets: &[f64], v: f64) {
        let mut inner = self.inner.lock().expect("metrics lock");
        let h = inner.histograms.entry((name, labels(l))).or_default();
        if h.counts.is_empty() {
            h.counts = vec![0; buckets.len()];
        }
        for (c, b) in h.counts.iter_mut().zip(buckets) {
            if v <= *b {
                *c += 1;
            }
        }
        h.sum += v;
        h.count += 1;
    }

    /// A gauge's value.
    pub fn gauge(&self, name: &'static str, l: &[(&'static str, &str)]) -> f64 {
        self.inner.lock().expect("metrics lock").gauges.get(&(name, labels(l))).copied().unwrap_or(0.0)
    }

    /// Counts and logs a frame refused as bad input (or lost to an engine error).
    pub fn rejected(&self, camera: &str, source: &str, kind: &'static str, reason: &str) {
        tracing::warn!(camera, source, kind, "frame rejected: {source}: {reason}");
        self.inc("vigil_frames_total", &[("camera", camera), ("result", "rejected")]);
        self.inc("vigil_errors_total", &[("kind", kind)]);
    }

    /// Marks the daemon ready (bundles loaded, sources started) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Whether `/healthz` says ok.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let inner = self.inner.lock().expect("metrics lock");
        let mut out = String::new();
        let fmt_labels = |l: &Labels, extra: Option<(&str, String)>| {
            let mut parts: Vec<String> = l.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
            if let Some((k, v)) = extra {
                parts.push(format!("{k}=\"{v}\""));
            }
            if parts.is_empty() { String::new() } else { format!("{{{}}}", parts.join(",")) }
        };
        for (name, kind, help) in HELP {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for ((n, l), v) in inner.counters.iter().filter(|((n, _), _)| n == name) {
                out.push_str(&format!("{n}{} {v}\n", fmt_labels(l, None)));
            }
            for ((n, l), v) in inner.gauges.iter().filter(|((n, _), _)| n == name) {
                out.push_str(&format!("{n}{} {v}\n", fmt_labels(l, None)));
            }
            for ((n, l), h) in inner.histograms.iter().filter(|((n, _), _)| n == name) {
                let buckets: &[f64] = if *n == "vigil_latency_seconds" { &LATENCY_BUCKETS } else { &SCORE_BUCKETS };
                for (b, c) in buckets.iter().zip(&h.counts) {
                    out.push_str(&format!("{n}_bucket{} {c}\n", fmt_labels(l, Some(("le", b.to_string())))));
                }
                out.push_str(&format!("{n}_bucket{} {}\n", fmt_labels(l, Some(("le", "+Inf".into()))), h.count));
                out.push_str(&format!(
                    "{n}_sum{} {}\n{n}_count{} {}\n",
                    fmt_labels(l, None),
                    h.sum,
                    fmt_labels(l, None),
                    h.count
                ));
            }
        }
        out
    }

    /// Counters and gauges as a JSON object (`{"vigil_frames_total{camera=\"a\",...}": n}`),
    /// for the MQTT `stats` topic.
    pub fn snapshot(&self) -> serde_json::Value {
        let inner = self.inner.lock().expect("metrics lock");
        let key = |n: &str, l: &Labels| {
            if l.is_empty() {
                n.to_owned()
            } else {
                format!("{n}{{{}}}", l.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","))
            }
        };
        let mut m = serde_json::Map::new();
        for ((n, l), v) in &inner.counters {
            m.insert(key(n, l), (*v).into());
        }
        for ((n, l), v) in &inner.gauges {
            m.insert(key(n, l), (*v).into());
        }
        serde_json::Value::Object(m)
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Serves `GET /metrics` and `GET /healthz` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: std::sync::Arc<Metrics>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut n = 0;
            // Read the request head (bounded; a slow or huge request is cut off).
            let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                while n < buf.len() {
                    match stream.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k,
                    }
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            })
            .await;
            if read.is_err() {
                return;
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let (status, ctype, body) = match (head.starts_with("GET "), path) {
                (true, "/metrics") => ("200 OK", "text/plain; version=0.0.4", metrics.render()),
                (true, "/healthz") if metrics.is_ready() => ("200 OK", "text/plain", "ok\n".to_owned()),
                (true, "/healthz") => ("503 Service Unavailable", "text/plain", "starting or stopping\n".to_owned()),
                (true, _) => ("404 Not Found", "text/plain", "try /metrics or /healthz\n".to_owned()),
                _ => ("405 Method Not Allowed", "text/plain", "GET only\n".to_owned()),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
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
        assert!(text.contains("vigil_queue_depth 3\n"), "{text}");
        assert_eq!(m.snapshot()["vigil_frames_total{camera=c1,result=normal}"], 2);
    }
}
