//! Faults end to end: a broker away while alerts pile up, the daemon SIGKILLed mid-stream,
//! and a corpus of bad input; real Mosquitto processes, real files, the real binary.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::mosquitto::{Mosquitto, Subscriber, metric};
use crate::daemon::{Daemon, Plant, WAIT, mqtt_section};

/// Alert ids received on the camera's anomaly topic, with how often each came.
fn ids(sub: &Subscriber, camera: &str) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for m in sub.on(&format!("vigil/box1/{camera}/anomaly")) {
        *seen.entry(m.json()["id"].as_str().unwrap().to_owned()).or_insert(0) += 1;
    }
    seen
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "waited {timeout:?} for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A broker that keeps sessions across a graceful restart, so the test's subscriber misses
/// nothing while it is away.
fn persistent_broker() -> Mosquitto {
    Mosquitto::start_with(|dir, port| {
        // Started as root, mosquitto drops to its own user, which must be able to save there.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        format!(
            "persistence true\npersistence_location {}/\nlistener {port} 127.0.0.1\nallow_anonymous true\n",
            dir.display()
        )
    })
}

#[test]
fn alerts_raised_while_the_broker_is_down_all_arrive_once_it_is_back() {
    const N: usize = 200;
    let plant = Plant::new();
    let mut broker = persistent_broker();
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
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["run", "--config", cfg.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
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
}
