//! Faults end to end: a broker away while alerts pile up, the daemon SIGKILLed mid-stream,
//! and a corpus of bad input; real Mosquitto processes, real files, the real binary.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::mosquitto::{Mosquitto, Subscriber, metric};
use crate::common::wait_until;
use crate::daemon::{Daemon, Plant, WAIT, mqtt_section, run_binary};

/// Alert ids received on the camera's anomaly topic, with how often each came.
fn ids(sub: &Subscriber, camera: &str) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for m in sub.on(&format!("vigil/box1/{camera}/anomaly")) {
        *seen.entry(m.json()["id"].as_str().unwrap().to_owned()).or_insert(0) += 1;
    }
    seen
}

#[test]
fn alerts_raised_while_the_broker_is_down_all_arrive_once_it_is_back() {
    const N: usize = 200;
    let plant = Plant::new();
    let mut broker = Mosquitto::persistent();
    let sub = Subscriber::persistent(broker.port, "vigil/box1/+/anomaly", "fault-sub-outage");
    let cfg = plant.config(&format!("{}{}", mqtt_section(broker.port), plant.folder_camera("")));
    let daemon = Daemon::start(&plant, &cfg);
    broker.terminate();
    for i in 0..N {
        plant.drop_frame(&format!("f{i:03}.png"), &plant.anomalous);
    }
    plant.wait_frames("cam1", "anomalous", N as f64);
    wait_until("every alert in the outbox", WAIT, || metric(&plant.metrics(), "vigil_outbox_pending") == N as f64);
    assert!(sub.on("vigil/box1/cam1/anomaly").is_empty());
    broker.restart();
    wait_until("an empty outbox", WAIT, || metric(&plant.metrics(), "vigil_outbox_pending") == 0.0);
    wait_until("every alert at the subscriber", WAIT, || ids(&sub, "cam1").len() == N);
    // Anything sent twice would have arrived by now.
    std::thread::sleep(Duration::from_millis(500));
    let seen = ids(&sub, "cam1");
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "ids received more than once: {twice:?}");
    assert_eq!(seen.len(), N);
    assert_eq!(metric(&plant.metrics(), "vigil_alerts_delivered_total"), N as f64);
    daemon.stop();
}

#[test]
fn a_broker_outage_stalls_neither_scoring_nor_the_stop() {
    // More score messages than rumqttc's request queue holds (4,096): it takes none while
    // disconnected, so these must be dropped, not waited for.
    const N: usize = 4_300;
    let plant = Plant::new();
    let mut broker = Mosquitto::start();
    let cfg = plant.config(&format!(
        "{}publish_scores = true\nstats_interval = \"50ms\"\n{}",
        mqtt_section(broker.port),
        plant.folder_camera("")
    ));
    let daemon = Daemon::start(&plant, &cfg);
    broker.terminate();
    wait_until("the daemon to see the broker gone", WAIT, || metric(&plant.metrics(), "vigil_mqtt_connected") == 0.0);
    for i in 0..N {
        plant.drop_frame(&format!("f{i:05}.png"), &plant.normal);
    }
    let key = "vigil_frames_total{camera=\"cam1\",result=\"normal\"}";
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut scored = 0.0;
    while scored < N as f64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        scored = metric(&plant.metrics(), key);
    }
    if scored < N as f64 {
        // A stalled daemon would also hang the stop in Daemon's drop: leave it behind.
        std::mem::forget(daemon);
        panic!("scoring stalled during the outage: {scored} of {N} frames");
    }
    let (stopped_tx, stopped) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        daemon.stop();
        let _ = stopped_tx.send(());
    });
    stopped.recv_timeout(Duration::from_secs(60)).expect("the daemon stops while the broker is away");
}

#[test]
fn with_alert_qos_1_for_brokers_without_qos_2_alerts_are_delivered_and_leave_the_outbox() {
    let plant = Plant::new();
    let broker = Mosquitto::start();
    let sub = Subscriber::new(broker.port, "vigil/box1/+/anomaly");
    let cfg = plant.config(&format!("{}alert_qos = 1\n{}", mqtt_section(broker.port), plant.folder_camera("")));
    let daemon = Daemon::start(&plant, &cfg);
    for i in 0..5 {
        plant.drop_frame(&format!("q{i}.png"), &plant.anomalous);
    }
    wait_until("5 alerts", WAIT, || ids(&sub, "cam1").len() == 5);
    wait_until("an empty outbox", WAIT, || {
        let m = plant.metrics();
        metric(&m, "vigil_outbox_pending") == 0.0 && metric(&m, "vigil_alerts_delivered_total") == 5.0
    });
    daemon.stop();
}

#[test]
fn a_daemon_killed_mid_stream_loses_no_frame_and_sends_no_alert_twice() {
    const N: usize = 150;
    let plant = Plant::new();
    let broker = Mosquitto::start();
    let sub = Subscriber::new(broker.port, "vigil/box1/+/anomaly");
    let decisions = plant.path("decisions.jsonl");
    let cfg = plant.config(&format!(
        "[alerts]\ndecisions_jsonl = \"{}\"\n{}{}",
        decisions.display(),
        mqtt_section(broker.port),
        plant.folder_camera("")
    ));
    // Every third frame is anomalous; all are in the folder before the daemon starts.
    let old = std::time::SystemTime::now() - Duration::from_secs(600);
    let mut anomalous = 0;
    for i in 0..N {
        let bytes = if i % 3 == 0 { &plant.anomalous } else { &plant.normal };
        anomalous += usize::from(i % 3 == 0);
        let p = plant.drop_frame(&format!("f{i:03}.png"), bytes);
        std::fs::File::options().write(true).open(&p).unwrap().set_modified(old).unwrap();
    }
    let spawn = || run_binary(&cfg, Stdio::null());
    let mut child = spawn();
    // Killed once some alerts went out, while the backlog is being worked through.
    wait_until("the first alerts", WAIT, || ids(&sub, "cam1").len() >= 5);
    child.kill().unwrap();
    child.wait().unwrap();
    let before = ids(&sub, "cam1").len();
    assert!(before < anomalous, "the kill came after the whole stream ({before} alerts)");
    let mut child = spawn();
    wait_until("every alert after the restart", WAIT, || ids(&sub, "cam1").len() == anomalous);
    std::thread::sleep(Duration::from_millis(500));
    child.kill().unwrap();
    child.wait().unwrap();
    let seen = ids(&sub, "cam1");
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "ids received more than once: {twice:?}");
    // Every frame was scored, none more than twice (once more at most, after the kill).
    let mut scored: HashMap<String, usize> = HashMap::new();
    for line in std::fs::read_to_string(&decisions).unwrap().lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let name = Path::new(v["source"].as_str().unwrap()).file_name().unwrap().to_string_lossy().into_owned();
        *scored.entry(name).or_insert(0) += 1;
    }
    assert_eq!(
        scored.len(),
        N,
        "frames never scored: {:?}",
        (0..N).map(|i| format!("f{i:03}.png")).filter(|n| !scored.contains_key(n)).collect::<Vec<_>>()
    );
    assert!(scored.values().all(|n| *n <= 2), "a frame scored three times: {scored:?}");
    // Each line, those with an alert among them, is what schema/decision.schema.json says.
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&decisions).unwrap().lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(lines.iter().any(|l| l["alert"].is_string()));
    let verdicts = crate::daemon::schema_verdicts("schema/decision.schema.json", &lines);
    assert!(verdicts.iter().all(|v| v == "ok"), "{:?}", verdicts.iter().find(|v| *v != "ok"));
}

/// CRC-32 (IEEE) of PNG chunks.
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for b in bytes {
        c ^= *b as u32;
        for _ in 0..8 {
            c = if c & 1 == 1 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}

/// A 100-byte PNG that declares `w` x `h` pixels: a decompression bomb if decoded blindly.
fn png_declaring(w: u32, h: u32) -> Vec<u8> {
    let chunk = |kind: &[u8], data: &[u8]| {
        let mut c = (data.len() as u32).to_be_bytes().to_vec();
        let body: Vec<u8> = kind.iter().chain(data).copied().collect();
        c.extend(&body);
        c.extend(crc32(&body).to_be_bytes());
        c
    };
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 0, 0, 0, 0]);
    // A zlib stream of a few zero bytes: the decoder would expand it row by row.
    let idat = [0x78, 0x9c, 0x63, 0x60, 0x00, 0x00, 0x00, 0x02, 0x00, 0x01];
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &ihdr));
    png.extend(chunk(b"IDAT", &idat));
    png.extend(chunk(b"IEND", &[]));
    png
}

fn encoded(img: image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(vec![]);
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// The first half of a 320x240 JPEG (its decoder would fill the rest in).
fn truncated_jpeg() -> Vec<u8> {
    let img = image::RgbImage::from_fn(320, 240, |x, y| image::Rgb([x as u8, y as u8, (x ^ y) as u8]));
    let bytes = encoded(image::DynamicImage::ImageRgb8(img), image::ImageFormat::Jpeg);
    bytes[..bytes.len() / 2].to_vec()
}

/// A CMYK JPEG, written by Pillow (the `image` crate cannot write one).
fn cmyk_jpeg(dir: &Path) -> Vec<u8> {
    let path = dir.join("cmyk.jpg");
    let script = format!(
        "from PIL import Image; Image.new('CMYK', (48, 40), (0, 128, 255, 30)).save(r'{}', 'JPEG')",
        path.display()
    );
    let out = Command::new(crate::common::python()).args(["-c", &script]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::read(path).unwrap()
}

#[test]
fn every_kind_of_bad_input_is_refused_counted_and_quarantined_and_the_next_anomaly_still_alerts() {
    let plant = Plant::new();
    let broker = Mosquitto::start();
    let sub = Subscriber::new(broker.port, "vigil/#");
    let quarantine = plant.path("quarantine/x").parent().unwrap().to_owned();
    let decisions = plant.path("decisions.jsonl");
    let cfg = plant.config(&format!(
        "[alerts]\ndecisions_jsonl = \"{}\"\n{}{}[[cameras]]\nid = \"raw\"\nbundle = \"{}\"\nthreshold = {}\nsource = {{ type = \"mqtt\", topic = \"raw/+\", camera_from_topic = 1, max_bytes = 4000 }}\n\
         [[cameras]]\nid = \"json\"\nbundle = \"{}\"\nthreshold = {}\nsource = {{ type = \"mqtt\", topic = \"json/frames\", payload = \"json\" }}\n",
        decisions.display(),
        mqtt_section(broker.port),
        plant.folder_camera(&format!(", max_bytes = 200000, quarantine = \"{}\"", quarantine.display())),
        plant.bundle.display(),
        plant.threshold,
        plant.bundle.display(),
        plant.threshold,
    ));
    let daemon = Daemon::start(&plant, &cfg);
    sub.wait_for_text("vigil/box1/available", "online", WAIT);

    // Files: each refused with its kind.
    let good = &plant.anomalous;
    let refused = [
        ("truncated.png", good[..good.len() / 2].to_vec(), "corrupt"),
        ("truncated.jpg", truncated_jpeg(), "corrupt"),
        ("empty.png", vec![], "empty"),
        ("text.jpg", b"this is a text file, not a JPEG\n".to_vec(), "format"),
        ("bomb.png", png_declaring(50_000, 50_000), "too_large"),
        ("big.png", [b"\x89PNG\r\n\x1a\n".as_slice(), &vec![7u8; 300_000]].concat(), "file_too_large"),
    ];
    for (name, bytes, _) in &refused {
        plant.drop_frame(name, bytes);
    }
    let outside = plant.path("outside/secret.png");
    std::fs::write(&outside, good).unwrap();
    std::os::unix::fs::symlink(&outside, plant.path("frames/escape.png")).unwrap();
    // Converted, not refused: 16-bit gray, RGBA, CMYK.
    let gray16 = image::ImageBuffer::from_fn(48, 40, |x, _| image::Luma([(x * 1000) as u16]));
    plant.drop_frame("gray16.png", &encoded(image::DynamicImage::ImageLuma16(gray16), image::ImageFormat::Png));
    let rgba = image::RgbaImage::from_pixel(48, 40, image::Rgba([10, 200, 30, 128]));
    plant.drop_frame("rgba.png", &encoded(image::DynamicImage::ImageRgba8(rgba), image::ImageFormat::Png));
    plant.drop_frame("cmyk.jpg", &cmyk_jpeg(plant.dir.path()));

    // MQTT payloads: over the limit, a camera id that would escape a folder, not JSON, bad
    // base64, no image field.
    sub.publish("raw/c1", false, vec![1u8; 5000]);
    sub.publish("raw/..", false, good.clone());
    sub.publish("json/frames", false, b"{not json".to_vec());
    sub.publish("json/frames", false, br#"{"image": "%%% not base64 %%%"}"#.to_vec());
    sub.publish("json/frames", false, br#"{"picture": "AAAA"}"#.to_vec());

    let key = |kind: &str| format!("vigil_errors_total{{kind=\"{kind}\"}}");
    let expected = [
        ("corrupt", 2.0),
        ("empty", 1.0),
        ("format", 1.0),
        ("too_large", 1.0),
        ("file_too_large", 1.0),
        ("symlink_escape", 1.0),
        ("payload_too_large", 1.0),
        ("bad_camera_id", 1.0),
        ("bad_payload", 3.0),
    ];
    wait_until("every bad input counted", WAIT, || {
        let m = plant.metrics();
        expected.iter().all(|(k, n)| metric(&m, &key(k)) >= *n)
    });
    wait_until("the converted frames scored", WAIT, || {
        let m = plant.metrics();
        metric(&m, "vigil_frames_total{camera=\"cam1\",result=\"normal\"}")
            + metric(&m, "vigil_frames_total{camera=\"cam1\",result=\"anomalous\"}")
            >= 3.0
    });
    let m = plant.metrics();
    for (k, n) in expected {
        assert_eq!(metric(&m, &key(k)), n, "{k}:\n{m}");
    }
    assert_eq!(metric(&m, "vigil_frames_total{camera=\"cam1\",result=\"rejected\"}"), 7.0, "{m}");
    // Refused files were moved to quarantine (the symlink stays: it is not vigil's to move).
    for (name, _, _) in &refused {
        assert!(quarantine.join(name).exists(), "{name} not in quarantine");
        assert!(!plant.path(&format!("frames/{name}")).exists(), "{name} still in the watched folder");
    }
    // Still serving: the next anomalous frame on each source alerts.
    plant.drop_frame("next.png", good);
    sub.publish("raw/c1", false, good.clone());
    use base64::Engine as _;
    let body = serde_json::json!({ "image": base64::engine::general_purpose::STANDARD.encode(good) });
    sub.publish("json/frames", false, body.to_string().into_bytes());
    wait_until("an alert for next.png", WAIT, || {
        sub.on("vigil/box1/cam1/anomaly").iter().any(|m| m.json()["source"].as_str().unwrap().ends_with("next.png"))
    });
    sub.wait_for("vigil/box1/c1/anomaly", 1, WAIT);
    sub.wait_for("vigil/box1/json/anomaly", 1, WAIT);
    daemon.stop();
    // The refusals are in the decisions log too, each as schema/decision.schema.json says.
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&decisions).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let kinds: Vec<&str> =
        lines.iter().filter(|l| l["result"] == "rejected").filter_map(|l| l["kind"].as_str()).collect();
    assert!(kinds.contains(&"corrupt") && kinds.contains(&"too_large"), "{kinds:?}");
    let verdicts = crate::daemon::schema_verdicts("schema/decision.schema.json", &lines);
    assert!(verdicts.iter().all(|v| v == "ok"), "{:?}", verdicts.iter().find(|v| *v != "ok"));
}

/// A frame whose alert could not be stored stays unacknowledged, and the broker is made to
/// deliver it again (brokers redeliver only when a session resumes); a frame that was handled
/// is acknowledged and never comes back, across that reconnect too. The MQTT source and the
/// connection are vigil's, the broker is a real Mosquitto, and the test plays the scoring side.
#[test]
fn a_frame_whose_alert_could_not_be_stored_is_delivered_again_and_a_handled_one_is_not() {
    use std::sync::Arc;
    use tokio::sync::mpsc;
    use tokio::time::timeout;
    use vigil::frame::{Frame, Outcome};
    use vigil::source::mqtt::MqttCamera;

    let m = Mosquitto::start();
    let publisher = Subscriber::new(m.port, "unused/#");
    let cfg = serde_json::from_value(serde_json::json!({ "host": "127.0.0.1", "port": m.port })).unwrap();
    let source = serde_json::from_value(serde_json::json!({ "topic": "cams/line/frame" })).unwrap();
    let metrics = Arc::new(vigil::metrics::Metrics::default());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let (control, _control) = vigil::mqtt::control_channel();
        let (messages_tx, messages) = mpsc::channel(16);
        let triggers = Arc::new(vigil::trigger::Triggers::default());
        let subscriptions = vigil::mqtt::Subscriptions {
            frames: vec!["cams/line/frame".to_string()],
            triggers: triggers.clone(),
            homeassistant: None,
            fleet: false,
        };
        let (mqtt, connection) =
            vigil::mqtt::start(&cfg, "dev", subscriptions, control, messages_tx, metrics.clone()).unwrap();
        let cameras = vec![MqttCamera { slot: 0, id: "line".into(), class: None, config: source }];
        let (frames_tx, mut frames) = mpsc::channel::<Frame>(16);
        let stop = vigil::shutdown::Stop::new();
        let task = tokio::spawn(vigil::source::mqtt::run(
            cameras,
            messages,
            vigil::scoring::Queue::new(frames_tx, triggers),
            mqtt.clone(),
            metrics.clone(),
            vec![],
            stop.subscribe(),
        ));
        let started = Instant::now();
        while !mqtt.is_connected() {
            assert!(started.elapsed() < WAIT, "vigil did not connect to the broker");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The subscription follows the connection.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let patience = vigil::mqtt::REDELIVERY_DELAY + Duration::from_secs(20);
        // A frame is published, left unacknowledged as if its alert could not be stored, must
        // come again (and only it: a frame handled before must not), and is then handled.
        let mut stored_on_second_try = async |payload: &[u8]| {
            publisher.publish("cams/line/frame", false, payload.to_vec());
            for (attempt, outcome) in
                [("first", Outcome::Retry("outbox: no space left on device".into())), ("second", Outcome::Scored)]
            {
                let f = timeout(patience, frames.recv())
                    .await
                    .unwrap_or_else(|_| panic!("{} did not arrive a {attempt} time", String::from_utf8_lossy(payload)))
                    .unwrap();
                assert_eq!(f.bytes, payload, "{attempt} delivery");
                f.done.unwrap().send(outcome).unwrap();
            }
        };
        stored_on_second_try(b"frame one").await;
        // Another renewal: frame one, handled, does not come back with it.
        stored_on_second_try(b"frame two").await;
        assert!(timeout(Duration::from_secs(2), frames.recv()).await.is_err(), "nothing else was left unacknowledged");
        assert!(mqtt.is_connected());

        stop.stop();
        connection.stop().await;
        let _ = task.await;
    });
}
