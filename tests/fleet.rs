//! Signed bundle rollout across three daemons on one real Mosquitto: `vigil publish` reaches
//! the boxes its pattern names and no other; an untrusted key, a bundle that does not load and
//! a corrupted chunk never replace the served bundle; a transfer cut by a restart resumes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::mosquitto::{Mosquitto, Subscriber};
use crate::daemon::{Daemon, Plant, WAIT, mqtt_section};

/// A copy of `bundle` whose manifest says `version`, with `pad` extra bytes in a side file.
fn version_of(bundle: &Path, out: &Path, version: u32, pad: usize) -> PathBuf {
    std::fs::create_dir_all(out).unwrap();
    for e in std::fs::read_dir(bundle).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), out.join(e.file_name())).unwrap();
    }
    let manifest = out.join(vigil_model::bundle::MANIFEST_FILE);
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    m["version"] = serde_json::json!(version);
    std::fs::write(&manifest, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    if pad > 0 {
        std::fs::write(out.join("notes.bin"), (0..pad).map(|i| (i * 7919 % 251) as u8).collect::<Vec<u8>>()).unwrap();
    }
    out.to_path_buf()
}

fn serving(plant: &Plant, version: u32) -> bool {
    let v = format!("version=\"{version}\"");
    plant.metrics().lines().any(|l| l.starts_with("vigil_model_info{") && l.contains(&v))
}

fn wait_serving(plant: &Plant, version: u32) {
    let deadline = Instant::now() + WAIT;
    while !serving(plant, version) {
        assert!(Instant::now() < deadline, "the box does not serve version {version}:\n{}", plant.metrics());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The box's `bundle/state` answering `transfer`.
fn state_of(sub: &Subscriber, device: &str, transfer: &str) -> serde_json::Value {
    let topic = format!("vigil/{device}/cam1/bundle/state");
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(m) = sub.on(&topic).iter().map(|m| m.json()).find(|s| s["transfer"] == transfer) {
            return m;
        }
        assert!(Instant::now() < deadline, "no bundle/state of {device} for transfer {transfer}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn publish(bundle: &Path, port: u16, devices: &str, key: &Path) -> (bool, Vec<serde_json::Value>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["publish", bundle.to_str().unwrap(), "--mqtt", &format!("mqtt://127.0.0.1:{port}")])
        .args(["--devices", devices, "--camera", "cam1", "--key", key.to_str().unwrap(), "--wait", "60s"])
        .output()
        .unwrap();
    let lines = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    (out.status.success(), lines, String::from_utf8_lossy(&out.stderr).into_owned())
}

struct Box1 {
    plant: Plant,
    config: PathBuf,
    daemon: Option<Daemon>,
}

#[test]
fn a_signed_bundle_rolls_out_to_the_named_boxes_and_nothing_bad_replaces_a_served_one() {
    let broker = Mosquitto::start();
    let sub = Subscriber::new(broker.port, "vigil/#");
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("fleet.key");
    let public = vigil::commands::publish::keygen(&key).unwrap();
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the signing key is readable by its owner only");
    assert_eq!(std::fs::read_to_string(keys.path().join("fleet.key.pub")).unwrap().trim(), public);

    let mut boxes: Vec<Box1> = ["line1-a", "line1-b", "line2-a"]
        .iter()
        .map(|device| {
            let plant = Plant::new();
            let config = plant.config(&format!(
                "[fleet]\ntrusted_keys = [\"{public}\"]\n{}{}",
                mqtt_section(broker.port),
                plant.folder_camera("")
            ));
            let text = std::fs::read_to_string(&config)
                .unwrap()
                .replace("device_id = \"box1\"", &format!("device_id = \"{device}\""));
            std::fs::write(&config, text).unwrap();
            let daemon = Some(Daemon::start(&plant, &config));
            sub.wait_for_text(&format!("vigil/{device}/available"), "online", WAIT);
            Box1 { plant, config, daemon }
        })
        .collect();

    // Version 7 to line1-*: both line-1 boxes install it, the line-2 box is not touched.
    let v7 = version_of(&boxes[0].plant.bundle, &keys.path().join("v7"), 7, 0);
    let (ok, lines, err) = publish(&v7, broker.port, "line1-*", &key);
    assert!(ok, "{err}\n{lines:?}");
    let devices: Vec<&str> = lines.iter().map(|l| l["device"].as_str().unwrap()).collect();
    assert_eq!(devices, ["line1-a", "line1-b"]);
    for l in &lines {
        assert_eq!(l["state"]["serving"]["version"], 7, "{l}");
        assert_eq!(l["state"]["ok"], true, "{l}");
    }
    wait_serving(&boxes[0].plant, 7);
    wait_serving(&boxes[1].plant, 7);
    assert!(serving(&boxes[2].plant, 1) && !serving(&boxes[2].plant, 7));
    let previous = vigil_model::bundle::install::previous_path(&boxes[0].plant.bundle);
    assert_eq!(vigil_model::bundle::Bundle::load(&previous).unwrap().manifest.version, 1, "the replaced one is kept");

    // Signed by a key the boxes do not trust: refused, version 7 stays.
    let stranger = keys.path().join("stranger.key");
    vigil::commands::publish::keygen(&stranger).unwrap();
    let v8 = version_of(&boxes[0].plant.bundle, &keys.path().join("v8"), 8, 0);
    let (ok, lines, _) = publish(&v8, broker.port, "line1-a", &stranger);
    assert!(!ok);
    assert!(lines[0]["state"]["error"].as_str().unwrap().contains("not in fleet.trusted_keys"), "{}", lines[0]);
    assert_eq!(lines[0]["state"]["serving"]["version"], 7);

    // Trusted, but a graph that does not load: refused after the test-run, version 7 stays.
    let broken = version_of(&boxes[0].plant.bundle, &keys.path().join("broken"), 9, 0);
    std::fs::write(broken.join("model.onnx"), b"not a graph").unwrap();
    let (ok, lines, _) = publish(&broken, broker.port, "line1-a", &key);
    assert!(!ok);
    assert!(lines[0]["state"]["error"].as_str().unwrap().contains("does not load"), "{}", lines[0]);

    // A chunk changed on the way: the SHA-256 does not match what was signed.
    let signing = vigil::fleet::package::read_signing_key(&key).unwrap();
    let package = vigil::fleet::package::pack(&v8).unwrap();
    let mut messages = vigil::commands::publish::messages(&package, &signing, "00000000000000c0");
    let last = messages[0].len() - 1;
    messages[0][last] ^= 0xff;
    for m in messages {
        sub.publish("vigil/line1-a/cam1/bundle/set", false, m);
    }
    let state = state_of(&sub, "line1-a", "00000000000000c0");
    assert!(state["error"].as_str().unwrap().contains("SHA-256"), "{state}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(serving(&boxes[0].plant, 7));

    // A transfer cut by a restart of the box resumes with the chunks it still lacks.
    let big = version_of(&boxes[0].plant.bundle, &keys.path().join("v10"), 10, 700_000);
    let package = vigil::fleet::package::pack(&big).unwrap();
    let messages = vigil::commands::publish::messages(&package, &signing, "00000000000000d0");
    assert!(messages.len() >= 3, "{} chunks", messages.len());
    let (first, rest) = messages.split_at(2);
    for m in first {
        sub.publish("vigil/line1-a/cam1/bundle/set", false, m.clone());
    }
    let part = boxes[0].plant.path("state/fleet/cam1/00000000000000d0.json");
    let deadline = Instant::now() + WAIT;
    while !std::fs::read_to_string(&part).is_ok_and(|t| t.matches("true").count() == 2) {
        assert!(Instant::now() < deadline, "the first chunks were not stored");
        std::thread::sleep(Duration::from_millis(50));
    }
    boxes[0].daemon.take().unwrap().stop();
    assert!(serving_files(&boxes[0].plant.bundle, 7), "nothing half-received was installed");
    boxes[0].daemon = Some(Daemon::start(&boxes[0].plant, &boxes[0].config));
    for m in rest {
        sub.publish("vigil/line1-a/cam1/bundle/set", false, m.clone());
    }
    let state = state_of(&sub, "line1-a", "00000000000000d0");
    assert_eq!(state["ok"], true, "{state}");
    assert_eq!(state["serving"]["version"], 10);
    wait_serving(&boxes[0].plant, 10);
    let m = boxes[0].plant.metrics();
    assert!(m.contains("vigil_bundle_rollouts_total{camera=\"cam1\",result=\"installed\"} 1"), "{m}");

    // A broker redelivers chunks of an older transfer (a failover, a session's backlog): they
    // neither break off the newer transfer in progress nor undo it once installed.
    let v11 = version_of(&boxes[0].plant.bundle, &keys.path().join("v11"), 11, 300_000);
    let v12 = version_of(&boxes[0].plant.bundle, &keys.path().join("v12"), 12, 300_000);
    let v11_package = vigil::fleet::package::pack(&v11).unwrap();
    let old = vigil::commands::publish::messages(&v11_package, &signing, "00000000000000f0");
    let older = vigil::commands::publish::messages(&v11_package, &signing, "00000000000000f1");
    std::thread::sleep(Duration::from_millis(5));
    let new =
        vigil::commands::publish::messages(&vigil::fleet::package::pack(&v12).unwrap(), &signing, "00000000000000e0");
    assert!(new.len() >= 2 && old.len() >= 2);
    sub.publish("vigil/line1-a/cam1/bundle/set", false, new[0].clone());
    let progress = boxes[0].plant.path("state/fleet/cam1/00000000000000e0.json");
    let deadline = Instant::now() + WAIT;
    while !progress.exists() {
        assert!(Instant::now() < deadline, "the newer transfer's first chunk was not stored");
        std::thread::sleep(Duration::from_millis(50));
    }
    sub.publish("vigil/line1-a/cam1/bundle/set", false, old[0].clone());
    let state = state_of(&sub, "line1-a", "00000000000000f0");
    assert!(state["error"].as_str().unwrap().contains("in progress"), "{state}");
    for m in &new[1..] {
        sub.publish("vigil/line1-a/cam1/bundle/set", false, m.clone());
    }
    let state = state_of(&sub, "line1-a", "00000000000000e0");
    assert_eq!(state["ok"], true, "{state}");
    wait_serving(&boxes[0].plant, 12);
    // A whole older transfer, after the newer one is in service: refused, 12 stays.
    for m in &older {
        sub.publish("vigil/line1-a/cam1/bundle/set", false, m.clone());
    }
    let state = state_of(&sub, "line1-a", "00000000000000f1");
    assert!(state["error"].as_str().unwrap().contains("installed last"), "{state}");
    assert_eq!(state["serving"]["version"], 12, "{state}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(serving(&boxes[0].plant, 12) && serving_files(&boxes[0].plant.bundle, 12));

    for b in &mut boxes {
        b.daemon.take().unwrap().stop();
    }
}

/// Whether the bundle on disk says `version`.
fn serving_files(bundle: &Path, version: u32) -> bool {
    vigil_model::bundle::Bundle::load(bundle).unwrap().manifest.version == version
}
