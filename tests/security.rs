//! Security: no silent plaintext to a remote broker, no plaintext fallback when TLS fails,
//! and the systemd unit's sandbox.

use std::process::Command;
use std::time::Duration;

use crate::common::mosquitto::{Mosquitto, Subscriber, metric};
use crate::daemon::{Daemon, Plant};

fn mqtt_problems(mqtt: &str) -> Vec<String> {
    let text = format!(
        "device_id = \"box1\"\n{mqtt}\n[[cameras]]\nid = \"c\"\nbundle = \"models/surface-dae\"\nsource = {{ type = \"folder\", path = \"/tmp\" }}\n"
    );
    let (config, problems) = vigil::config::parse_str(&text);
    assert!(problems.is_empty(), "{problems:?}");
    config.unwrap().validate().into_iter().filter(|p| p.key.starts_with("mqtt")).map(|p| p.to_string()).collect()
}

#[test]
fn plain_tcp_to_another_machine_is_refused_unless_asked_for() {
    let remote = mqtt_problems("[mqtt]\nhost = \"broker.factory.example\"");
    assert_eq!(remote.len(), 1, "{remote:?}");
    assert!(remote[0].contains("mqtt.tls") && remote[0].contains("plaintext = true"), "{remote:?}");
    assert!(mqtt_problems("[mqtt]\nhost = \"broker.factory.example\"\nplaintext = true").is_empty());
    assert!(mqtt_problems("[mqtt]\nhost = \"127.0.0.1\"").is_empty());
    assert!(mqtt_problems("[mqtt]\nhost = \"localhost\"").is_empty());
    assert!(mqtt_problems("[mqtt]\nhost = \"::1\"").is_empty());
}

#[test]
fn a_tls_config_never_falls_back_to_plain_tcp() {
    // The broker speaks plain MQTT only; vigil is configured for TLS to it.
    let plant = Plant::new();
    let broker = Mosquitto::start();
    let sub = Subscriber::new(broker.port, "#");
    crate::daemon::certificates(plant.dir.path());
    let cfg = plant.config(&format!(
        "[mqtt]\nhost = \"localhost\"\nport = {}\nmax_backoff = \"1s\"\n[mqtt.tls]\nca_file = \"{}\"\n{}",
        broker.port,
        plant.dir.path().join("ca.pem").display(),
        plant.folder_camera("")
    ));
    let daemon = Daemon::start(&plant, &cfg);
    plant.drop_frame("a.png", &plant.anomalous);
    plant.wait_frames("cam1", "anomalous", 1.0);
    std::thread::sleep(Duration::from_secs(3));
    let m = plant.metrics();
    assert_eq!(metric(&m, "vigil_mqtt_connected"), 0.0, "{m}");
    assert!(metric(&m, "vigil_errors_total{kind=\"broker\"}") >= 1.0, "{m}");
    assert_eq!(metric(&m, "vigil_outbox_pending"), 1.0, "the alert waits for a secure connection:\n{m}");
    assert!(sub.on("vigil/box1/cam1/anomaly").is_empty() && sub.on("vigil/box1/available").is_empty());
    daemon.stop();
}

#[test]
fn the_systemd_unit_is_sandboxed_to_an_exposure_of_at_most_2() {
    let unit = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/vigil.service");
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", unit])
        .output()
        .expect("systemd-analyze runs (Debian package systemd; scripts/setup installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_else(|| panic!("{text}"));
    let level: f64 = line.split(':').nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    eprintln!("{line}");
    assert!(level <= 2.0, "{line}");
}
