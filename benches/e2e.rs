//! End to end through the real daemon and a real Mosquitto: the time from a frame file being
//! renamed into a watched folder to its alert arriving at a subscriber, p50/p99, beside the
//! bare engine call on the same bundle; then a burst of frames dropped at once, and the
//! daemon's peak RSS over both. Prints one JSON line per engine.
//!
//!   cargo bench --bench e2e            (ONNX Runtime too when ORT_DYLIB_PATH is set; tract always)
//!   VIGIL_E2E_FRAMES=500 cargo bench --bench e2e

#[path = "../tests/common/mosquitto.rs"]
#[allow(dead_code)]
mod mosquitto;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mosquitto::{Mosquitto, Subscriber, free_port, http_get};

fn frame(seed: u32) -> Vec<u8> {
    // A 640x480 camera-like frame, different every time (each gets its own alert id).
    let img = image::GrayImage::from_fn(640, 480, |x, y| {
        let v = (x * 7 + y * 13 + seed * 31) % 97 + (((x / 40) + (y / 40) + seed) % 2) * 60;
        image::Luma([v as u8])
    });
    let mut out = std::io::Cursor::new(vec![]);
    img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

fn main() {
    // `cargo bench` passes `--bench`; a filter that does not name this benchmark skips it.
    if std::env::args().skip(1).any(|a| !a.starts_with('-') && !"e2e".contains(a.as_str())) {
        return;
    }
    let n: usize = std::env::var("VIGIL_E2E_FRAMES").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    if std::env::var_os("ORT_DYLIB_PATH").is_some() {
        run("ort", n);
    }
    run("tract", n);
}

/// One daemon on `kind`: `n` lone frames timed file to alert, then a burst of `BURST` frames
/// dropped at once (the daemon's memory peak), then the bare engine call.
fn run(kind: &str, n: usize) {
    const BURST: usize = 200;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bundle = root.join("models/surface-dae");
    let dir = tempfile::tempdir().unwrap();
    let (frames, state) = (dir.path().join("frames"), dir.path().join("state"));
    std::fs::create_dir_all(&frames).unwrap();
    let broker = Mosquitto::start();
    let http = free_port();
    let cfg = dir.path().join("vigil.toml");
    std::fs::write(
        &cfg,
        format!(
            "device_id = \"bench\"\nstate_dir = \"{}\"\n[engine]\nkind = \"{kind}\"\n[http]\nlisten = \"127.0.0.1:{http}\"\n\
             [mqtt]\nhost = \"127.0.0.1\"\nport = {}\n[alerts]\nsnapshot_keep = 0\n\
             [[cameras]]\nid = \"cam\"\nbundle = \"{}\"\nthreshold = 0.0\nsource = {{ type = \"folder\", path = \"{}\" }}\n",
            state.display(),
            broker.port,
            bundle.display(),
            frames.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["run", "--config", cfg.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sub = Subscriber::new(broker.port, "vigil/bench/#");
    sub.wait_for_text("vigil/bench/available", "online", Duration::from_secs(60));

    // Every frame scores above the threshold of 0, so every frame is alerted.
    let mut latencies = vec![];
    for i in 0..n + 5 {
        let bytes = frame(i as u32);
        let tmp = dir.path().join(format!("f{i:05}.jpg"));
        std::fs::write(&tmp, &bytes).unwrap();
        let started = Instant::now();
        std::fs::rename(&tmp, frames.join(format!("f{i:05}.jpg"))).unwrap();
        let got = sub.wait_for("vigil/bench/cam/anomaly", i + 1, Duration::from_secs(30));
        let arrived = got[i].at;
        // The first frames warm the caches and the engine up.
        if i >= 5 {
            latencies.push(arrived.duration_since(started).as_secs_f64() * 1e3);
        }
    }
    // A burst: frames land faster than they are scored and queue up.
    let staged: Vec<_> = (0..BURST)
        .map(|j| {
            let i = n + 5 + j;
            let tmp = dir.path().join(format!("f{i:05}.jpg"));
            std::fs::write(&tmp, frame(i as u32)).unwrap();
            (tmp, frames.join(format!("f{i:05}.jpg")))
        })
        .collect();
    let started = Instant::now();
    for (tmp, dest) in &staged {
        std::fs::rename(tmp, dest).unwrap();
    }
    sub.wait_for("vigil/bench/cam/anomaly", n + 5 + BURST, Duration::from_secs(120));
    let burst_s = started.elapsed().as_secs_f64();
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let peak_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let _ = http_get(http, "/healthz");
    child.kill().unwrap();
    child.wait().unwrap();

    // The bare engine call on the same bundle, batch 1.
    let b = vigil_model::bundle::Bundle::load(&bundle).unwrap();
    let choice =
        if kind == "ort" { vigil_model::engine::EngineChoice::Ort } else { vigil_model::engine::EngineChoice::Tract };
    let engine =
        vigil_model::engine::load(&b, &vigil_model::engine::EngineConfig { kind: choice, ..Default::default() })
            .unwrap();
    let macs = vigil_model::engine::tract::multiply_adds(&b).unwrap();
    let bare = vigil::commands::bench::engine_only(&engine, 1, 200, macs).unwrap();

    latencies.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    println!(
        "{}",
        serde_json::json!({
            "bench": "file_to_alert", "engine": kind, "frames": latencies.len(), "frame": "640x480 JPEG",
            "bundle": "models/surface-dae", "p50_ms": p50, "p90_ms": percentile(&latencies, 0.9), "p99_ms": p99,
            "max_ms": latencies[latencies.len() - 1],
            "engine_ms": bare.ms_per_frame, "p99_over_engine_ms": p99 - bare.ms_per_frame,
            "burst_frames": BURST, "burst_frames_per_s": BURST as f64 / burst_s,
            "peak_rss_mib": peak_kib / 1024.0,
        })
    );
}
