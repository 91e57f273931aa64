//! Home Assistant MQTT discovery against a real Mosquitto: the retained device-discovery
//! payload fits the schema written from Home Assistant's documentation, each entity reads and
//! writes the topics the daemon really serves (its templates rendered as Home Assistant
//! renders them), Home Assistant's birth message brings the discovery again, and a camera
//! that left the config, or discovery turned off, is removed after a restart.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::common::mosquitto::{Mosquitto, Subscriber};
use crate::daemon::{Daemon, Plant, WAIT, mqtt_section, schema_verdicts};

const SCHEMA: &str = "schema/homeassistant-device-discovery.schema.json";
const DISCOVERY: &str = "homeassistant/device/vigil_box1/config";

/// A template rendered as Home Assistant renders it for a message: `value` is the payload,
/// `value_json` the payload parsed as JSON.
fn render(template: &Value, payload: &[u8]) -> String {
    let value = String::from_utf8_lossy(payload).into_owned();
    let value_json: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
    let template = template.as_str().unwrap_or_else(|| panic!("not a template: {template}"));
    minijinja::Environment::new()
        .render_str(template, minijinja::context! { value, value_json })
        .unwrap_or_else(|e| panic!("{template}: {e}"))
}

fn number(v: &str) -> f64 {
    v.trim().parse().unwrap_or_else(|e| panic!("`{v}` is not a number: {e}"))
}

/// `vigil.toml` with folder cameras `cameras` (each watching `<camera>/`).
fn config(plant: &Plant, port: u16, cameras: &[&str], homeassistant: bool) -> PathBuf {
    let mut body = format!(
        "{}publish_scores = true\nhomeassistant = {homeassistant}\nhomeassistant_off_delay = \"90s\"\n",
        mqtt_section(port)
    );
    for c in cameras {
        let dir = plant.path(&format!("{c}/x")).parent().unwrap().to_owned();
        body.push_str(&format!(
            "[[cameras]]\nid = \"{c}\"\nbundle = \"{}\"\nthreshold = {}\nsource = {{ type = \"folder\", path = \"{}\", settle = \"200ms\" }}\n",
            plant.bundle.display(),
            plant.threshold,
            dir.display()
        ));
    }
    plant.config(&body)
}

/// Writes a frame into `<camera>/` as a camera would: to a hidden name, then renamed.
fn drop_frame(plant: &Plant, camera: &str, name: &str, bytes: &[u8]) {
    let tmp = plant.path(&format!("{camera}/.{name}.part"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, plant.path(&format!("{camera}/{name}"))).unwrap();
}

fn topic(component: &Value, key: &str) -> String {
    component[key].as_str().unwrap_or_else(|| panic!("no {key} in {component}")).to_owned()
}

#[test]
fn home_assistant_discovers_each_camera_on_the_topics_the_daemon_serves_and_forgets_a_removed_one() {
    let plant = Plant::new();
    let broker = Mosquitto::start();
    let ha = Subscriber::new(broker.port, "homeassistant/#");
    let sub = Subscriber::new(broker.port, "vigil/#");
    let daemon = Daemon::start(&plant, &config(&plant, broker.port, &["cam1", "cam2"], true));
    sub.wait_for_text("vigil/box1/available", "online", WAIT);
    let discovery = ha.wait_for(DISCOVERY, 1, WAIT)[0].json();
    assert_eq!(schema_verdicts(SCHEMA, std::slice::from_ref(&discovery)), ["ok"], "{discovery:#}");
    let components = discovery["components"].as_object().unwrap().clone();
    assert_eq!(components.len(), 10, "{discovery:#}");
    assert_eq!(discovery["device"]["identifiers"], json!(["vigil_box1"]));

    // Availability reads vigil's own words: `online` is available, the Last-Will `offline`
    // and a clean exit's `stopped` are not; and the topic says `online` now.
    let availability = &discovery["availability"][0];
    assert_eq!(availability["topic"], "vigil/box1/available");
    let (template, up, down) =
        (&availability["value_template"], &availability["payload_available"], &availability["payload_not_available"]);
    for (word, expected) in [("online", up), ("offline", down), ("stopped", down)] {
        assert_eq!(render(template, word.as_bytes()), expected.as_str().unwrap(), "{word}");
    }
    let now = sub.on("vigil/box1/available").last().unwrap().payload.clone();
    assert_eq!(render(template, &now), up.as_str().unwrap());

    // Every camera's entities sit on that camera's topics.
    for camera in ["cam1", "cam2"] {
        for kind in ["anomaly", "score", "threshold", "snapshot"] {
            let c = &components[&format!("{camera}_{kind}")];
            for key in ["state_topic", "command_topic", "image_topic"] {
                if let Some(t) = c[key].as_str() {
                    assert!(t.starts_with(&format!("vigil/box1/{camera}/")), "{camera}_{kind}.{key}: {t}");
                }
            }
        }
    }

    // The threshold entity shows the threshold in force (retained on its state topic) ...
    let threshold = &components["cam1_threshold"];
    let states = sub.wait_for(&topic(threshold, "state_topic"), 1, WAIT);
    let shown = number(&render(&threshold["value_template"], &states[0].payload));
    assert!((shown - plant.threshold as f64).abs() < 1e-6, "{shown} vs {}", plant.threshold);
    assert!(threshold["min"].as_f64().unwrap() <= shown && shown <= threshold["max"].as_f64().unwrap());
    let cam2 = sub.wait_for(&topic(&components["cam2_threshold"], "state_topic"), 1, WAIT);
    assert!((number(&render(&threshold["value_template"], &cam2[0].payload)) - shown).abs() < 1e-6);

    // ... an anomalous frame turns the anomaly sensor on (the alert's fields as attributes),
    // updates the score sensor and brings a JPEG to the image entity.
    drop_frame(&plant, "cam1", "a.png", &plant.anomalous);
    let anomaly = &components["cam1_anomaly"];
    let alerts = sub.wait_for(&topic(anomaly, "state_topic"), 1, WAIT);
    assert_eq!(render(&anomaly["value_template"], &alerts[0].payload), anomaly["payload_on"].as_str().unwrap());
    assert_eq!(anomaly["json_attributes_topic"], anomaly["state_topic"]);
    assert_eq!(alerts[0].json()["camera"], "cam1");
    assert_eq!(anomaly["off_delay"], 90);
    let score = &components["cam1_score"];
    let scores = sub.wait_for(&topic(score, "state_topic"), 1, WAIT);
    let shown = number(&render(&score["value_template"], &scores[0].payload));
    assert!((shown - scores[0].json()["score"].as_f64().unwrap()).abs() < 1e-9);
    assert!(shown > plant.threshold as f64);
    let snapshot = &components["cam1_snapshot"];
    assert_eq!(snapshot["content_type"], "image/jpeg");
    let images = sub.wait_for(&topic(snapshot, "image_topic"), 1, WAIT);
    assert!(images[0].payload.starts_with(&[0xFF, 0xD8]), "the snapshot is a JPEG");
    // Drift: a problem sensor on the state the daemon retains per camera (tests/drift.rs).
    let drift = &components["cam1_drift"];
    assert_eq!((&drift["platform"], &drift["device_class"]), (&json!("binary_sensor"), &json!("problem")));
    assert_eq!(topic(drift, "state_topic"), "vigil/box1/cam1/drift");
    for state in ["ON", "OFF"] {
        let payload = json!({ "state": state, "shift": 0.1 }).to_string();
        assert_eq!(render(&drift["value_template"], payload.as_bytes()), state);
    }

    // A value on the threshold's command topic, as Home Assistant sends it, changes the
    // threshold: the state follows, and the same frame no longer alerts.
    sub.publish(&topic(threshold, "command_topic"), false, b"1000000".to_vec());
    let states = sub.wait_for(&topic(threshold, "state_topic"), 2, WAIT);
    assert_eq!(number(&render(&threshold["value_template"], &states[1].payload)), 1e6);
    drop_frame(&plant, "cam1", "b.png", &plant.anomalous);
    plant.wait_frames("cam1", "normal", 1.0);
    assert_eq!(sub.on(&topic(anomaly, "state_topic")).len(), 1);

    // Home Assistant restarts and says so: the discovery comes again.
    let seen = ha.on(DISCOVERY).len();
    ha.publish("homeassistant/status", false, b"online".to_vec());
    assert_eq!(ha.wait_for(DISCOVERY, seen + 1, WAIT)[seen].json(), discovery);

    // cam2 leaves the config: after the restart its entities are removed (their platform
    // alone), then the discovery comes without them, and that is what stays on the broker.
    daemon.stop();
    let seen = ha.on(DISCOVERY).len();
    let daemon = Daemon::start(&plant, &config(&plant, broker.port, &["cam1"], true));
    let sent = ha.wait_for(DISCOVERY, seen + 2, WAIT);
    let (removal, clean) = (sent[seen].json(), sent[seen + 1].json());
    assert_eq!(schema_verdicts(SCHEMA, &[removal.clone(), clean.clone()]), ["ok", "ok"]);
    for kind in ["anomaly", "score", "threshold", "snapshot"] {
        let id = format!("cam2_{kind}");
        assert_eq!(removal["components"][&id], json!({ "platform": components[&id]["platform"] }));
        assert!(clean["components"].get(&id).is_none());
        let id = format!("cam1_{kind}");
        assert_eq!(clean["components"][&id], components[&id]);
    }
    let fresh = Subscriber::new(broker.port, DISCOVERY);
    let retained = fresh.wait_for(DISCOVERY, 1, WAIT);
    assert!(retained[0].retain);
    assert_eq!(retained[0].json(), clean);

    // Discovery turned off: the device is deleted (an empty retained payload), and nothing
    // is left on the broker for Home Assistant to find.
    daemon.stop();
    let seen = ha.on(DISCOVERY).len();
    let daemon = Daemon::start(&plant, &config(&plant, broker.port, &["cam1"], false));
    assert!(ha.wait_for(DISCOVERY, seen + 1, WAIT)[seen].payload.is_empty());
    let fresh = Subscriber::new(broker.port, "homeassistant/#");
    // Retained messages come with the subscription, so before a message published after it.
    fresh.publish("homeassistant/marker", false, b"m".to_vec());
    fresh.wait_for("homeassistant/marker", 1, WAIT);
    assert!(fresh.on(DISCOVERY).is_empty(), "a discovery is still retained");
    assert!(!plant.path("state/homeassistant.json").exists());
    daemon.stop();
}

#[test]
fn the_schema_refuses_payloads_home_assistant_would_not_take() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "device_id = \"box1\"\nstate_dir = \"{}\"\n[mqtt]\nhost = \"localhost\"\npublish_scores = true\nhomeassistant = true\n\
         [[cameras]]\nid = \"cam1\"\nbundle = \"b\"\nsource = {{ type = \"folder\", path = \"f\" }}\n",
        dir.path().display()
    );
    let (cfg, problems) = vigil::config::parse_str(&text);
    assert!(problems.is_empty(), "{problems:?}");
    let good = {
        let cfg = cfg.unwrap();
        vigil::homeassistant::Discovery::new(cfg.mqtt.as_ref(), &cfg.device_id, &cfg.cameras)
    }
    .unwrap()
    .payload(&Default::default());
    let broken = |f: &dyn Fn(&mut Value)| {
        let mut v = good.clone();
        f(&mut v);
        v
    };
    let cases = [
        (
            "no origin",
            broken(&|v: &mut Value| {
                v.as_object_mut().unwrap().remove("origin");
            }),
        ),
        (
            "a number without its command topic",
            broken(&|v: &mut Value| {
                v["components"]["cam1_threshold"].as_object_mut().unwrap().remove("command_topic");
            }),
        ),
        ("a misspelt key", broken(&|v: &mut Value| v["components"]["cam1_score"]["stat_topic"] = "x/y".into())),
        (
            "an image with both topics",
            broken(&|v: &mut Value| v["components"]["cam1_snapshot"]["url_topic"] = "x/y".into()),
        ),
        ("an unknown platform", broken(&|v: &mut Value| v["components"]["cam1_score"]["platform"] = "lamp".into())),
        ("off_delay as text", broken(&|v: &mut Value| v["components"]["cam1_anomaly"]["off_delay"] = "30s".into())),
        (
            "an entity without unique_id",
            broken(&|v: &mut Value| {
                v["components"]["cam1_anomaly"].as_object_mut().unwrap().remove("unique_id");
            }),
        ),
        (
            "a device per component",
            broken(&|v: &mut Value| v["components"]["cam1_score"]["device"] = json!({ "identifiers": ["x"] })),
        ),
        ("a step finer than 0.001", broken(&|v: &mut Value| v["components"]["cam1_threshold"]["step"] = json!(0.0001))),
        (
            "a wildcard topic",
            broken(&|v: &mut Value| v["components"]["cam1_score"]["state_topic"] = "vigil/+/score".into()),
        ),
    ];
    let mut docs = vec![good.clone()];
    docs.extend(cases.iter().map(|(_, v)| v.clone()));
    let verdicts = schema_verdicts(SCHEMA, &docs);
    assert_eq!(verdicts[0], "ok", "{good:#}");
    for ((name, doc), verdict) in cases.iter().zip(&verdicts[1..]) {
        assert_ne!(verdict, "ok", "{name} passed the schema: {doc:#}");
    }
}
