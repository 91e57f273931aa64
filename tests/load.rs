//! Load: a burst of 10,000 files and a flood of MQTT frames are scored completely, with the
//! daemon's memory bounded by its queues rather than by the burst.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::common::mosquitto::{Mosquitto, Subscriber, http_get, metric};
use crate::daemon::{Plant, mqtt_section, run_binary};

/// Peak resident memory of a process, MiB (VmHWM).
fn peak_rss_mib(child: &Child) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb / 1024.0
}

fn spawn(cfg: &std::path::Path) -> Child {
    run_binary(cfg, Stdio::null())
}

fn scored(plant: &Plant, camera: &str) -> f64 {
    let m = http_get(plant.http, "/metrics").1;
    ["normal", "anomalous", "rejected"]
        .iter()
        .map(|r| metric(&m, &format!("vigil_frames_total{{camera=\"{camera}\",result=\"{r}\"}}")))
        .sum()
}

fn wait_ready(plant: &Plant, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", plant.http)).is_err() || http_get(plant.http, "/healthz").0 != 200
    {
        assert!(child.try_wait().unwrap().is_none(), "the daemon exited while starting");
        assert!(Instant::now() < deadline, "the daemon did not get ready");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_burst_of_10000_files_is_scored_completely_with_bounded_memory() {
    const N: usize = 10_000;
    let plant = Plant::new();
    let cfg = plant.config(&format!("[alerts]\nstdout = true\n{}", plant.folder_camera("")));
    let mut child = spawn(&cfg);
    wait_ready(&plant, &mut child);
    let idle = peak_rss_mib(&child);
    let started = Instant::now();
    for i in 0..N {
        plant.drop_frame(&format!("f{i:05}.png"), if i % 10 == 0 { &plant.anomalous } else { &plant.normal });
    }
    let dropped = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(600);
    while scored(&plant, "cam1") < N as f64 {
        assert!(child.try_wait().unwrap().is_none(), "the daemon died during the burst");
        assert!(Instant::now() < deadline, "only {} of {N} files scored", scored(&plant, "cam1"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let peak = peak_rss_mib(&child);
    eprintln!(
        "burst: {N} files written in {:.1}s, all scored after {:.1}s; peak RSS {peak:.0} MiB (idle {idle:.0} MiB)",
        dropped.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    let m = http_get(plant.http, "/metrics").1;
    assert_eq!(metric(&m, "vigil_frames_total{camera=\"cam1\",result=\"anomalous\"}"), (N / 10) as f64, "{m}");
    // Bounded by the queues: a burst of 10,000 frames adds little to what the daemon holds idle.
    assert!(peak < idle + 64.0, "peak RSS {peak:.0} MiB against {idle:.0} MiB idle");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn a_camera_flooding_mqtt_is_paced_by_the_broker_and_nothing_is_lost() {
    const N: usize = 2_000;
    let plant = Plant::new();
    // The broker holds the backlog for vigil's session (Mosquitto keeps 1,000 messages per
    // client by default and drops the rest: size max_queued_messages for a camera's bursts).
    let broker = Mosquitto::start_with(|_, port| {
        format!("max_queued_messages 100000\nlistener {port} 127.0.0.1\nallow_anonymous true\n")
    });
    let cfg = plant.config(&format!(
        "{}[[cameras]]\nid = \"flood\"\nbundle = \"{}\"\nthreshold = {}\nsource = {{ type = \"mqtt\", topic = \"flood/frames\" }}\n",
        mqtt_section(broker.port),
        plant.bundle.display(),
        plant.threshold
    ));
    let mut child = spawn(&cfg);
    wait_ready(&plant, &mut child);
    let sub = Subscriber::new(broker.port, "vigil/box1/available");
    sub.wait_for_text("vigil/box1/available", "online", Duration::from_secs(30));
    let idle = peak_rss_mib(&child);
    // Published as fast as the test can, at QoS 1.
    for _ in 0..N {
        sub.publish("flood/frames", false, plant.normal.clone());
    }
    let deadline = Instant::now() + Duration::from_secs(40);
    while scored(&plant, "flood") < N as f64 {
        assert!(
            Instant::now() < deadline,
            "only {} of {N} frames scored:\n{}",
            scored(&plant, "flood"),
            http_get(plant.http, "/metrics").1
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let peak = peak_rss_mib(&child);
    eprintln!("flood: {N} MQTT frames scored; peak RSS {peak:.0} MiB (idle {idle:.0} MiB)");
    let m = http_get(plant.http, "/metrics").1;
    assert_eq!(metric(&m, "vigil_frames_dropped_total{reason=\"mqtt_queue_full\"}"), 0.0, "{m}");
    assert!(peak < idle + 64.0, "peak RSS {peak:.0} MiB against {idle:.0} MiB idle");
    child.kill().unwrap();
    child.wait().unwrap();
}
