//! Signed bundle rollout across daemons on one real Mosquitto: `vigil publish` reaches the
//! boxes its pattern names and no other; an untrusted key, a bundle that does not load and a
//! corrupted chunk never replace the served bundle; a transfer cut by a restart resumes; a
//! replayed, re-targeted, forged or old-format rollout is refused and the next honest one
//! taken; rollouts go by the publisher's signed sequence, not the bundle's version; a kill at
//! any step of an install leaves the old or the new bundle, whole.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vigil::commands::publish::{Rollout, identity, messages, next_sequence};
use vigil::fleet::package;

use crate::common::mosquitto::{Mosquitto, Subscriber, http_get, metric};
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

/// The box's `bundle/state` answering `transfer` with `ok` (another answer to the same id,
/// such as the refusal of a forged chunk under it, is passed over).
fn answer(sub: &Subscriber, device: &str, transfer: &str, ok: bool) -> serde_json::Value {
    let topic = format!("vigil/{device}/cam1/bundle/state");
    let deadline = Instant::now() + WAIT;
    loop {
        let found = sub.on(&topic).iter().map(|m| m.json()).find(|s| s["transfer"] == transfer && s["ok"] == ok);
        if let Some(m) = found {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "no bundle/state of {device} with ok = {ok} for transfer {transfer}; got {:?}",
            sub.on(&topic).iter().map(|m| m.text()).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last `bundle/state` of `device` whose error contains `needle`.
fn refusal(sub: &Subscriber, device: &str, needle: &str) -> serde_json::Value {
    let topic = format!("vigil/{device}/cam1/bundle/state");
    let deadline = Instant::now() + WAIT;
    loop {
        let found =
            sub.on(&topic).iter().map(|m| m.json()).rfind(|s| s["error"].as_str().is_some_and(|e| e.contains(needle)));
        if let Some(m) = found {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "no bundle/state of {device} refusing with `{needle}`; got {:?}",
            sub.on(&topic).iter().map(|m| m.text()).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn publish(bundle: &Path, port: u16, devices: &str, key: &Path) -> (bool, Vec<serde_json::Value>, String) {
    publish_with(bundle, port, devices, key, &[])
}

fn publish_with(
    bundle: &Path,
    port: u16,
    devices: &str,
    key: &Path,
    extra: &[&str],
) -> (bool, Vec<serde_json::Value>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["publish", bundle.to_str().unwrap(), "--mqtt", &format!("mqtt://127.0.0.1:{port}")])
        .args(["--devices", devices, "--camera", "cam1", "--key", key.to_str().unwrap(), "--wait", "60s"])
        .args(extra)
        .output()
        .unwrap();
    let lines = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    (out.status.success(), lines, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The messages of a rollout of `bundle` to `devices`' cam1, as `vigil publish` sends them,
/// with the key's next sequence number.
fn rollout_of(bundle: &Path, key: &Path, transfer: &str, devices: &str, rollback: bool) -> Vec<Vec<u8>> {
    let (name, version) = identity(bundle).unwrap();
    let r = Rollout {
        transfer: transfer.into(),
        created: vigil::fleet::now_ms(),
        devices: devices.into(),
        camera: "cam1".into(),
        name,
        version,
        sequence: next_sequence(key).unwrap(),
        rollback,
    };
    messages(&package::pack(bundle).unwrap(), &package::read_signing_key(key).unwrap(), &r)
}

/// `m` with its header line changed by `f`.
fn rewrite(m: &[u8], f: impl Fn(&mut serde_json::Value)) -> Vec<u8> {
    let end = m.iter().position(|&b| b == b'\n').unwrap();
    let mut header: serde_json::Value = serde_json::from_slice(&m[..end]).unwrap();
    f(&mut header);
    let mut out = serde_json::to_vec(&header).unwrap();
    out.extend_from_slice(&m[end..]);
    out
}

fn send(sub: &Subscriber, device: &str, messages: &[Vec<u8>]) {
    for m in messages {
        sub.publish(&format!("vigil/{device}/cam1/bundle/set"), false, m.clone());
    }
}

struct Box1 {
    plant: Plant,
    config: PathBuf,
    daemon: Option<Daemon>,
}

/// A box `device` with cam1 and `[fleet]` trusting `public`, started and online.
fn start_box(broker: &Mosquitto, sub: &Subscriber, device: &str, public: &str) -> Box1 {
    let plant = Plant::new();
    let config = plant.config(&format!(
        "[fleet]\ntrusted_keys = [\"{public}\"]\n{}{}",
        mqtt_section(broker.port),
        plant.folder_camera("")
    ));
    let text =
        std::fs::read_to_string(&config).unwrap().replace("device_id = \"box1\"", &format!("device_id = \"{device}\""));
    std::fs::write(&config, text).unwrap();
    let daemon = Some(Daemon::start(&plant, &config));
    sub.wait_for_text(&format!("vigil/{device}/available"), "online", WAIT);
    Box1 { plant, config, daemon }
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

    let mut boxes: Vec<Box1> =
        ["line1-a", "line1-b", "line2-a"].iter().map(|device| start_box(&broker, &sub, device, &public)).collect();

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
    let mut messages = rollout_of(&v8, &key, "00000000000000c0", "line1-a", false);
    let last = messages[0].len() - 1;
    messages[0][last] ^= 0xff;
    send(&sub, "line1-a", &messages);
    let state = state_of(&sub, "line1-a", "00000000000000c0");
    assert!(state["error"].as_str().unwrap().contains("SHA-256"), "{state}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(serving(&boxes[0].plant, 7));

    // A transfer cut by a restart of the box resumes with the chunks it still lacks.
    let big = version_of(&boxes[0].plant.bundle, &keys.path().join("v10"), 10, 700_000);
    let messages = rollout_of(&big, &key, "00000000000000d0", "line1-*", false);
    assert!(messages.len() >= 3, "{} chunks", messages.len());
    let (first, rest) = messages.split_at(2);
    send(&sub, "line1-a", first);
    // What is kept of a transfer grows with what arrived: 4 bytes per chunk stored.
    let got = boxes[0].plant.path("state/fleet/cam1/00000000000000d0.got");
    let deadline = Instant::now() + WAIT;
    while !std::fs::metadata(&got).is_ok_and(|m| m.len() == 8) {
        assert!(Instant::now() < deadline, "the first chunks were not stored");
        std::thread::sleep(Duration::from_millis(50));
    }
    boxes[0].daemon.take().unwrap().stop();
    assert!(serving_files(&boxes[0].plant.bundle, 7), "nothing half-received was installed");
    boxes[0].daemon = Some(Daemon::start(&boxes[0].plant, &boxes[0].config));
    send(&sub, "line1-a", rest);
    let state = state_of(&sub, "line1-a", "00000000000000d0");
    assert_eq!(state["ok"], true, "{state}");
    assert_eq!(state["serving"]["version"], 10);
    wait_serving(&boxes[0].plant, 10);
    let m = boxes[0].plant.metrics();
    assert!(m.contains("vigil_bundle_rollouts_total{camera=\"cam1\",result=\"installed\"} 1"), "{m}");

    // A broker redelivers chunks of an older rollout (a failover, a session's backlog): they
    // neither break off the newer transfer in progress nor undo it once installed.
    let v11 = version_of(&boxes[0].plant.bundle, &keys.path().join("v11"), 11, 300_000);
    let v12 = version_of(&boxes[0].plant.bundle, &keys.path().join("v12"), 12, 300_000);
    let old = rollout_of(&v11, &key, "00000000000000f0", "line1-a", false);
    let older = rollout_of(&v11, &key, "00000000000000f1", "line1-a", false);
    let new = rollout_of(&v12, &key, "00000000000000e0", "line1-a", false);
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
    send(&sub, "line1-a", &new[1..]);
    let state = state_of(&sub, "line1-a", "00000000000000e0");
    assert_eq!(state["ok"], true, "{state}");
    wait_serving(&boxes[0].plant, 12);
    // A whole older rollout, after the newer one is in service: refused, 12 stays.
    send(&sub, "line1-a", &older);
    let state = state_of(&sub, "line1-a", "00000000000000f1");
    assert!(state["error"].as_str().unwrap().contains("not newer than rollout"), "{state}");
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

fn fleet_key(dir: &Path) -> (PathBuf, String) {
    let key = dir.join("fleet.key");
    let public = vigil::commands::publish::keygen(&key).unwrap();
    (key, public)
}

#[test]
fn a_replayed_retargeted_forged_or_old_format_rollout_is_refused_and_the_next_honest_one_is_taken() {
    let broker = Mosquitto::start();
    let sub = Subscriber::new(broker.port, "vigil/#");
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = fleet_key(keys.path());
    let mut b = start_box(&broker, &sub, "line1-a", &public);
    let bundle = b.plant.bundle.clone();

    // Two honest rollouts; the first is captured by whoever watches the broker.
    let captured =
        rollout_of(&version_of(&bundle, &keys.path().join("v2"), 2, 0), &key, "00000000000000a2", "line1-*", false);
    send(&sub, "line1-a", &captured);
    assert_eq!(state_of(&sub, "line1-a", "00000000000000a2")["ok"], true);
    let v3 =
        rollout_of(&version_of(&bundle, &keys.path().join("v3"), 3, 0), &key, "00000000000000a3", "line1-*", false);
    send(&sub, "line1-a", &v3);
    assert_eq!(state_of(&sub, "line1-a", "00000000000000a3")["ok"], true);
    wait_serving(&b.plant, 3);

    // The captured rollout replayed as it was: its sequence is spent.
    send(&sub, "line1-a", &captured);
    let state = refusal(&sub, "line1-a", "not newer than rollout");
    assert_eq!(state["serving"]["version"], 3, "{state}");
    // Replayed under a new transfer id with a fresh `created`: the signature covers both.
    let forged: Vec<Vec<u8>> = captured
        .iter()
        .map(|m| {
            rewrite(m, |h| {
                h["transfer"] = "00000000000000b2".into();
                h["created"] = vigil::fleet::now_ms().into();
            })
        })
        .collect();
    send(&sub, "line1-a", &forged);
    let state = state_of(&sub, "line1-a", "00000000000000b2");
    assert!(state["error"].as_str().unwrap().contains("signature does not match"), "{state}");
    // Re-targeted: a rollout signed for line 2 sent to this box's topic.
    let v4 = version_of(&bundle, &keys.path().join("v4"), 4, 0);
    send(&sub, "line1-a", &rollout_of(&v4, &key, "00000000000000c4", "line2-*", false));
    let state = state_of(&sub, "line1-a", "00000000000000c4");
    assert!(state["error"].as_str().unwrap().contains("signed for devices `line2-*`"), "{state}");

    // `created` = 2^64-1: forged on an honest rollout (under its transfer id, sent ahead of
    // it) it breaks the signature, and the honest chunks that follow are still taken.
    let honest = rollout_of(&v4, &key, "00000000000000d4", "line1-a", false);
    let forged: Vec<Vec<u8>> = honest.iter().map(|m| rewrite(m, |h| h["created"] = u64::MAX.into())).collect();
    send(&sub, "line1-a", &forged);
    let state = answer(&sub, "line1-a", "00000000000000d4", false);
    assert!(state["error"].as_str().unwrap().contains("signature does not match"), "{state}");
    send(&sub, "line1-a", &honest);
    assert_eq!(answer(&sub, "line1-a", "00000000000000d4", true)["serving"]["version"], 4);
    wait_serving(&b.plant, 4);
    // Signed so (a key holder's broken clock): refused as being in the future; it blocks
    // nothing after it, since rollouts go by their sequence.
    let v5 = version_of(&bundle, &keys.path().join("v5"), 5, 0);
    let (name, version) = identity(&v5).unwrap();
    let future = Rollout {
        transfer: "00000000000000e5".into(),
        created: u64::MAX,
        devices: "line1-a".into(),
        camera: "cam1".into(),
        name,
        version,
        sequence: next_sequence(&key).unwrap(),
        rollback: false,
    };
    let future = messages(&package::pack(&v5).unwrap(), &package::read_signing_key(&key).unwrap(), &future);
    send(&sub, "line1-a", &future);
    let state = state_of(&sub, "line1-a", "00000000000000e5");
    assert!(state["error"].as_str().unwrap().contains("later than this box's clock"), "{state}");
    let honest = rollout_of(&v5, &key, "00000000000000d5", "line1-a", false);

    // A header of 1-byte chunks: refused before anything is stored.
    let tiny = rewrite(&honest[0], |h| {
        h["chunk"] = 1.into();
        h["parts"] = h["size"].clone();
        h["transfer"] = "00000000000000f4".into();
    });
    let end = tiny.iter().position(|&b| b == b'\n').unwrap();
    send(&sub, "line1-a", &[tiny[..end + 2].to_vec()]);
    let state = refusal(&sub, "line1-a", "under the minimum of 64 KiB");
    assert_eq!(state["serving"]["version"], 4, "{state}");
    assert!(!b.plant.path("state/fleet/cam1/00000000000000f4.part").exists());

    // A rollout of an older `vigil publish` (format 1: the package's SHA-256 and size signed).
    let old_format = rewrite(&honest[0], |h| {
        let o = h.as_object_mut().unwrap();
        for f in ["format", "devices", "camera", "name", "version", "sequence", "rollback"] {
            o.remove(f);
        }
        o.insert("transfer".into(), "00000000000000a1".into());
        let statement = format!("vigil-bundle/1\n{}\n{}\n", o["sha256"].as_str().unwrap(), o["size"]);
        let signing = package::read_signing_key(&key).unwrap();
        let signature = ed25519_dalek::Signer::sign(&signing, statement.as_bytes());
        o.insert(
            "signature".into(),
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, signature.to_bytes()).into(),
        );
    });
    send(&sub, "line1-a", &[old_format]);
    let state = state_of(&sub, "line1-a", "00000000000000a1");
    let error = state["error"].as_str().unwrap();
    assert!(error.contains("format 1") && error.contains("publish the bundle again with `vigil publish`"), "{state}");

    // Through all of it the box served version 4, and it takes the next honest rollout.
    assert!(serving(&b.plant, 4) && serving_files(&bundle, 4));
    send(&sub, "line1-a", &honest);
    assert_eq!(state_of(&sub, "line1-a", "00000000000000d5")["ok"], true);
    wait_serving(&b.plant, 5);
    let m = b.plant.metrics();
    assert!(metric(&m, "vigil_bundle_rollouts_total{camera=\"cam1\",result=\"refused\"}") >= 7.0, "{m}");
    b.daemon.take().unwrap().stop();
}

#[test]
fn rollouts_go_by_the_signed_sequence_not_the_version_and_a_signed_rollback_is_taken_once() {
    let broker = Mosquitto::start();
    let sub = Subscriber::new(broker.port, "vigil/#");
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = fleet_key(keys.path());
    let mut b = start_box(&broker, &sub, "line1-a", &public);
    let bundle = b.plant.bundle.clone();
    send(
        &sub,
        "line1-a",
        &rollout_of(&version_of(&bundle, &keys.path().join("v3"), 3, 0), &key, "00000000000000a3", "line1-a", false),
    );
    assert_eq!(state_of(&sub, "line1-a", "00000000000000a3")["ok"], true);

    // The box retrains locally (`vigil-train retrain --install` raises the version to 4)...
    let local = version_of(&bundle, &vigil_model::bundle::install::sibling(&bundle, "next"), 4, 10);
    vigil_model::bundle::install::install(&local, &bundle).unwrap();
    wait_serving(&b.plant, 4);
    // ...and still takes the next central rollout, version 4 too: the sequence is newer.
    let central4 = version_of(&bundle, &keys.path().join("c4"), 4, 20);
    send(&sub, "line1-a", &rollout_of(&central4, &key, "00000000000000a4", "line1-a", false));
    assert_eq!(state_of(&sub, "line1-a", "00000000000000a4")["ok"], true);
    wait_serving(&b.plant, 4);
    assert_eq!(std::fs::read(bundle.join("notes.bin")).unwrap().len(), 20, "the central bundle, not the local one");

    // An older version than the last rollout's is a downgrade unless signed as a rollback.
    let v2 = version_of(&bundle, &keys.path().join("v2"), 2, 0);
    send(&sub, "line1-a", &rollout_of(&v2, &key, "00000000000000b2", "line1-a", false));
    let state = state_of(&sub, "line1-a", "00000000000000b2");
    assert!(state["error"].as_str().unwrap().contains("vigil publish --rollback"), "{state}");
    let (ok, lines, err) = publish_with(&v2, broker.port, "line1-a", &key, &["--rollback"]);
    assert!(ok, "{err}\n{lines:?}");
    assert_eq!(lines[0]["state"]["serving"]["version"], 2, "{}", lines[0]);
    wait_serving(&b.plant, 2);
    // The signed rollback, captured from the broker, cannot be replayed: its sequence is spent,
    // before and after a newer rollout.
    let captured: Vec<Vec<u8>> = sub
        .on("vigil/line1-a/cam1/bundle/set")
        .into_iter()
        .map(|m| m.payload)
        .filter(|p| vigil::fleet::Chunk::parse(p).is_ok_and(|(h, _)| h.rollback))
        .collect();
    assert!(!captured.is_empty());
    let transfer = vigil::fleet::Chunk::parse(&captured[0]).unwrap().0.transfer;
    // Right away it is the rollout installed last: nothing to do.
    send(&sub, "line1-a", &captured);
    std::thread::sleep(Duration::from_millis(300));
    send(
        &sub,
        "line1-a",
        &rollout_of(&version_of(&bundle, &keys.path().join("v5"), 5, 0), &key, "00000000000000a5", "line1-a", false),
    );
    assert_eq!(state_of(&sub, "line1-a", "00000000000000a5")["ok"], true);
    wait_serving(&b.plant, 5);
    // After a newer rollout, the replayed rollback would go back: refused.
    send(&sub, "line1-a", &captured);
    let state = refusal(&sub, "line1-a", "not newer than rollout");
    assert_eq!(state["transfer"], transfer.as_str(), "{state}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(serving(&b.plant, 5) && serving_files(&bundle, 5));

    // `vigil rollback` on the box goes back locally; the next central rollout is still taken.
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["rollback", "--camera", "cam1", "--config", b.config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_serving(&b.plant, 2);
    send(
        &sub,
        "line1-a",
        &rollout_of(&version_of(&bundle, &keys.path().join("v6"), 6, 0), &key, "00000000000000a6", "line1-a", false),
    );
    assert_eq!(state_of(&sub, "line1-a", "00000000000000a6")["ok"], true);
    wait_serving(&b.plant, 6);
    b.daemon.take().unwrap().stop();
}

#[test]
fn a_malformed_or_flooding_bundle_set_is_answered_without_reading_the_bundle_and_the_box_keeps_working() {
    let broker = Mosquitto::start();
    let sub = Subscriber::new(broker.port, "vigil/#");
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = fleet_key(keys.path());
    let mut b = start_box(&broker, &sub, "line1-a", &public);
    let bundle = b.plant.bundle.clone();

    // With the bundle's folder gone from disk, a refusal still names what is served: it comes
    // from the model in memory, not from reading (and hashing) the bundle again.
    let away = bundle.with_extension("away");
    std::fs::rename(&bundle, &away).unwrap();
    sub.publish("vigil/line1-a/cam1/bundle/set", false, b"{not json\nxx".to_vec());
    let state = refusal(&sub, "line1-a", "the chunk header");
    assert_eq!(state["serving"]["version"], 1, "{state}");
    std::fs::rename(&away, &bundle).unwrap();

    // A flood at QoS 0 (no in-flight window holds it back): every message is refused or
    // dropped from the full control queue and counted, and the box stays responsive.
    let flood = 3000;
    for i in 0..flood {
        sub.client
            .publish("vigil/line1-a/cam1/bundle/set", rumqttc::QoS::AtMostOnce, false, format!("junk {i}").into_bytes())
            .unwrap();
    }
    let started = Instant::now();
    assert_eq!(http_get(b.plant.http, "/healthz").0, 200);
    assert!(started.elapsed() < Duration::from_secs(1), "/healthz took {:?}", started.elapsed());
    let counted = |m: &str| {
        metric(m, "vigil_bundle_rollouts_total{camera=\"cam1\",result=\"refused\"}")
            + metric(m, "vigil_errors_total{kind=\"control_dropped\"}")
    };
    let deadline = Instant::now() + WAIT;
    let mut last = -1.0;
    loop {
        let now = counted(&b.plant.metrics());
        if now == last && now > 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "the flood was not worked off: {now}");
        last = now;
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(last <= (flood + 1) as f64, "more counted than sent: {last}");
    // The control task is free again: an honest rollout goes through.
    send(
        &sub,
        "line1-a",
        &rollout_of(&version_of(&bundle, &keys.path().join("v2"), 2, 0), &key, "00000000000000a2", "line1-a", false),
    );
    assert_eq!(state_of(&sub, "line1-a", "00000000000000a2")["ok"], true);
    wait_serving(&b.plant, 2);
    b.daemon.take().unwrap().stop();
}

/// Every file of a bundle folder, by name.
fn files(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap())
        })
        .collect()
}

#[test]
fn a_kill_at_each_step_of_an_install_leaves_the_old_or_the_new_bundle_whole() {
    use std::sync::{Arc, Mutex};
    use vigil::fleet::{Received, Receiver, Step};

    /// The rollout receiver of `config`, which has a `[fleet]`.
    fn receiver_of(config: &vigil::config::Config) -> Receiver {
        let fleet = config.fleet.as_ref().expect("a [fleet] section");
        Receiver::new(fleet, &config.device_id, &config.state_dir, &config.engine, &config.cameras)
    }
    use vigil_model::bundle::install::{Step as Swap, previous_path};

    let plant = Plant::new();
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = fleet_key(keys.path());
    let config = plant.config(&format!(
        "[fleet]\ntrusted_keys = [\"{public}\"]\n{}{}",
        mqtt_section(crate::common::mosquitto::free_port()),
        plant.folder_camera("")
    ));
    let config = vigil::config::load(&config).unwrap();
    let bundle = plant.bundle.clone();
    let incoming_left = || {
        std::fs::read_dir(bundle.parent().unwrap())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains(".incoming-"))
            .count()
    };

    // An install run through: the new bundle's files are synced before it goes in service.
    let seen = Arc::new(Mutex::new(vec![]));
    let s = seen.clone();
    let receiver = receiver_of(&config).observe(move |step| s.lock().unwrap().push(step));
    let v2 = version_of(&bundle, &keys.path().join("v2"), 2, 0);
    let mut outcome = None;
    for m in rollout_of(&v2, &key, "0000000000000002", "box1", false) {
        outcome = Some(receiver.receive("cam1", &m).unwrap());
    }
    assert!(matches!(outcome, Some(Received::Installed(_))), "{outcome:?}");
    let seen = seen.lock().unwrap().clone();
    let at = |s: Step| seen.iter().position(|&x| x == s).unwrap_or_else(|| panic!("no {s:?} in {seen:?}"));
    assert!(at(Step::Install(Swap::Synced)) < at(Step::Install(Swap::Exchanged)), "{seen:?}");
    assert!(at(Step::Journaled) < at(Step::Install(Swap::Exchanged)), "{seen:?}");
    drop(receiver);

    let steps = [
        Step::Stored,
        Step::Unpacked,
        Step::Tested,
        Step::Journaled,
        Step::Install(Swap::Synced),
        Step::Install(Swap::Exchanged),
        Step::Install(Swap::PreviousKept),
        Step::Install(Swap::OlderRemoved),
        Step::Recorded,
        Step::Cleaned,
    ];
    for (i, &kill) in steps.iter().enumerate() {
        let version = 3 + i as u32;
        let old = files(&bundle);
        let new_dir = version_of(&bundle, &keys.path().join(format!("v{version}")), version, 0);
        let new = files(&new_dir);
        let transfer = format!("{:016x}", 0x100 + i);
        let rollout = rollout_of(&new_dir, &key, &transfer, "box1", false);

        // The process dies right after `kill` (the observer stops it there: nothing after it
        // runs, no clean-up, no unwinding that would matter).
        let receiver = receiver_of(&config).observe(move |step| {
            if step == kill {
                panic!("killed after {step:?}");
            }
        });
        let (last, first) = rollout.split_last().unwrap();
        for m in first {
            assert_eq!(receiver.receive("cam1", m), Ok(Received::Stored));
        }
        let killed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| receiver.receive("cam1", last)));
        assert!(killed.is_err(), "{kill:?} was not reached");
        drop(receiver);

        // Which of the two bundles a folder holds, whole.
        let which = |dir: &Path| match files(dir) {
            f if f == old => "old",
            f if f == new => "new",
            _ => "neither",
        };

        // The restart's recovery: the served bundle is the old or the new one, whole, and
        // nothing unpacked is left lying about.
        let receiver = receiver_of(&config);
        let served = which(&bundle);
        assert_ne!(served, "neither", "after a kill at {kill:?}");
        vigil_model::bundle::Bundle::load(&bundle).unwrap();
        vigil_model::bundle::Bundle::load(previous_path(&bundle)).unwrap();
        assert_eq!(incoming_left(), 0, "after a kill at {kill:?}");
        if served == "new" && i >= 6 {
            assert_eq!(which(&previous_path(&bundle)), "old", "after a kill at {kill:?} the replaced one is previous");
        }

        // The broker delivers the unacknowledged last chunk again: the rollout completes.
        match receiver.receive("cam1", last) {
            Ok(Received::Installed(_)) => assert_eq!(served, "old", "installed twice after a kill at {kill:?}"),
            Ok(Received::Done) => assert_eq!(served, "new", "after a kill at {kill:?}"),
            other => panic!("after a kill at {kill:?}: {other:?}"),
        }
        assert_eq!(which(&bundle), "new", "after a kill at {kill:?}");
        assert_eq!(which(&previous_path(&bundle)), "old", "after a kill at {kill:?}");
        // And the same rollout once more is not taken again.
        assert_eq!(receiver.receive("cam1", &rollout[0]), Ok(Received::Done), "after a kill at {kill:?}");
    }
}
