//! The hardening findings, each as it was reproduced: a file dated 1969 and a frame from year
//! 10000, a threshold of 1e39, a damaged state file, a stage that dies, a full state folder.
//! Real folders, a real Mosquitto, the daemon's library entry point.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;

use crate::common::mosquitto::{Mosquitto, Subscriber, http_get, http_request, metric};
use crate::common::wait_until;
use crate::daemon::{Daemon, Plant, WAIT, mqtt_section};

/// Writes a frame into `frames/` with the modification time `mtime`, renamed into place.
fn drop_dated(plant: &Plant, name: &str, bytes: &[u8], mtime: SystemTime) -> PathBuf {
    let tmp = plant.path(&format!("frames/.{name}.part"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::File::options().write(true).open(&tmp).unwrap().set_modified(mtime).unwrap();
    let path = plant.path(&format!("frames/{name}"));
    std::fs::rename(&tmp, &path).unwrap();
    path
}

/// An MQTT camera `cam2` taking JSON frames with a time field on `line/cam2/frame`.
fn mqtt_camera(plant: &Plant) -> String {
    format!(
        "[[cameras]]\nid = \"cam2\"\nbundle = \"{}\"\nthreshold = {}\nsource = {{ type = \"mqtt\", topic = \"line/cam2/frame\", payload = \"json\", time_field = \"time\" }}\n",
        plant.bundle.display(),
        plant.threshold
    )
}

/// A JSON frame, with its `time` (Unix milliseconds) when given.
fn json_frame(bytes: &[u8], time: Option<u64>) -> Vec<u8> {
    let mut frame = serde_json::json!({ "image": base64::engine::general_purpose::STANDARD.encode(bytes) });
    if let Some(t) = time {
        frame["time"] = t.into();
    }
    frame.to_string().into_bytes()
}

#[test]
fn a_file_dated_1969_and_a_frame_from_year_10000_are_counted_and_every_frame_after_them_is_scored() {
    let plant = Plant::new();
    let broker = Mosquitto::start();
    let sub = Subscriber::new(broker.port, "vigil/#");
    let cfg = plant.config(&format!("{}{}{}", mqtt_section(broker.port), plant.folder_camera(""), mqtt_camera(&plant)));
    let daemon = Daemon::start(&plant, &cfg);
    sub.wait_for_text("vigil/box1/available", "online", WAIT);
    let before = SystemTime::now();
    // Anomalous, so each goes the whole way: the alert's id and RFC 3339 times are made.
    drop_dated(&plant, "old.png", &plant.anomalous, UNIX_EPOCH - Duration::from_secs(1));
    sub.publish("line/cam2/frame", false, json_frame(&plant.anomalous, Some(253_402_300_800_000)));
    for a in
        sub.wait_for("vigil/box1/cam1/anomaly", 1, WAIT).iter().chain(&sub.wait_for("vigil/box1/cam2/anomaly", 1, WAIT))
    {
        let t = humantime::parse_rfc3339(a.json()["frame_time"].as_str().unwrap()).unwrap();
        assert!(t >= before - Duration::from_secs(1) && t <= SystemTime::now(), "scored at its arrival: {}", a.text());
    }
    // What came after is scored, on both cameras (before the fix: nothing on any camera).
    for i in 0..3 {
        plant.drop_frame(&format!("n{i}.png"), &plant.normal);
        sub.publish("line/cam2/frame", false, json_frame(&plant.normal, None));
    }
    plant.wait_frames("cam1", "normal", 3.0);
    plant.wait_frames("cam2", "normal", 3.0);
    let m = plant.metrics();
    assert_eq!(metric(&m, "vigil_frame_times_fixed_total{camera=\"cam1\",reason=\"before_2000\"}"), 1.0, "{m}");
    assert_eq!(metric(&m, "vigil_frame_times_fixed_total{camera=\"cam2\",reason=\"in_the_future\"}"), 1.0, "{m}");
    assert_eq!(http_get(plant.http, "/healthz"), (200, "ok\n".into()));
    daemon.stop();
}

#[test]
fn a_stage_that_dies_turns_healthz_unhealthy_and_ends_the_daemon_with_its_name() {
    let plant = Plant::new();
    let cfg = plant.config(&format!("[alerts]\nstdout = true\n{}", plant.folder_camera("")));
    // A device id of its own: the armed fault must not reach the other tests' daemons.
    let text = std::fs::read_to_string(&cfg).unwrap().replace("device_id = \"box1\"", "device_id = \"box-fault\"");
    std::fs::write(&cfg, text).unwrap();
    let daemon = Daemon::start(&plant, &cfg);
    plant.drop_frame("a.png", &plant.normal);
    plant.wait_frames("cam1", "normal", 1.0);
    // The decide stage ends at the next frame, as a bug outside any one frame's work would.
    vigil::health::faults::arm("box-fault", "decide");
    plant.drop_frame("b.png", &plant.normal);
    let mut seen = String::new();
    wait_until("/healthz to turn unhealthy", WAIT, || {
        let (status, body) = http_get(plant.http, "/healthz");
        seen = body;
        status == 503
    });
    assert!(seen.contains("failed: stage:decide stage: decide stage crashed"), "{seen}");
    // Then it ends by itself, with the reason, so that systemd starts it again.
    let e = daemon.join().expect_err("a daemon whose stage died ends with an error");
    assert!(e.to_string().contains("decide stage"), "{e:#}");
}

#[test]
fn thresholds_beyond_f32_are_refused_over_mqtt_and_the_page_and_a_damaged_file_is_set_aside() {
    let plant = Plant::new();
    let broker = Mosquitto::start();
    let sub = Subscriber::new(broker.port, "vigil/#");
    // What an earlier vigil saved after `threshold/set 1e39`: the next start exited 1.
    let state = plant.path("state/thresholds.json");
    std::fs::write(&state, br#"{"cam1": null}"#).unwrap();
    let cfg = plant.config(&format!("{}{}", mqtt_section(broker.port), plant.folder_camera("")));
    let daemon = Daemon::start(&plant, &cfg);
    sub.wait_for_text("vigil/box1/available", "online", WAIT);
    assert!(!state.exists());
    assert_eq!(std::fs::read(plant.path("state/thresholds.json.corrupt")).unwrap(), br#"{"cam1": null}"#);
    assert_eq!(metric(&plant.metrics(), "vigil_errors_total{kind=\"state_corrupt\"}"), 1.0);

    sub.publish("vigil/box1/cam1/threshold/set", false, b"1e39".to_vec());
    wait_until("the MQTT threshold to be refused", WAIT, || {
        metric(&plant.metrics(), "vigil_errors_total{kind=\"bad_threshold\"}") >= 1.0
    });
    let token = std::fs::read_to_string(plant.path("state/http-token")).unwrap();
    let bearer = format!("Bearer {}", token.trim());
    let (status, body) =
        http_request(plant.http, "POST", "/api/cameras/cam1/threshold", &[("Authorization", &bearer)], "-1e39");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("beyond the range"), "{body}");
    assert_eq!(metric(&plant.metrics(), "vigil_errors_total{kind=\"bad_threshold\"}"), 2.0);
    assert!(!state.exists(), "nothing was saved");
    // The camera still alerts at its configured threshold.
    plant.drop_frame("a.png", &plant.anomalous);
    sub.wait_for("vigil/box1/cam1/anomaly", 1, WAIT);
    daemon.stop();
}

/// A tmpfs of `size` mounted on `dir` for the test, unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", dir.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting a {size} tmpfs for the full-disk test needs root (CI runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk(dir.to_owned())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn free(dir: &Path) -> u64 {
    vigil::space::free_bytes(dir).unwrap()
}

/// Fills `dir`'s file system with `name` until `leave` bytes are free.
fn fill(dir: &Path, name: &str, leave: u64) -> PathBuf {
    let path = dir.join(name);
    let take = free(dir).saturating_sub(leave);
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![7u8; 64 << 10];
    let mut left = take;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        if std::io::Write::write_all(&mut f, &chunk[..n]).is_err() {
            break;
        }
        left -= n as u64;
    }
    let _ = f.sync_all();
    path
}

#[test]
fn on_a_full_state_folder_alerts_come_first_and_delivery_resumes_by_itself_once_space_is_back() {
    let plant = Plant::new();
    let state = plant.dir.path().join("state");
    let _disk = SmallDisk::mount(&state, "8m");
    let mut broker = Mosquitto::persistent();
    let sub = Subscriber::persistent(broker.port, "vigil/box1/cam1/anomaly", "hardening-full-disk");
    let cfg = plant.config(&format!(
        "{}[alerts]\ndisk_reserve_mb = 4\n{}",
        mqtt_section(broker.port),
        plant.folder_camera("")
    ));
    let daemon = Daemon::start(&plant, &cfg);
    // The broker is away: alerts wait in the outbox.
    broker.terminate();
    // A quarter MiB above the reserve for frame copies and snapshots.
    let ballast = fill(&state, "ballast", (4 << 20) + (256 << 10));
    let mut sent = 0;
    let mut anomalous = |plant: &Plant, n: usize| {
        for _ in 0..n {
            // Another name per frame: another source, another alert id.
            plant.drop_frame(&format!("a{sent:03}.png"), &plant.anomalous);
            sent += 1;
        }
    };
    anomalous(&plant, 120);
    plant.wait_frames("cam1", "anomalous", 120.0);
    wait_until("120 alerts in the outbox", WAIT, || metric(&plant.metrics(), "vigil_outbox_pending") == 120.0);
    // The helpers stopped at the reserve; the outbox had what it needed.
    assert!(free(&state) >= 3 << 20, "frame copies and snapshots left the reserve: {} free", free(&state));
    // Nearly full is a warning: still 200, alerts are stored.
    wait_until("/healthz to warn of the nearly full state folder", WAIT, || {
        let (status, body) = http_get(plant.http, "/healthz");
        status == 200 && body.contains("warning: disk: state_dir") && body.contains("nearly full")
    });

    // Now something else takes the reserve too: the disk is full, alerts cannot be stored.
    let filler = fill(&state, "filler", 0);
    anomalous(&plant, 20);
    wait_until("/healthz to report the full disk", WAIT, || {
        let (status, body) = http_get(plant.http, "/healthz");
        status == 503 && body.contains("failed: disk") && body.contains("full")
    });
    let m = plant.metrics();
    assert!(metric(&m, "vigil_errors_total{kind=\"outbox\"}") >= 1.0, "{m}");

    // Space comes back, and so does the broker: every alert arrives, without a restart.
    std::fs::remove_file(&filler).unwrap();
    std::fs::remove_file(&ballast).unwrap();
    broker.restart();
    let alerts = sub.wait_for("vigil/box1/cam1/anomaly", 140, Duration::from_secs(60));
    let ids: std::collections::HashSet<String> =
        alerts.iter().map(|m| m.json()["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids.len(), 140, "each alert once");
    wait_until("/healthz to recover", WAIT, || http_get(plant.http, "/healthz").0 == 200);
    daemon.stop();
}
