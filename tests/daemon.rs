//! The daemon end to end: real folders, a real Mosquitto, the library entry point
//! (`daemon::run`) and the `vigil` binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use vigil_model::bundle::manifest::{ColorMode, Family};
use vigil_model::engine::EngineChoice;

use crate::common::mosquitto::{Mosquitto, Subscriber, free_port, http_get, metric};
use crate::common::{engine_config, reference_bundle};

pub const WAIT: Duration = Duration::from_secs(30);

/// A bundle, a normal and an anomalous frame for it, and a threshold between their scores.
pub struct Plant {
    pub dir: tempfile::TempDir,
    pub bundle: PathBuf,
    pub normal: Vec<u8>,
    pub anomalous: Vec<u8>,
    pub threshold: f32,
    pub http: u16,
}

fn png(img: image::GrayImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(vec![]);
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

impl Plant {
    pub fn new() -> Plant {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("bundle");
        let b = reference_bundle(&bundle, Family::Dae, ColorMode::Gray, 32);
        // The reference weights are random, so which frame scores high is found by scoring.
        let engine = vigil_model::engine::load(&b, &engine_config(EngineChoice::Tract)).unwrap();
        let pre = vigil_model::preprocess::Preprocessor::new(&b.manifest.input);
        let mut candidates = vec![];
        for v in [0u8, 60, 128, 200, 255] {
            candidates.push(png(image::GrayImage::from_pixel(48, 40, image::Luma([v]))));
        }
        candidates.push(png(image::GrayImage::from_fn(48, 40, |x, y| {
            image::Luma([if (x / 4 + y / 4) % 2 == 0 { 0 } else { 255 }])
        })));
        candidates.push(png(image::GrayImage::from_fn(48, 40, |x, _| image::Luma([(x * 5) as u8]))));
        let mut scored: Vec<(f32, Vec<u8>)> = candidates
            .into_iter()
            .map(|bytes| {
                let t = pre.tensor_from_bytes(&bytes).unwrap().insert_axis(ndarray::Axis(0));
                (engine.run(t.view()).unwrap().scores[0], bytes)
            })
            .collect();
        scored.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (lo, hi) = (scored[0].0, scored[scored.len() - 1].0);
        assert!(hi > lo * 1.2 && hi - lo > 1e-4, "no two frames separate: {lo} vs {hi}");
        Plant {
            bundle,
            normal: scored.remove(0).1,
            anomalous: scored.pop().unwrap().1,
            threshold: (lo + hi) / 2.0,
            http: free_port(),
            dir,
        }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        let p = self.dir.path().join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        p
    }

    /// Writes `vigil.toml`: `body` is appended after the common part.
    pub fn config(&self, body: &str) -> PathBuf {
        let path = self.path("vigil.toml");
        let text = format!(
            "device_id = \"box1\"\nstate_dir = \"{}\"\n[engine]\nkind = \"tract\"\nthreads = 1\n[http]\nlisten = \"127.0.0.1:{}\"\n{body}",
            self.path("state/x").parent().unwrap().display(),
            self.http
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A folder camera `cam1` watching `frames/`.
    pub fn folder_camera(&self, extra: &str) -> String {
        std::fs::create_dir_all(self.path("frames/x").parent().unwrap()).unwrap();
        format!(
            "[[cameras]]\nid = \"cam1\"\nbundle = \"{}\"\nthreshold = {}\nsource = {{ type = \"folder\", path = \"{}\", settle = \"200ms\" {extra} }}\n",
            self.bundle.display(),
            self.threshold,
            self.path("frames/x").parent().unwrap().display()
        )
    }

    /// Writes a frame into `frames/` as a camera would: to a hidden name, then renamed.
    pub fn drop_frame(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let tmp = self.path(&format!("frames/.{name}.part"));
        std::fs::write(&tmp, bytes).unwrap();
        let path = self.path(&format!("frames/{name}"));
        std::fs::rename(&tmp, &path).unwrap();
        path
    }

    pub fn metrics(&self) -> String {
        http_get(self.http, "/metrics").1
    }

    /// Waits until `frames_total` of `camera` with `result` reaches `n`.
    pub fn wait_frames(&self, camera: &str, result: &str, n: f64) {
        let key = format!("vigil_frames_total{{camera=\"{camera}\",result=\"{result}\"}}");
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let m = self.metrics();
            if metric(&m, &key) >= n {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "waited for {n} of {key}:\n{m}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `vigil run --config CFG` as a child process, its standard output discarded.
pub fn run_binary(cfg: &Path, stderr: Stdio) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["run", "--config", cfg.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap()
}

/// The daemon run through the library, on its own runtime thread.
pub struct Daemon {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl Daemon {
    pub fn start(plant: &Plant, config: &Path) -> Daemon {
        let cfg = vigil::config::load(config).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(vigil::daemon::run(cfg, async {
                let _ = rx.await;
            }))
        });
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", plant.http)) {
                drop(s);
                if http_get(plant.http, "/healthz").0 == 200 {
                    break;
                }
            }
            assert!(!thread.is_finished(), "the daemon stopped while starting");
            assert!(std::time::Instant::now() < deadline, "the daemon did not get ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon { stop: Some(tx), thread: Some(thread) }
    }

    pub fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        self.thread.take().unwrap().join().unwrap().expect("the daemon stops cleanly");
    }

    /// Waits (at most [`WAIT`]) for a daemon that ends by itself, and returns how it ended.
    pub fn join(mut self) -> anyhow::Result<()> {
        let thread = self.thread.take().unwrap();
        let deadline = std::time::Instant::now() + WAIT;
        while !thread.is_finished() {
            assert!(std::time::Instant::now() < deadline, "the daemon did not end by itself");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop.take();
        thread.join().unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
            let _ = self.thread.take().map(|t| t.join());
        }
    }
}

/// Checks an alert against `schema/alert.schema.json` with Python's `jsonschema`.
pub fn check_schema(alert: &serde_json::Value) {
    let verdicts = schema_verdicts("schema/alert.schema.json", std::slice::from_ref(alert));
    assert_eq!(verdicts, ["ok"], "{alert}\ndoes not fit the schema");
}

/// Each document checked against `schema` (a path under the repository) with Python's
/// `jsonschema`: "ok", or its first error.
pub fn schema_verdicts(schema: &str, docs: &[serde_json::Value]) -> Vec<String> {
    use std::io::Write;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new(crate::common::python())
        .arg(root.join("tests/py/check_schema.py"))
        .arg(root.join(schema))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for d in docs {
        writeln!(stdin, "{d}").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.trim().is_empty(), "the schema checker failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

pub fn mqtt_section(port: u16) -> String {
    format!("[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nkeep_alive = \"5s\"\nmax_backoff = \"1s\"\n")
}

#[test]
fn an_anomalous_frame_in_a_folder_gives_one_alert_with_every_field_and_a_normal_frame_none() {
    let plant = Plant::new();
    let broker = Mosquitto::start();
    let sub = Subscriber::new(broker.port, "vigil/#");
    let jsonl = plant.path("out/alerts.jsonl");
    let cfg = plant.config(&format!(
        "{}publish_scores = true\nstats_interval = \"1s\"\n[alerts]\njsonl = \"{}\"\n{}",
        mqtt_section(broker.port),
        jsonl.display(),
        plant.folder_camera("")
    ));
    let daemon = Daemon::start(&plant, &cfg);
    sub.wait_for_text("vigil/box1/available", "online", WAIT);
    let path = plant.drop_frame("a.png", &plant.anomalous);
    plant.drop_frame("b.png", &plant.normal);
    let alerts = sub.wait_for("vigil/box1/cam1/anomaly", 1, WAIT);
    plant.wait_frames("cam1", "normal", 1.0);
    let a = alerts[0].json();
    assert_eq!(a["schema"], "vigil.alert/1");
    assert_eq!(a["id"].as_str().unwrap().len(), 26);
    assert_eq!(a["device"], "box1");
    assert_eq!(a["camera"], "cam1");
    assert_eq!(a["source"], path.canonicalize().unwrap().display().to_string());
    for key in ["frame_time", "detected_at"] {
        assert!(humantime::parse_rfc3339(a[key].as_str().unwrap()).is_ok(), "{key}: {a}");
    }
    assert!(a["score"].as_f64().unwrap() > plant.threshold as f64);
    assert!((a["threshold"].as_f64().unwrap() - plant.threshold as f64).abs() < 1e-6);
    assert!(a["normalized_score"].as_f64().unwrap() > 0.5);
    assert_eq!(a["model"]["name"], "reference-dae");
    assert_eq!(a["model"]["version"], 1);
    assert_eq!(a["model"]["sha256"].as_str().unwrap().len(), 64);
    let bbox: Vec<u64> = a["region"]["bbox"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert!(bbox[0] + bbox[2] <= 48 && bbox[1] + bbox[3] <= 40 && bbox[2] > 0, "{a}");
    assert!((0.0..=1.0).contains(&a["region"]["area_fraction"].as_f64().unwrap()));
    assert_eq!(a["snapshot"]["topic"], "vigil/box1/cam1/snapshot");
    // The snapshot follows its alert: saved, then published.
    let snap = sub.wait_for("vigil/box1/cam1/snapshot", 1, WAIT);
    assert!(snap[0].payload.starts_with(&[0xFF, 0xD8]), "the snapshot is a JPEG");
    let snapshot_file = PathBuf::from(a["snapshot"]["file"].as_str().unwrap());
    assert!(snapshot_file.is_file());
    assert_eq!(image::load_from_memory(&snap[0].payload).unwrap().width(), 48);
    check_schema(&a);
    // The same alert, in the same JSON, went to the JSON-lines file.
    let lines = std::fs::read_to_string(&jsonl).unwrap();
    assert_eq!(lines.lines().count(), 1);
    assert_eq!(serde_json::from_str::<serde_json::Value>(lines.trim()).unwrap(), a);
    // The normal frame gave no alert; metrics and health say so.
    let m = plant.metrics();
    assert_eq!(metric(&m, "vigil_alerts_total{camera=\"cam1\"}"), 1.0, "{m}");
    assert_eq!(metric(&m, "vigil_frames_total{camera=\"cam1\",result=\"anomalous\"}"), 1.0, "{m}");
    assert!(m.contains("vigil_latency_seconds_count 2"), "{m}");
    assert_eq!(http_get(plant.http, "/healthz").0, 200);
    // Per-frame scores (publish_scores) and periodic stats.
    let scores = sub.wait_for("vigil/box1/cam1/score", 2, WAIT);
    let mut anomalous: Vec<bool> = scores.iter().map(|m| m.json()["anomalous"].as_bool().unwrap()).collect();
    anomalous.sort();
    assert_eq!(anomalous, [false, true]);
    let docs: Vec<serde_json::Value> = scores.iter().map(|m| m.json()).collect();
    assert_eq!(schema_verdicts("schema/score.schema.json", &docs), ["ok", "ok"], "{docs:?}");
    let stats = sub.wait_for("vigil/box1/stats", 1, WAIT);
    assert_eq!(stats[0].json()["device"], "box1");
    daemon.stop();
    sub.wait_for_text("vigil/box1/available", "stopped", WAIT);
    assert_eq!(sub.on("vigil/box1/cam1/anomaly").len(), 1);
}

#[test]
fn frames_published_on_mqtt_topics_are_scored_and_alerted() {
    let plant = Plant::new();
    let broker = Mosquitto::start();
    let sub = Subscriber::new(broker.port, "vigil/#");
    let cfg = plant.config(&format!(
        "{}[[cameras]]\nid = \"line\"\nbundle = \"{}\"\nthreshold = {}\nsource = {{ type = \"mqtt\", topic = \"factory/+/camera/+/frame\", camera_from_topic = 3 }}\n\
         [[cameras]]\nid = \"json-cam\"\nbundle = \"{}\"\nthreshold = {}\nsource = {{ type = \"mqtt\", topic = \"json/frames\", payload = \"json\", camera_field = \"camera\", time_field = \"time\" }}\n",
        mqtt_section(broker.port),
        plant.bundle.display(),
        plant.threshold,
        plant.bundle.display(),
        plant.threshold,
    ));
    let daemon = Daemon::start(&plant, &cfg);
    // `online` comes after the subscriptions.
    sub.wait_for_text("vigil/box1/available", "online", WAIT);
    sub.publish("factory/l1/camera/c7/frame", false, plant.anomalous.clone());
    sub.publish("factory/l1/camera/c8/frame", false, plant.normal.clone());
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&plant.anomalous);
    let body = serde_json::json!({ "image": b64, "camera": "c9", "time": "2026-11-27T10:00:00.250Z" });
    sub.publish("json/frames", false, body.to_string().into_bytes());
    sub.publish("json/frames", false, b"{not json".to_vec());
    let a = sub.wait_for("vigil/box1/c7/anomaly", 1, WAIT)[0].json();
    assert_eq!((a["camera"].as_str(), a["source"].as_str()), (Some("c7"), Some("factory/l1/camera/c7/frame")));
    let j = sub.wait_for("vigil/box1/c9/anomaly", 1, WAIT)[0].json();
    assert_eq!(j["frame_time"], "2026-11-27T10:00:00.250Z");
    plant.wait_frames("c8", "normal", 1.0);
    plant.wait_frames("json-cam", "rejected", 1.0);
    assert!(sub.on("vigil/box1/c8/anomaly").is_empty());
    assert_eq!(metric(&plant.metrics(), "vigil_errors_total{kind=\"bad_payload\"}"), 1.0);
    daemon.stop();
}

#[test]
fn a_threshold_set_over_mqtt_takes_effect_and_survives_a_restart() {
    let plant = Plant::new();
    let broker = Mosquitto::start();
    let sub = Subscriber::new(broker.port, "vigil/#");
    let cfg = plant.config(&format!("{}{}", mqtt_section(broker.port), plant.folder_camera("")));
    let daemon = Daemon::start(&plant, &cfg);
    sub.wait_for_text("vigil/box1/available", "online", WAIT);
    let state = sub.wait_for("vigil/box1/cam1/threshold/state", 1, WAIT);
    assert_eq!(state[0].json()["source"], "config");
    sub.publish("vigil/box1/cam1/threshold/set", false, b"1e9".to_vec());
    sub.wait_for("vigil/box1/cam1/threshold/state", 2, WAIT);
    assert_eq!(sub.on("vigil/box1/cam1/threshold/state")[1].json()["source"], "runtime");
    plant.drop_frame("a.png", &plant.anomalous);
    plant.wait_frames("cam1", "normal", 1.0);
    daemon.stop();
    // After a restart the raised threshold still holds, and is announced again.
    let daemon = Daemon::start(&plant, &cfg);
    sub.wait_for("vigil/box1/cam1/threshold/state", 3, WAIT);
    sub.wait_for_text("vigil/box1/available", "online", WAIT);
    assert_eq!(sub.on("vigil/box1/cam1/threshold/state")[2].json()["threshold"], 1e9);
    plant.drop_frame("b.png", &plant.anomalous);
    plant.wait_frames("cam1", "normal", 1.0);
    // The set message was acknowledged once saved: the broker did not deliver it again.
    assert_eq!(sub.on("vigil/box1/cam1/threshold/state").len(), 3);
    // Back to the configured threshold: the same frame alerts.
    sub.publish("vigil/box1/cam1/threshold/set", false, b"reset".to_vec());
    sub.wait_for("vigil/box1/cam1/threshold/state", 4, WAIT);
    plant.drop_frame("c.png", &plant.anomalous);
    sub.wait_for("vigil/box1/cam1/anomaly", 1, WAIT);
    daemon.stop();
    assert_eq!(sub.on("vigil/box1/cam1/anomaly").len(), 1);
}

#[test]
fn reload_swaps_in_a_good_bundle_and_refuses_a_broken_one() {
    let plant = Plant::new();
    let jsonl = plant.path("alerts.jsonl");
    let cfg = plant.config(&format!("[alerts]\njsonl = \"{}\"\n{}", jsonl.display(), plant.folder_camera("")));
    let daemon = Daemon::start(&plant, &cfg);
    let alerts = |n: usize| -> Vec<serde_json::Value> {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let text = std::fs::read_to_string(&jsonl).unwrap_or_default();
            let v: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
            if v.len() >= n {
                return v;
            }
            assert!(std::time::Instant::now() < deadline, "waited for {n} alerts in {}", jsonl.display());
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    plant.drop_frame("1.png", &plant.anomalous);
    assert_eq!(alerts(1)[0]["model"]["version"], 1);
    // A good new version, written over the old one: served after the reload.
    let manifest_path = plant.bundle.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    m["version"] = 2.into();
    std::fs::write(&manifest_path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let wait_reloads = |result: &str, n: f64| {
        let key = format!("vigil_reloads_total{{result=\"{result}\"}}");
        let deadline = std::time::Instant::now() + WAIT;
        while metric(&plant.metrics(), &key) < n {
            assert!(std::time::Instant::now() < deadline, "no reload ({key})");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_reloads("ok", 1.0);
    plant.drop_frame("2.png", &plant.anomalous);
    assert_eq!(alerts(2)[1]["model"]["version"], 2);
    // A broken model file: refused, version 2 keeps serving.
    std::fs::write(plant.bundle.join("model.onnx"), b"not a model").unwrap();
    wait_reloads("refused", 1.0);
    plant.drop_frame("3.png", &plant.anomalous);
    assert_eq!(alerts(3)[2]["model"]["version"], 2);
    assert_eq!(metric(&plant.metrics(), "vigil_reloads_total{result=\"ok\"}"), 1.0);
    daemon.stop();
}

#[test]
fn files_are_taken_only_once_complete_and_a_restart_neither_realerts_nor_skips() {
    let plant = Plant::new();
    let jsonl = plant.path("alerts.jsonl");
    // A settle time longer than the test waits: only the close-after-write and rename events
    // can make a new file ready.
    let cfg = plant.config(&format!(
        "[alerts]\njsonl = \"{}\"\n{}",
        jsonl.display(),
        plant.folder_camera(", settle = \"60s\"").replace("settle = \"200ms\" ,", "")
    ));
    // One frame waits in the folder before the daemon starts (backlog), written a while ago;
    // a backlog file written within the settle time would wait like a new one.
    let before = plant.drop_frame("before.png", &plant.anomalous);
    let old = std::time::SystemTime::now() - Duration::from_secs(600);
    std::fs::File::options().write(true).open(&before).unwrap().set_modified(old).unwrap();
    let daemon = Daemon::start(&plant, &cfg);
    // A frame written slowly, in two parts: never scored half-written.
    let slow = plant.path("frames/slow.png");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&slow).unwrap();
        let half = plant.anomalous.len() / 2;
        f.write_all(&plant.anomalous[..half]).unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(700));
        f.write_all(&plant.anomalous[half..]).unwrap();
    }
    // A frame renamed into place is complete at once.
    plant.drop_frame("renamed.png", &plant.anomalous);
    plant.wait_frames("cam1", "anomalous", 3.0);
    let m = plant.metrics();
    assert_eq!(metric(&m, "vigil_frames_total{camera=\"cam1\",result=\"rejected\"}"), 0.0, "{m}");
    daemon.stop();
    // While it is down, one more frame arrives; after the restart only that one is scored.
    let down = plant.drop_frame("while-down.png", &plant.anomalous);
    std::fs::File::options().write(true).open(&down).unwrap().set_modified(old).unwrap();
    let daemon = Daemon::start(&plant, &cfg);
    plant.wait_frames("cam1", "anomalous", 1.0);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(metric(&plant.metrics(), "vigil_frames_total{camera=\"cam1\",result=\"anomalous\"}"), 1.0);
    daemon.stop();
    let text = std::fs::read_to_string(&jsonl).unwrap();
    let mut sources: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["source"].as_str().unwrap().to_owned())
        .map(|s| Path::new(&s).file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    sources.sort();
    assert_eq!(sources, ["before.png", "renamed.png", "slow.png", "while-down.png"]);
}

fn vigil(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vigil")).args(args).env_remove("VIGIL_LOG").output().unwrap()
}

#[test]
fn validate_reports_every_kind_of_config_error_with_its_key() {
    let plant = Plant::new();
    let broken = plant.path("broken-bundle/model.onnx");
    std::fs::write(&broken, b"garbage").unwrap();
    let cfg = plant.config(&format!(
        "[log]\ncolour = \"red\"\n[mqtt]\nhost = \"localhost\"\nsecret = 1\n[mqtt.tls]\nca_file = \"/nonexistent/ca.pem\"\n\
         [[cameras]]\nid = \"cam1\"\nbundle = \"/nonexistent/bundle\"\nsource = {{ type = \"folder\", path = \"/nonexistent/frames\" }}\n\
         [[cameras]]\nid = \"cam2\"\nbundle = \"{}\"\nsource = {{ type = \"mqtt\", topic = \"a/#/b\" }}\n\
         [[cameras]]\nid = \"cam3\"\nbundle = \"{}\"\ncooldown = \"soon\"\nsource = {{ type = \"mqtt\", topic = \"x\" }}\n",
        broken.parent().unwrap().display(),
        plant.bundle.display()
    ));
    let out = vigil(&["validate", "--config", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for expected in [
        "log.colour: unknown field",
        "mqtt.secret: unknown field",
        "cameras[2].cooldown",
        "mqtt.tls.ca_file: /nonexistent/ca.pem",
        "cameras[0].bundle: /nonexistent/bundle: not found",
        "cameras[0].source.path: /nonexistent/frames: not a folder",
        "cameras[1].source.topic: `a/#/b`: not a valid MQTT topic filter",
        "cameras[1].bundle:",
    ] {
        assert!(err.contains(expected), "expected `{expected}` in:\n{err}");
    }
    // The shape errors stop before the semantic checks only when parsing cannot go on; a
    // valid config passes.
    let good = plant.config(&format!("[alerts]\nstdout = true\n{}", plant.folder_camera("")));
    let out = vigil(&["validate", "--config", good.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Environment overrides apply (and are validated like the file).
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["validate", "--config", good.to_str().unwrap()])
        .env("VIGIL__DEVICE_ID", "bad id!")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("device_id: `bad id!`"));
}

#[test]
fn the_binary_goes_offline_when_killed_and_says_stopped_on_sigterm() {
    let plant = Plant::new();
    let broker = Mosquitto::start();
    let sub = Subscriber::new(broker.port, "vigil/#");
    let cfg = plant.config(&format!("{}{}", mqtt_section(broker.port), plant.folder_camera("")));
    let spawn = || run_binary(&cfg, Stdio::piped());
    let mut child = spawn();
    sub.wait_for_text("vigil/box1/available", "online", WAIT);
    child.kill().unwrap();
    child.wait().unwrap();
    sub.wait_for_text("vigil/box1/available", "offline", WAIT);
    let child = spawn();
    sub.wait_for_text("vigil/box1/available", "online", WAIT);
    plant.drop_frame("a.png", &plant.anomalous);
    sub.wait_for("vigil/box1/cam1/anomaly", 1, WAIT);
    // SIGHUP reloads the bundles.
    assert!(Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap().success());
    let deadline = std::time::Instant::now() + WAIT;
    while metric(&plant.metrics(), "vigil_reloads_total{result=\"ok\"}") < 1.0 {
        assert!(std::time::Instant::now() < deadline, "SIGHUP did not reload the bundle");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    sub.wait_for_text("vigil/box1/available", "stopped", WAIT);
}

/// Writes a CA, a server certificate for `localhost` and a client certificate into `dir`
/// with the `openssl` command.
pub fn certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    run(&[
        &["req", "-x509"][..],
        &key,
        &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=vigil test CA"],
    ]
    .concat());
    for (name, ext) in
        [("server", "subjectAltName=DNS:localhost,IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")]
    {
        run(&[
            &["req", "-x509", "-CA", "ca.pem", "-CAkey", "ca.key"][..],
            &key,
            &["-keyout", &format!("{name}.key"), "-out", &format!("{name}.pem"), "-days", "2"],
            &["-subj", &format!("/CN={name}"), "-addext", ext, "-addext", "basicConstraints=critical,CA:FALSE"],
        ]
        .concat());
    }
    // A broker started as root drops to the `mosquitto` user, which must read these.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for f in std::fs::read_dir(dir).unwrap() {
        std::fs::set_permissions(f.unwrap().path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
}

#[test]
fn alerts_reach_a_broker_over_tls_with_a_client_certificate_and_a_password() {
    let plant = Plant::new();
    let tls_port = free_port();
    let broker = Mosquitto::start_with(|dir, port| {
        certificates(dir);
        let pw = dir.join("passwords");
        std::fs::write(&pw, "").unwrap();
        let out = Command::new("mosquitto_passwd").args(["-b"]).arg(&pw).args(["vigil", "s3cret"]).output().unwrap();
        assert!(out.status.success(), "mosquitto_passwd: {}", String::from_utf8_lossy(&out.stderr));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
        let d = dir.display();
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\n\
             listener {tls_port} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n\
             require_certificate true\nallow_anonymous false\npassword_file {pw}\n",
            pw = pw.display()
        )
    });
    let sub = Subscriber::new(broker.port, "vigil/#");
    let d = broker.dir.path().display();
    let secret = plant.path("secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let cfg = plant.config(&format!(
        "[mqtt]\nhost = \"localhost\"\nport = {tls_port}\nusername = \"vigil\"\npassword_file = \"{}\"\n\
         [mqtt.tls]\nca_file = \"{d}/ca.pem\"\nclient_cert = \"{d}/client.pem\"\nclient_key = \"{d}/client.key\"\n{}",
        secret.display(),
        plant.folder_camera("")
    ));
    let daemon = Daemon::start(&plant, &cfg);
    sub.wait_for_text("vigil/box1/available", "online", WAIT);
    plant.drop_frame("a.png", &plant.anomalous);
    assert_eq!(sub.wait_for("vigil/box1/cam1/anomaly", 1, WAIT)[0].json()["camera"], "cam1");
    daemon.stop();
    // A wrong password is refused by the broker: vigil keeps trying and says why.
    std::fs::write(&secret, "wrong\n").unwrap();
    let daemon = Daemon::start(&plant, &cfg);
    std::thread::sleep(Duration::from_secs(1));
    let m = plant.metrics();
    assert_eq!(metric(&m, "vigil_mqtt_connected"), 0.0, "{m}");
    assert!(metric(&m, "vigil_errors_total{kind=\"broker\"}") >= 1.0, "{m}");
    daemon.stop();
}

#[test]
fn after_the_broker_restarts_vigil_reconnects_resubscribes_and_republishes_its_state() {
    let plant = Plant::new();
    let mut broker = Mosquitto::start();
    let cfg = plant.config(&format!(
        "{}{}[[cameras]]\nid = \"topic-cam\"\nbundle = \"{}\"\nthreshold = {}\nsource = {{ type = \"mqtt\", topic = \"frames/t\" }}\n",
        mqtt_section(broker.port),
        plant.folder_camera(""),
        plant.bundle.display(),
        plant.threshold
    ));
    let daemon = Daemon::start(&plant, &cfg);
    let sub = Subscriber::new(broker.port, "vigil/#");
    sub.wait_for_text("vigil/box1/available", "online", WAIT);
    broker.stop();
    broker.restart();
    // The broker forgot everything (no persistence): what comes back was republished.
    let sub = Subscriber::new(broker.port, "vigil/#");
    sub.wait_for_text("vigil/box1/available", "online", WAIT);
    sub.wait_for("vigil/box1/cam1/threshold/state", 1, WAIT);
    // And the frame topic was subscribed again.
    let deadline = std::time::Instant::now() + WAIT;
    while sub.on("vigil/box1/topic-cam/anomaly").is_empty() {
        assert!(std::time::Instant::now() < deadline, "no alert for a frame sent after the broker restarted");
        sub.publish("frames/t", false, plant.anomalous.clone());
        std::thread::sleep(Duration::from_millis(500));
    }
    daemon.stop();
}

#[test]
fn scored_files_are_moved_or_deleted_as_configured() {
    let plant = Plant::new();
    let jsonl = plant.path("alerts.jsonl");
    let (moving, deleting, done) = (plant.path("m/x"), plant.path("d/x"), plant.path("done/x"));
    let (moving, deleting, done) = (moving.parent().unwrap(), deleting.parent().unwrap(), done.parent().unwrap());
    let camera = |id: &str, dir: &Path, after: &str| {
        format!(
            "[[cameras]]\nid = \"{id}\"\nbundle = \"{}\"\nthreshold = {}\nsource = {{ type = \"folder\", path = \"{}\", settle = \"200ms\", {after} }}\n",
            plant.bundle.display(),
            plant.threshold,
            dir.display()
        )
    };
    let cfg = plant.config(&format!(
        "[alerts]\njsonl = \"{}\"\n{}{}",
        jsonl.display(),
        camera("mover", moving, &format!("after = \"move\", move_to = \"{}\"", done.display())),
        camera("deleter", deleting, "after = \"delete\"")
    ));
    let daemon = Daemon::start(&plant, &cfg);
    std::fs::write(moving.join("a.png"), &plant.anomalous).unwrap();
    std::fs::write(deleting.join("b.png"), &plant.normal).unwrap();
    plant.wait_frames("mover", "anomalous", 1.0);
    plant.wait_frames("deleter", "normal", 1.0);
    let deadline = std::time::Instant::now() + WAIT;
    while moving.join("a.png").exists() || deleting.join("b.png").exists() {
        assert!(std::time::Instant::now() < deadline, "scored files were not moved or deleted");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(std::fs::read(done.join("a.png")).unwrap(), plant.anomalous);
    daemon.stop();
}

#[test]
fn under_systemd_it_says_ready_pings_the_watchdog_and_says_stopping() {
    let plant = Plant::new();
    let cfg = plant.config(&format!("[alerts]\nstdout = true\n{}", plant.folder_camera("")));
    let socket_path = plant.path("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(WAIT)).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["run", "--config", cfg.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "200000")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = vec![];
    let mut buf = [0u8; 256];
    let mut expect = |wanted: &str| {
        while !seen.iter().any(|m: &String| m.contains(wanted)) {
            let n = socket.recv(&mut buf).unwrap_or_else(|e| panic!("waiting for {wanted}: {e}; got {seen:?}"));
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    };
    expect("READY=1");
    // Pings come every half watchdog period.
    expect("WATCHDOG=1");
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    expect("STOPPING=1");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Starts the binary and sends `signals` once it logs "starting", which comes before the
/// bundles load and the folders are watched: before its main loop first waits for a signal.
/// Returns its exit status and log.
fn signalled_while_starting(signals: &[&str]) -> (std::process::ExitStatus, String) {
    use std::io::BufRead;
    let plant = Plant::new();
    let cfg = plant.config(&format!("[alerts]\nstdout = true\n{}", plant.folder_camera("")));
    let mut child = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["run", "--config", cfg.to_str().unwrap()])
        .env("VIGIL_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    while !seen.contains("starting") {
        assert!(log.read_line(&mut seen).unwrap() > 0, "the daemon exited first: {seen}");
    }
    for signal in signals {
        assert!(Command::new("kill").args([*signal, &child.id().to_string()]).status().unwrap().success());
        if *signal != "-TERM" {
            // Let the first be handled before the stop.
            while !seen.contains("ready") {
                assert!(log.read_line(&mut seen).unwrap() > 0, "the daemon exited after {signal}: {seen}");
            }
        }
    }
    std::io::Read::read_to_string(&mut log, &mut seen).unwrap();
    (child.wait().unwrap(), seen)
}

#[test]
fn a_sigterm_while_it_starts_still_stops_it_cleanly() {
    let (status, log) = signalled_while_starting(&["-TERM"]);
    assert_eq!(status.code(), Some(0), "killed by the signal instead of stopping: {status:?}\n{log}");
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(!log.contains("abandoned"), "the stop ran out of time instead of draining:\n{log}");
}

#[test]
fn a_sighup_while_it_starts_reloads_instead_of_killing_it() {
    let (status, log) = signalled_while_starting(&["-HUP", "-TERM"]);
    assert_eq!(status.code(), Some(0), "killed by SIGHUP: {status:?}\n{log}");
    assert!(log.contains("SIGHUP: reloading"), "{log}");
    assert!(!log.contains("abandoned"), "the stop ran out of time instead of draining:\n{log}");
}

#[test]
fn the_example_config_parses_and_only_its_placeholder_paths_are_missing() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/vigil.toml");
    let (cfg, problems) = vigil::config::load_lenient(&example);
    assert!(problems.is_empty(), "{problems:?}");
    let cfg = cfg.unwrap();
    let keys: Vec<String> = cfg.validate().into_iter().map(|p| p.key).collect();
    assert_eq!(keys, ["cameras[0].bundle", "cameras[0].source.path"]);
}

#[test]
fn a_folder_frame_rewritten_while_its_old_version_is_scored_is_scored_next() {
    use std::sync::{Arc, Mutex};
    use tokio::time::timeout;
    use vigil::frame::Outcome;
    use vigil::source::folder::{FolderCamera, run};
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("frames");
    std::fs::create_dir_all(&folder).unwrap();
    let config: vigil::source::folder::FolderSource =
        serde_json::from_value(serde_json::json!({ "path": folder, "settle": "100ms" })).unwrap();
    let ledger = vigil::state::Ledger::open(&dir.path().join("cam1.done")).unwrap();
    let cam =
        FolderCamera { slot: 0, camera: "cam1".into(), class: None, config, ledger: Arc::new(Mutex::new(ledger)) };
    // The test plays the scoring stage: a frame stays in flight until its outcome is sent.
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let (frames, mut scoring) = tokio::sync::mpsc::channel(4);
        let stop = vigil::shutdown::Stop::new();
        let (watching, watching_rx) = tokio::sync::oneshot::channel();
        let metrics = Arc::new(vigil::metrics::Metrics::default());
        let frames = vigil::scoring::Queue::new(frames, Default::default());
        let source = tokio::spawn(run(cam, frames, metrics, stop.subscribe(), watching));
        watching_rx.await.unwrap();
        let path = folder.join("latest.png");
        std::fs::write(&path, b"the first version").unwrap();
        let mut first = timeout(WAIT, scoring.recv()).await.unwrap().unwrap();
        assert_eq!(first.bytes, b"the first version");
        std::fs::write(&path, b"the second, longer version").unwrap();
        let early = timeout(Duration::from_millis(800), scoring.recv()).await;
        assert!(early.is_err(), "a path is handed over once at a time");
        first.done.take().unwrap().send(Outcome::Scored).unwrap();
        let mut second =
            timeout(WAIT, scoring.recv()).await.expect("the new version is scored once the old one is done").unwrap();
        assert_eq!(second.bytes, b"the second, longer version");
        second.done.take().unwrap().send(Outcome::Scored).unwrap();
        stop.stop();
        timeout(WAIT, source).await.unwrap().unwrap().unwrap();
    });
}
