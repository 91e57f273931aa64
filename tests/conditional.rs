//! Conditional bundles (one model for several products) served: the class input on both
//! engines, `vigil score --class`, and the daemon deciding each camera's frames by its class.

use std::time::Duration;

use ndarray::Array4;
use vigil_model::bundle::Bundle;
use vigil_model::engine::{self, EngineChoice, EngineError};

use crate::common::mosquitto::{Mosquitto, Subscriber, metric};
use crate::common::{conditional_bundle, engine_config, ort_library, write_png};
use crate::daemon::{Daemon, Plant, WAIT, check_schema, mqtt_section};

const CLASSES: [(&str, f32); 3] = [("calm", 1e6), ("alarm", -1e6), ("plain", 0.05)];

fn batch(seed: u64) -> Array4<f32> {
    let x = crate::common::random(&[2, 1, 32, 32], 0.0, 1.0, seed);
    x.into_dimensionality().unwrap()
}

#[test]
fn the_class_input_reaches_the_networks_and_both_engines_agree() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = conditional_bundle(&dir.path().join("b"), 32, &CLASSES);
    assert_eq!(bundle.manifest.schema_version, 3);
    let x = batch(3);
    let tract = engine::load(&bundle, &engine_config(EngineChoice::Tract)).unwrap();
    let ort = engine::load(&bundle, &engine_config(EngineChoice::Ort)).unwrap();
    assert_eq!(tract.classes(), Some(3));
    let mut by_class = vec![];
    for classes in [[0i64, 1], [1, 2], [2, 0]] {
        let (t, o) =
            (tract.run_classes(x.view(), Some(&classes)).unwrap(), ort.run_classes(x.view(), Some(&classes)).unwrap());
        for (a, b) in t.scores.iter().zip(&o.scores) {
            assert!((a - b).abs() <= 1e-4, "classes {classes:?}: tract {a}, ort {b}");
        }
        let d = t.maps.as_ref().unwrap().iter().zip(o.maps.as_ref().unwrap().iter()).map(|(a, b)| (a - b).abs());
        assert!(d.fold(0.0, f32::max) <= 1e-4);
        by_class.push(t.scores);
    }
    // The same image scores differently as another class: the label is read.
    assert!((by_class[0][0] - by_class[2][1]).abs() > 1e-4, "image 0 as class 0 and 2: {by_class:?}");
    // A batch split across tract's one-image plans keeps each image's class.
    let one = tract.run_classes(x.slice(ndarray::s![1..2, .., .., ..]), Some(&[1])).unwrap();
    assert!((one.scores[0] - by_class[0][1]).abs() <= 1e-5);
    for e in [&tract, &ort] {
        assert!(matches!(e.run(x.view()), Err(EngineError::Class(m)) if m.contains("conditional (3 classes)")));
        assert!(matches!(e.run_classes(x.view(), Some(&[0, 3])), Err(EngineError::Class(m)) if m.contains("outside")));
        assert!(matches!(e.run_classes(x.view(), Some(&[0])), Err(EngineError::Class(_))));
    }
}

#[test]
fn a_conditional_manifest_needs_schema_3_and_known_distinct_class_names() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = conditional_bundle(&dir.path().join("b"), 32, &CLASSES);
    let mut m = bundle.manifest.clone();
    m.schema_version = 2;
    assert!(m.validate().unwrap_err().problem.contains("needs schema_version 3"));
    let mut m = bundle.manifest.clone();
    m.conditioning.as_mut().unwrap().classes[1].name = "calm".into();
    assert!(m.validate().unwrap_err().problem.contains("listed twice"));
    let m = &bundle.manifest;
    assert_eq!(m.resolve_class(Some("alarm")), Ok(Some(1)));
    let unknown = m.resolve_class(Some("nope")).unwrap_err();
    assert!(unknown.contains("unknown class `nope`") && unknown.contains("calm, alarm, plain"), "{unknown}");
    assert!(m.resolve_class(None).unwrap_err().contains("conditional"));
    assert_eq!(m.calibration(Some(1)).0.value, -1e6);
    // The manifest round-trips through the bundle's files.
    let read = Bundle::load(&bundle.path).unwrap();
    assert_eq!(read.manifest.conditioning, bundle.manifest.conditioning);
}

fn vigil(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(args)
        .env("ORT_DYLIB_PATH", ort_library())
        .env_remove("VIGIL_LOG")
        .output()
        .unwrap()
}

#[test]
fn score_takes_the_class_and_decides_by_its_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = conditional_bundle(&dir.path().join("b"), 32, &CLASSES);
    let img = write_png(dir.path(), "a.png", 40, 40, false, 5);
    let (b, i) = (bundle.path.to_str().unwrap(), img.to_str().unwrap());
    let line = |class: &str| {
        let out = vigil(&["score", "--model", b, "--engine", "tract", "--class", class, i]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let (calm, alarm) = (line("calm"), line("alarm"));
    assert_eq!((calm["threshold"].as_f64(), calm["anomalous"].as_bool()), (Some(1e6), Some(false)));
    assert_eq!((alarm["threshold"].as_f64(), alarm["anomalous"].as_bool()), (Some(-1e6), Some(true)));
    assert_ne!(calm["score"], alarm["score"]);
    let none = vigil(&["score", "--model", b, i]);
    let err = String::from_utf8_lossy(&none.stderr);
    assert!(!none.status.success() && err.contains("--class") && err.contains("calm, alarm, plain"), "{err}");
    let wrong = vigil(&["score", "--model", b, "--class", "nope", i]);
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("unknown class `nope`"));
    // bench takes it too.
    let frames = dir.path().join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    write_png(&frames, "f.png", 40, 40, false, 6);
    let out =
        vigil(&["bench", "--model", b, "--frames", frames.to_str().unwrap(), "--engine", "tract", "--class", "alarm"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let first: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(first["anomalous"], 1, "{first}");
}

#[test]
fn each_camera_is_decided_by_its_class_and_an_unknown_class_is_refused_and_counted() {
    let plant = Plant::new();
    let bundle = plant.path("conditional/x").parent().unwrap().to_path_buf();
    conditional_bundle(&bundle, 32, &CLASSES);
    let broker = Mosquitto::start();
    let sub = Subscriber::new(broker.port, "vigil/#");
    let folder = |id: &str| {
        let frames = plant.path(&format!("{id}/x")).parent().unwrap().to_path_buf();
        std::fs::create_dir_all(&frames).unwrap();
        frames
    };
    let (calm, alarm) = (folder("calm-frames"), folder("alarm-frames"));
    let cfg = plant.config(&format!(
        "{}[[cameras]]\nid = \"cam-calm\"\nbundle = \"{b}\"\nclass = \"calm\"\nsource = {{ type = \"folder\", path = \"{}\", settle = \"200ms\" }}\n\
         [[cameras]]\nid = \"cam-alarm\"\nbundle = \"{b}\"\nclass = \"alarm\"\nsource = {{ type = \"folder\", path = \"{}\", settle = \"200ms\" }}\n\
         [[cameras]]\nid = \"line\"\nbundle = \"{b}\"\nclass = \"calm\"\nsource = {{ type = \"mqtt\", topic = \"json/frames\", payload = \"json\", class_field = \"product\" }}\n",
        mqtt_section(broker.port),
        calm.display(),
        alarm.display(),
        b = bundle.display(),
    ));
    let daemon = Daemon::start(&plant, &cfg);
    sub.wait_for_text("vigil/box1/available", "online", WAIT);
    std::fs::write(calm.join("a.png"), &plant.anomalous).unwrap();
    std::fs::write(alarm.join("a.png"), &plant.anomalous).unwrap();
    let a = sub.wait_for("vigil/box1/cam-alarm/anomaly", 1, WAIT)[0].json();
    assert_eq!(a["model"]["class"], "alarm");
    assert_eq!(a["threshold"].as_f64(), Some(-1e6));
    check_schema(&a);
    plant.wait_frames("cam-calm", "normal", 1.0);
    // Per message: the payload's class wins over the camera's; an unknown one is refused.
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&plant.anomalous);
    let msg = |product: &str| serde_json::json!({ "image": b64, "product": product }).to_string().into_bytes();
    sub.publish("json/frames", false, msg("alarm"));
    sub.publish("json/frames", false, msg("nope"));
    let j = sub.wait_for("vigil/box1/line/anomaly", 1, WAIT)[0].json();
    assert_eq!(j["model"]["class"], "alarm");
    plant.wait_frames("line", "rejected", 1.0);
    assert_eq!(metric(&plant.metrics(), "vigil_errors_total{kind=\"unknown_class\"}"), 1.0);
    // A threshold set for one class of one camera applies to that class only.
    let state = sub.wait_for("vigil/box1/cam-alarm/threshold/state", 1, WAIT)[0].json();
    assert_eq!(state["class"], "alarm");
    assert_eq!(state["classes"]["plain"]["bundle_threshold"].as_f64(), Some(0.05f32 as f64));
    sub.publish("vigil/box1/line/threshold/set", false, br#"{"threshold": 1e9, "class": "alarm"}"#.to_vec());
    let deadline = std::time::Instant::now() + WAIT;
    while sub.on("vigil/box1/line/threshold/state").iter().all(|m| m.json()["classes"]["alarm"]["source"] != "runtime")
    {
        assert!(std::time::Instant::now() < deadline, "no runtime state for class alarm");
        std::thread::sleep(Duration::from_millis(20));
    }
    sub.publish("json/frames", false, msg("alarm"));
    plant.wait_frames("line", "normal", 1.0);
    sub.publish("vigil/box1/line/threshold/set", false, br#"{"threshold": 1, "class": "nope"}"#.to_vec());
    let deadline = std::time::Instant::now() + WAIT;
    while metric(&plant.metrics(), "vigil_errors_total{kind=\"bad_threshold\"}") < 1.0 {
        assert!(std::time::Instant::now() < deadline, "the unknown class was not refused");
        std::thread::sleep(Duration::from_millis(20));
    }
    daemon.stop();
}

#[test]
fn validate_names_a_camera_without_a_class_for_a_conditional_bundle() {
    let plant = Plant::new();
    let bundle = plant.path("conditional/x").parent().unwrap().to_path_buf();
    conditional_bundle(&bundle, 32, &CLASSES);
    let frames = plant.path("frames/x").parent().unwrap().to_path_buf();
    std::fs::create_dir_all(&frames).unwrap();
    let camera = |class: &str| {
        format!(
            "[alerts]\nstdout = true\n[[cameras]]\nid = \"cam1\"\nbundle = \"{}\"\n{class}source = {{ type = \"folder\", path = \"{}\" }}\n",
            bundle.display(),
            frames.display()
        )
    };
    for (class, want) in [("", "set the camera's `class`"), ("class = \"nope\"\n", "unknown class `nope`")] {
        let cfg = plant.config(&camera(class));
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["validate", "--config", cfg.to_str().unwrap()])
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!out.status.success() && text.contains("cameras[0].class") && text.contains(want), "{text}");
    }
    // A plain bundle behind a source that takes a class from each message.
    let plain = format!(
        "[mqtt]\nhost = \"127.0.0.1\"\n[[cameras]]\nid = \"cam1\"\nbundle = \"{}\"\nsource = {{ type = \"mqtt\", topic = \"f/+/x\", class_from_topic = 1 }}\n",
        plant.bundle.display()
    );
    let cfg = plant.config(&plain);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["validate", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success() && text.contains("is not conditional"), "{text}");
    let cfg = plant.config(&camera("class = \"plain\"\n"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["validate", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
}
