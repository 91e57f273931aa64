//! Part-present triggers through a real daemon and a real Mosquitto: only the frame after a
//! trigger is scored and its alert carries the trigger's id; frames with no trigger are
//! skipped (and done); a trigger no frame follows is counted as missed.

use std::time::{Duration, Instant};

use crate::common::mosquitto::{Mosquitto, Subscriber, metric};
use crate::daemon::{Daemon, Plant, WAIT, check_schema, mqtt_section};

const TRIGGER: &str = "line1/station3/part_present";

fn wait_metric(plant: &Plant, key: &str, n: f64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let m = plant.metrics();
        if metric(&m, key) >= n {
            return;
        }
        assert!(Instant::now() < deadline, "waited for {n} of {key}:\n{m}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn only_the_frame_after_a_trigger_is_scored_and_its_alert_carries_the_trigger_id() {
    let plant = Plant::new();
    let broker = Mosquitto::start();
    let sub = Subscriber::new(broker.port, "vigil/#");
    // A long timeout: on a loaded machine a frame may take a while to settle and be read.
    let camera = plant.folder_camera("") + "trigger = { mqtt = \"line1/+/part_present\", timeout = \"20s\" }\n";
    let cfg = plant.config(&format!("{}{camera}", mqtt_section(broker.port)));
    let daemon = Daemon::start(&plant, &cfg);
    // Subscriptions are made before `online` is published.
    sub.wait_for_text("vigil/box1/available", "online", WAIT);

    // No trigger: the frame is skipped, counted, and done (not scored later either).
    let skipped = plant.drop_frame("before.png", &plant.anomalous);
    wait_metric(&plant, "vigil_frames_untriggered_total{camera=\"cam1\"}", 1.0);
    assert!(skipped.exists(), "a skipped file is left where it is (after = keep)");

    // A trigger with an id, then the part's frame: scored, and the alert names the trigger.
    // The camera writes its frame once vigil has the signal (a part-present signal comes
    // before the picture of the part).
    sub.publish(TRIGGER, false, br#"{"id": "part-17", "station": 3}"#.to_vec());
    wait_metric(&plant, "vigil_triggers_pending{camera=\"cam1\"}", 1.0);
    plant.drop_frame("part17.png", &plant.anomalous);
    let alert = sub.wait_for("vigil/box1/cam1/anomaly", 1, WAIT)[0].json();
    assert_eq!(alert["trigger"], "part-17", "{alert}");
    assert!(alert["source"].as_str().unwrap().ends_with("part17.png"), "{alert}");
    check_schema(&alert);

    // One trigger lets one frame through: the next one is skipped again.
    plant.drop_frame("after.png", &plant.anomalous);
    wait_metric(&plant, "vigil_frames_untriggered_total{camera=\"cam1\"}", 2.0);

    // A payload that is not JSON is refused as such (counted), but the part is inspected.
    sub.publish(TRIGGER, false, b"part 18".to_vec());
    wait_metric(&plant, "vigil_triggers_pending{camera=\"cam1\"}", 1.0);
    plant.drop_frame("part18.png", &plant.normal);
    plant.wait_frames("cam1", "normal", 1.0);
    let m = plant.metrics();
    assert_eq!(metric(&m, "vigil_errors_total{kind=\"bad_trigger\"}"), 1.0, "{m}");
    assert_eq!(metric(&m, "vigil_triggers_total{camera=\"cam1\",result=\"scored\"}"), 2.0, "{m}");
    assert_eq!(metric(&m, "vigil_frames_total{camera=\"cam1\",result=\"anomalous\"}"), 1.0, "{m}");
    assert_eq!(sub.on("vigil/box1/cam1/anomaly").len(), 1, "skipped frames never alert");
    // A retained message is an old signal, not a part: it arms nothing.
    sub.publish("line1/station9/part_present", true, vec![]);
    daemon.stop();

    // After a restart (short timeout now): the skipped files were done, so none is scored
    // again, and the retained signal arms nothing; a trigger that no frame follows within
    // the timeout is counted as missed.
    let text = std::fs::read_to_string(&cfg).unwrap().replace("timeout = \"20s\"", "timeout = \"300ms\"");
    std::fs::write(&cfg, text).unwrap();
    let daemon = Daemon::start(&plant, &cfg);
    sub.wait_for("vigil/box1/available", 3, WAIT);
    sub.publish(TRIGGER, false, vec![]);
    wait_metric(&plant, "vigil_triggers_total{camera=\"cam1\",result=\"missed\"}", 1.0);
    let m = plant.metrics();
    assert_eq!(metric(&m, "vigil_frames_untriggered_total{camera=\"cam1\"}"), 0.0, "{m}");
    assert_eq!(
        metric(&m, "vigil_triggers_total{camera=\"cam1\",result=\"missed\"}"),
        1.0,
        "only the live trigger: {m}"
    );
    daemon.stop();
}

#[test]
fn a_trigger_needs_the_broker_and_a_valid_topic() {
    let plant = Plant::new();
    let camera = plant.folder_camera("") + "trigger = { mqtt = \"line1/#/x\", timeout = \"0s\" }\n";
    let cfg = plant.config(&camera);
    let problems = vigil::config::load(&cfg).unwrap().check_values();
    let text = problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n");
    assert!(text.contains("cameras[0].trigger: a trigger needs the [mqtt] broker section"), "{text}");
    assert!(text.contains("cameras[0].trigger.mqtt: `line1/#/x`: not a valid MQTT topic filter"), "{text}");
    assert!(text.contains("cameras[0].trigger.timeout: must be positive"), "{text}");

    // A trigger topic that frame or control topics also match would take their messages.
    let overlapping =
        "[[cameras]]\nid = \"cam2\"\nbundle = \"b\"\nsource = { type = \"mqtt\", topic = \"line1/+/frame\" }\n";
    let camera = plant.folder_camera("") + "trigger = { mqtt = \"line1/#\" }\n" + overlapping;
    let cfg = plant.config(&format!("{}{camera}", mqtt_section(1883)));
    let problems = vigil::config::load(&cfg).unwrap().check_values();
    let text = problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n");
    assert!(text.contains("cameras[0].trigger.mqtt: `line1/#` overlaps `line1/+/frame`"), "{text}");
    let camera = plant.folder_camera("") + "trigger = { mqtt = \"vigil/box1/cam1/part\" }\n";
    let cfg = plant.config(&format!("{}{camera}", mqtt_section(1883)));
    let problems = vigil::config::load(&cfg).unwrap().check_values();
    assert!(problems.iter().any(|p| p.to_string().contains("overlaps `vigil/box1/#`")), "{problems:?}");
}
