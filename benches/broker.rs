//! What one Mosquitto sustains from a fleet: N simulated vigil boxes on loopback, each running
//! vigil's own alert path (the library's `Delivery`: durable outbox, QoS 2, 16 in flight, a
//! persistent session), each with a backlog of alerts to send; two consumers split the alerts
//! through a shared subscription (`$share/alerts/...`, as docs/fleet-at-scale.md advises).
//! Run with Mosquitto's default queue per client (1,000 messages; beyond it, QoS 1 and 2
//! messages for a client are dropped) and with one that holds the whole burst.
//! Measured per N: alerts per second from the first alert queued to the last one received,
//! the delay from queueing to receipt (p50/p99: under a backlog this is mostly the wait in the
//! box's own outbox), and alerts lost or received twice. The outboxes live on tmpfs, so this
//! machine's one disk does not stand in for N boxes' disks. One JSON line per N.
//!
//!   cargo bench --bench broker                      (N = 1, 10, 50; 1,000 alerts a box)
//!   VIGIL_BROKER_BOXES=1,100 VIGIL_BROKER_ALERTS=500 cargo bench --bench broker

#[path = "../tests/common/mosquitto.rs"]
#[allow(dead_code)]
mod mosquitto;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mosquitto::Mosquitto;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use vigil::metrics::Metrics;
use vigil::sink::delivery::Delivery;
use vigil::sink::outbox::{Entry, FullPolicy, Outbox};

/// How long one run may take before it is reported as incomplete.
const LIMIT: Duration = Duration::from_secs(120);

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

/// An alert of the size and shape the daemon sends (about 700 bytes), stamped with when it
/// was queued.
fn alert(device: &str, n: usize) -> Entry {
    let id = format!("{device}-{n:08}");
    let payload = serde_json::json!({
        "id": id, "device": device, "camera": "cam1", "source": "/srv/cameras/cam1/part-000123.png",
        "frame_time": "2026-12-07T10:00:00.000Z", "time": "2026-12-07T10:00:00.050Z",
        "score": 0.0712, "normalized_score": 0.81, "threshold": 0.0433, "queued_us": now_us(),
        "region": {"x": 112, "y": 64, "w": 48, "h": 40, "area_fraction": 0.012},
        "snapshot": format!("/var/lib/vigil/snapshots/cam1/{id}.jpg"),
        "model": {"name": "surface-padim", "version": 3, "family": "padim",
                  "sha256": "5f0c1b6a9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a29181706f5e4d3c2b1a0f9"},
        "latency_ms": 41.7, "suppressed_before": 0, "trigger": null,
    });
    Entry { id, topic: format!("vigil/{device}/cam1/anomaly"), payload: payload.to_string() }
}

#[derive(Default)]
struct Received {
    ids: HashMap<String, u32>,
    delays_ms: Vec<f64>,
    last: Option<Instant>,
}

/// A consumer in the shared-subscription group, recording what it receives.
async fn consumer(port: u16, name: String, seen: Arc<Mutex<Received>>) -> AsyncClient {
    let mut opts = MqttOptions::new(name, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(opts, 1000);
    client.subscribe("$share/alerts/vigil/+/+/anomaly", QoS::AtLeastOnce).await.unwrap();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let mut ready = Some(ready_tx);
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
                    let delay = now_us().saturating_sub(v["queued_us"].as_u64().unwrap()) as f64 / 1e3;
                    let mut s = seen.lock().unwrap();
                    *s.ids.entry(v["id"].as_str().unwrap().to_owned()).or_default() += 1;
                    s.delays_ms.push(delay);
                    s.last = Some(Instant::now());
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    ready_rx.await.unwrap();
    client
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

async fn run(boxes: usize, per_box: usize, queue: usize) -> serde_json::Value {
    let broker = Mosquitto::start_with(|_, port| {
        format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages {queue}\n")
    });
    let seen = Arc::new(Mutex::new(Received::default()));
    let mut consumers = vec![];
    for i in 0..2 {
        consumers.push(consumer(broker.port, format!("consumer-{i}"), seen.clone()).await);
    }
    let tmpfs = std::path::Path::new("/dev/shm");
    let dir = if tmpfs.is_dir() { tempfile::tempdir_in(tmpfs) } else { tempfile::tempdir() }.unwrap();
    let cfg: vigil::mqtt::MqttConfig =
        toml::from_str(&format!("host = \"127.0.0.1\"\nport = {}\nkeep_alive = \"30s\"\n", broker.port)).unwrap();
    let metrics = Arc::new(Metrics::default());
    let mut deliveries = vec![];
    for b in 0..boxes {
        let outbox =
            Outbox::open(&dir.path().join(format!("box{b}.jsonl")), per_box * 2, FullPolicy::DropOldest).unwrap();
        deliveries.push(Delivery::start(&cfg, &format!("box{b:03}"), outbox, metrics.clone()).unwrap());
    }
    // Every box connected before the clock starts.
    tokio::time::sleep(Duration::from_millis(500 + 10 * boxes as u64)).await;
    let total = boxes * per_box;
    let started = Instant::now();
    for n in 0..per_box {
        for (b, d) in deliveries.iter().enumerate() {
            d.put(alert(&format!("box{b:03}"), n)).unwrap();
        }
    }
    let queued = started.elapsed();
    loop {
        let (done, last) = {
            let s = seen.lock().unwrap();
            (s.ids.len() >= total, s.last.unwrap_or(started))
        };
        // Nothing more for a few seconds: what has not come is lost.
        if done || started.elapsed() > LIMIT || last.elapsed() > Duration::from_secs(5) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Late duplicates, if any, arrive within this.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let json = {
        let s = seen.lock().unwrap();
        let elapsed = s.last.map_or(LIMIT, |l| l.duration_since(started)).as_secs_f64();
        let mut delays = s.delays_ms.clone();
        delays.sort_by(f64::total_cmp);
        let received = s.ids.len();
        let duplicates: u32 = s.ids.values().map(|c| c - 1).sum();
        serde_json::json!({
            "bench": "broker", "broker": "mosquitto", "max_queued_messages": queue, "boxes": boxes, "consumers": consumers.len(),
            "alerts": total, "payload_bytes": alert("box000", 0).payload.len(), "qos": 2,
            "received": received, "lost": total - received.min(total), "duplicates": duplicates,
            "seconds": (elapsed * 1e3).round() / 1e3, "queueing_s": (queued.as_secs_f64() * 1e3).round() / 1e3,
            "alerts_per_s": (received as f64 / elapsed).round(),
            "delay_p50_ms": (percentile(&delays, 0.5) * 10.0).round() / 10.0,
            "delay_p99_ms": (percentile(&delays, 0.99) * 10.0).round() / 10.0,
            "complete": received >= total,
        })
    };
    for d in deliveries {
        d.stop().await;
    }
    for c in consumers {
        let _ = c.disconnect().await;
    }
    json
}

fn main() {
    // `cargo bench` passes `--bench`; a filter that does not name this benchmark skips it.
    if std::env::args().skip(1).any(|a| !a.starts_with('-') && !"broker".contains(a.as_str())) {
        return;
    }
    let boxes: Vec<usize> = std::env::var("VIGIL_BROKER_BOXES")
        .unwrap_or_else(|_| "1,10,50".into())
        .split(',')
        .map(|n| n.trim().parse().expect("VIGIL_BROKER_BOXES: numbers separated by commas"))
        .collect();
    let per_box: usize = std::env::var("VIGIL_BROKER_ALERTS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    // Mosquitto's default per-client queue, then one large enough for the whole burst.
    for queue in [1000, 1_000_000] {
        for &n in &boxes {
            println!("{}", rt.block_on(run(n, per_box, queue)));
        }
    }
}
