//! Home Assistant MQTT discovery (`mqtt.homeassistant`): one retained device-discovery message
//! that shows this box as a Home Assistant device with five entities per camera (anomaly,
//! last score, threshold, snapshot, drift), sent after each connect and again whenever Home
//! Assistant announces itself on `<discovery prefix>/status`. The entities of a camera that
//! left the config are removed as Home Assistant documents it, across restarts too: what was
//! announced is kept in `<state_dir>/homeassistant.json`.
//!
//! The payload follows Home Assistant's device-based discovery (since 2024.11) with full key
//! names; `schema/homeassistant-device-discovery.schema.json` is that schema, written from
//! Home Assistant's documentation, and the tests hold the payload to it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::cameras::CameraConfig;
use crate::mqtt::{MqttClient, MqttConfig};
use crate::source::SourceConfig;
use crate::topics::{OFFLINE, ONLINE, Topics};

/// Home Assistant's birth message on `<discovery prefix>/status`.
const BIRTH: &[u8] = b"online";

/// Where the announced components are kept, in the state folder.
const STATE_FILE: &str = "homeassistant.json";

/// The threshold entity's range. Home Assistant drops a state outside it, so it must hold any
/// bundle's raw scores (a discriminator's are negative) and the "never alert" values operators
/// set, such as 1e9.
const THRESHOLD_LIMIT: f64 = 1e9;

/// The finest step Home Assistant's number entity takes.
const THRESHOLD_STEP: f64 = 0.001;

/// The entities of each camera: the component id's suffix and Home Assistant's platform.
const KINDS: [(&str, &str); 5] = [
    ("anomaly", "binary_sensor"),
    ("score", "sensor"),
    ("threshold", "number"),
    ("snapshot", "image"),
    ("drift", "binary_sensor"),
];

/// The cameras announced: those with an id of their own. An MQTT group that takes camera
/// ids from topics or payloads has no fixed topics to announce.
pub fn announced_cameras(cameras: &[CameraConfig]) -> Vec<String> {
    cameras
        .iter()
        .filter(|c| match &c.source {
            SourceConfig::Mqtt(m) => m.camera_from_topic.is_none() && m.camera_field.is_none(),
            SourceConfig::Folder(_) | SourceConfig::Rtsp(_) | SourceConfig::V4l2(_) => true,
        })
        .map(|c| c.id.clone())
        .collect()
}

/// One retained message for Home Assistant (an empty payload deletes what the topic held).
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The discovery topic.
    pub topic: String,
    /// The discovery payload.
    pub payload: Vec<u8>,
}

/// The discovery message of one box.
#[derive(Debug, Clone)]
pub struct Discovery {
    topics: Topics,
    device: String,
    prefix: String,
    cameras: Vec<String>,
    off_delay: Duration,
}

impl Discovery {
    /// The discovery of box `device_id`, when `mqtt.homeassistant` is on and a camera has an id of
    /// its own.
    pub fn new(mqtt: Option<&MqttConfig>, device_id: &str, cameras: &[CameraConfig]) -> Option<Discovery> {
        let m = mqtt.filter(|m| m.homeassistant)?;
        let cameras = announced_cameras(cameras);
        if cameras.is_empty() {
            tracing::warn!(
                "mqtt.homeassistant: no camera has an id of its own (MQTT groups name theirs per message): nothing to announce"
            );
            return None;
        }
        Some(Discovery {
            topics: Topics::new(&m.topic_prefix, device_id),
            device: device_id.to_owned(),
            prefix: m.homeassistant_prefix.trim_end_matches('/').to_owned(),
            cameras,
            off_delay: m.homeassistant_off_delay,
        })
    }

    /// The device's id in Home Assistant: the discovery topic's object id and the device's
    /// identifier.
    pub fn object_id(&self) -> String {
        format!("vigil_{}", self.device)
    }

    /// `<discovery prefix>/device/vigil_<device>/config`.
    pub fn topic(&self) -> String {
        format!("{}/device/{}/config", self.prefix, self.object_id())
    }

    /// Where Home Assistant says `online` when it (re)starts.
    pub fn status_topic(&self) -> String {
        format!("{}/status", self.prefix)
    }

    /// Every component announced: id and platform.
    fn platforms(&self) -> BTreeMap<String, String> {
        self.cameras
            .iter()
            .flat_map(|c| KINDS.iter().map(move |(kind, platform)| (format!("{c}_{kind}"), platform.to_string())))
            .collect()
    }

    /// The component of `kind` for `camera`.
    fn component(&self, camera: &str, kind: &str, platform: &str) -> Value {
        let topic = |leaf| self.topics.camera(camera, leaf);
        let mut c = match kind {
            // Alerts carry no "off": each one turns the sensor on, and Home Assistant turns it
            // off after `off_delay` without another. The alert's fields become attributes.
            "anomaly" => json!({
                "state_topic": topic("anomaly"),
                "value_template": "{{ 'ON' }}",
                "payload_on": "ON",
                "off_delay": self.off_delay.as_secs(),
                "device_class": "problem",
                "json_attributes_topic": topic("anomaly"),
            }),
            "score" => json!({
                "state_topic": topic("score"),
                "value_template": "{{ value_json.score }}",
                "state_class": "measurement",
            }),
            "threshold" => json!({
                "command_topic": topic("threshold/set"),
                "state_topic": topic("threshold/state"),
                "value_template": "{{ value_json.threshold }}",
                "min": -THRESHOLD_LIMIT,
                "max": THRESHOLD_LIMIT,
                "step": THRESHOLD_STEP,
                "mode": "box",
                "entity_category": "config",
            }),
            "snapshot" => json!({ "image_topic": topic("snapshot"), "content_type": "image/jpeg" }),
            // On while the camera's scores no longer look like its calibration (`[drift]`).
            "drift" => json!({
                "state_topic": topic("drift"),
                "value_template": "{{ value_json.state }}",
                "payload_on": "ON",
                "payload_off": "OFF",
                "device_class": "problem",
                "entity_category": "diagnostic",
                "json_attributes_topic": topic("drift"),
            }),
            _ => unreachable!("KINDS lists every kind"),
        };
        c["platform"] = platform.into();
        c["name"] = format!("{camera} {kind}").into();
        c["unique_id"] = format!("{}_{camera}_{kind}", self.object_id()).into();
        c
    }

    /// The discovery payload; `removed` (component id and platform) are announced with their
    /// platform alone, which is how Home Assistant is told to delete them.
    pub fn payload(&self, removed: &BTreeMap<String, String>) -> Value {
        let mut components = serde_json::Map::new();
        for camera in &self.cameras {
            for (kind, platform) in KINDS {
                components.insert(format!("{camera}_{kind}"), self.component(camera, kind, platform));
            }
        }
        for (id, platform) in removed {
            components.insert(id.clone(), json!({ "platform": platform }));
        }
        json!({
            "device": {
                "identifiers": [self.object_id()],
                "name": self.device,
                "manufacturer": "vigil",
                "model": "vigil anomaly detection",
                "sw_version": crate::VERSION,
            },
            "origin": { "name": "vigil", "sw_version": crate::VERSION },
            // vigil's availability has three words; Home Assistant knows two, so `stopped`
            // (a clean exit) is mapped to unavailable as `offline` (its Last-Will) is.
            "availability": [{
                "topic": self.topics.available(),
                "value_template": format!("{{{{ '{ONLINE}' if value == '{ONLINE}' else '{OFFLINE}' }}}}"),
                "payload_available": ONLINE,
                "payload_not_available": OFFLINE,
            }],
            // Threshold changes go to `threshold/set` at QoS 1, as vigil subscribes to it.
            "qos": 1,
            "components": components,
        })
    }

    fn message(&self, removed: &BTreeMap<String, String>) -> Message {
        Message { topic: self.topic(), payload: self.payload(removed).to_string().into_bytes() }
    }
}

/// What was announced, as kept in the state folder.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Announced {
    /// The discovery topic.
    topic: String,
    /// Component id -> platform.
    components: BTreeMap<String, String>,
}

/// The daemon's side of discovery: what to publish after a connect and on Home Assistant's
/// birth message, and the record of what was announced.
#[derive(Debug)]
pub struct Announcer {
    discovery: Option<Discovery>,
    state: PathBuf,
    /// What an earlier run announced, until the first connect has dealt with it.
    before: Mutex<Option<Announced>>,
}

impl Announcer {
    /// The announcer of box `device_id`'s `cameras`, or `None` when Home Assistant is off and nothing was announced
    /// before. Reads `<state_dir>/homeassistant.json` (one that cannot be read is moved aside:
    /// what it announced is then not removed, which only leaves stale entities).
    pub fn new(
        mqtt: Option<&MqttConfig>,
        device_id: &str,
        cameras: &[CameraConfig],
        state_dir: &Path,
        metrics: &crate::metrics::Metrics,
    ) -> anyhow::Result<Option<Announcer>> {
        let state = state_dir.join(STATE_FILE);
        let before = crate::state::read_or_set_aside(&state, metrics, "record of announced entities", |_| Ok(()));
        let discovery = Discovery::new(mqtt, device_id, cameras);
        if discovery.is_none() && before.is_none() {
            return Ok(None);
        }
        Ok(Some(Announcer { discovery, state, before: Mutex::new(before) }))
    }

    /// Home Assistant's status topic, to subscribe to (at QoS 0: its birth message is).
    pub fn status_topic(&self) -> Option<String> {
        self.discovery.as_ref().map(Discovery::status_topic)
    }

    /// The messages after a connect. The first time, what an earlier run announced and this
    /// config no longer has comes first: its components with their platform alone, then the
    /// discovery without them, as Home Assistant's documentation asks; or, for another topic
    /// (prefix or device renamed, discovery turned off), an empty payload that deletes it.
    /// What is announced is then recorded, as the messages are handed to the connection.
    pub fn on_connect(&self) -> Vec<Message> {
        let mut out = vec![];
        let before = self.before.lock().expect("announcer lock").take();
        if let Some(before) = &before {
            match &self.discovery {
                Some(d) if d.topic() == before.topic => {
                    let now = d.platforms();
                    let removed: BTreeMap<String, String> = before
                        .components
                        .iter()
                        .filter(|(id, _)| !now.contains_key(*id))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    if !removed.is_empty() {
                        tracing::info!(
                            "Home Assistant: removing {} entities of cameras no longer configured",
                            removed.len()
                        );
                        out.push(d.message(&removed));
                    }
                }
                _ => {
                    tracing::info!("Home Assistant: removing the device announced on {}", before.topic);
                    out.push(Message { topic: before.topic.clone(), payload: vec![] });
                }
            }
        }
        out.extend(self.discovery.as_ref().map(|d| d.message(&BTreeMap::new())));
        if before.is_some() || self.discovery.is_some() {
            let now = self.discovery.as_ref().map(|d| Announced { topic: d.topic(), components: d.platforms() });
            if let Err(e) = save(&self.state, now.as_ref()) {
                tracing::warn!(
                    "Home Assistant: {e:#}; entities of a camera removed from the config later will stay in Home Assistant until deleted there"
                );
            }
        }
        out
    }

    /// The messages for `payload` on Home Assistant's status topic: the discovery again when
    /// Home Assistant comes online (it forgets discovered entities when it restarts).
    pub fn on_status(&self, payload: &[u8]) -> Vec<Message> {
        match &self.discovery {
            Some(d) if payload == BIRTH => vec![d.message(&BTreeMap::new())],
            _ => vec![],
        }
    }

    /// Whether `topic` is Home Assistant's status topic.
    pub fn is_status(&self, topic: &str) -> bool {
        self.discovery.as_ref().is_some_and(|d| d.status_topic() == topic)
    }

    /// Subscribes to Home Assistant's status and publishes what a connect calls for (QoS 1,
    /// retained, counted as pending so a stop waits for them).
    pub async fn connected(&self, mqtt: &MqttClient) {
        if let Some(t) = self.status_topic() {
            mqtt.subscribe_qos0(t).await;
        }
        for m in self.on_connect() {
            let _ = mqtt.publish(m.topic, true, m.payload).await;
        }
    }

    /// Answers a message on Home Assistant's status topic.
    pub async fn status(&self, payload: &[u8], mqtt: &MqttClient) {
        for m in self.on_status(payload) {
            tracing::info!("Home Assistant came online: announcing this box again");
            let _ = mqtt.publish(m.topic, true, m.payload).await;
        }
    }
}

/// Writes (or, with nothing announced, deletes) the record, atomically.
fn save(path: &Path, announced: Option<&Announced>) -> anyhow::Result<()> {
    let Some(a) = announced else {
        return match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", path.display()))
            }
            _ => Ok(()),
        };
    };
    vigil_model::fsio::write_atomic(path, &serde_json::to_vec_pretty(a)?).map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::problem::Problems;

    fn discovery(c: &Config) -> Option<Discovery> {
        Discovery::new(c.mqtt.as_ref(), &c.device_id, &c.cameras)
    }

    fn announcer(c: &Config, metrics: &crate::metrics::Metrics) -> anyhow::Result<Option<Announcer>> {
        Announcer::new(c.mqtt.as_ref(), &c.device_id, &c.cameras, &c.state_dir, metrics)
    }

    fn config(state: &Path, cameras: &[&str], homeassistant: bool) -> Config {
        let mut text = format!(
            "device_id = \"box1\"\nstate_dir = \"{}\"\n[mqtt]\nhost = \"localhost\"\npublish_scores = true\nhomeassistant = {homeassistant}\nhomeassistant_off_delay = \"45s\"\n",
            state.display()
        );
        for c in cameras {
            text.push_str(&format!(
                "[[cameras]]\nid = \"{c}\"\nbundle = \"b\"\nsource = {{ type = \"folder\", path = \"/f/{c}\" }}\n"
            ));
        }
        text.push_str(
            "[[cameras]]\nid = \"group\"\nbundle = \"b\"\nsource = { type = \"mqtt\", topic = \"f/+/frame\", camera_from_topic = 1 }\n",
        );
        let (cfg, problems) = crate::config::parse_str(&text);
        assert!(problems.is_empty(), "{problems:?}");
        cfg.unwrap()
    }

    fn json(m: &Message) -> Value {
        serde_json::from_slice(&m.payload).unwrap()
    }

    #[test]
    fn the_payload_has_five_components_per_camera_on_the_daemons_topics() {
        let dir = tempfile::tempdir().unwrap();
        let d = discovery(&config(dir.path(), &["cam1", "cam-2"], true)).unwrap();
        assert_eq!(d.topic(), "homeassistant/device/vigil_box1/config");
        assert_eq!(d.status_topic(), "homeassistant/status");
        let p = d.payload(&BTreeMap::new());
        assert_eq!(p["device"]["identifiers"], json!(["vigil_box1"]));
        assert_eq!(p["origin"]["name"], "vigil");
        assert_eq!(p["availability"][0]["topic"], "vigil/box1/available");
        let c = p["components"].as_object().unwrap();
        // The MQTT group names its cameras per message: not announced.
        assert_eq!(c.len(), 10, "{p}");
        let a = &c["cam-2_anomaly"];
        assert_eq!(
            (&a["platform"], &a["state_topic"], &a["off_delay"], &a["device_class"]),
            (&json!("binary_sensor"), &json!("vigil/box1/cam-2/anomaly"), &json!(45), &json!("problem"))
        );
        assert_eq!(c["cam1_score"]["state_topic"], "vigil/box1/cam1/score");
        assert_eq!(c["cam1_threshold"]["command_topic"], "vigil/box1/cam1/threshold/set");
        assert_eq!(c["cam1_threshold"]["state_topic"], "vigil/box1/cam1/threshold/state");
        assert_eq!(c["cam1_snapshot"]["image_topic"], "vigil/box1/cam1/snapshot");
        assert_eq!(c["cam1_drift"]["state_topic"], "vigil/box1/cam1/drift");
        let mut ids: Vec<&str> = c.values().map(|v| v["unique_id"].as_str().unwrap()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 10);
        assert!(ids.contains(&"vigil_box1_cam1_threshold"));
    }

    #[test]
    fn a_camera_that_left_the_config_is_removed_once_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let first = announcer(&config(dir.path(), &["cam1", "cam2"], true), &crate::metrics::Metrics::default())
            .unwrap()
            .unwrap();
        let sent = first.on_connect();
        assert_eq!(sent.len(), 1);
        assert_eq!(json(&sent[0])["components"].as_object().unwrap().len(), 10);
        // Home Assistant restarts: the discovery again; anything else on its status topic: nothing.
        assert_eq!(first.on_status(b"online"), sent);
        assert!(first.on_status(b"offline").is_empty());
        assert!(first.is_status("homeassistant/status"));

        let second =
            announcer(&config(dir.path(), &["cam1"], true), &crate::metrics::Metrics::default()).unwrap().unwrap();
        let sent = second.on_connect();
        assert_eq!(sent.len(), 2, "the removal, then the discovery without it");
        let removal = json(&sent[0]);
        assert_eq!(removal["components"]["cam2_score"], json!({ "platform": "sensor" }));
        assert_eq!(removal["components"]["cam1_score"]["platform"], "sensor");
        let clean = json(&sent[1]);
        assert_eq!(clean["components"].as_object().unwrap().len(), 5);
        assert!(clean["components"].get("cam2_score").is_none());
        // A reconnect announces without removing again.
        assert_eq!(second.on_connect().len(), 1);

        // Discovery turned off: the device is deleted with an empty payload, once.
        let off =
            announcer(&config(dir.path(), &["cam1"], false), &crate::metrics::Metrics::default()).unwrap().unwrap();
        assert!(off.status_topic().is_none());
        let sent = off.on_connect();
        assert_eq!(sent, [Message { topic: "homeassistant/device/vigil_box1/config".into(), payload: vec![] }]);
        assert!(off.on_connect().is_empty());
        assert!(
            announcer(&config(dir.path(), &["cam1"], false), &crate::metrics::Metrics::default()).unwrap().is_none()
        );
    }

    #[test]
    fn home_assistant_needs_published_scores_and_a_topic_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path(), &["cam1"], true);
        let m = cfg.mqtt.as_mut().unwrap();
        m.publish_scores = false;
        m.homeassistant_prefix = "ha/#".into();
        m.homeassistant_off_delay = Duration::from_millis(200);
        let mut p = Problems::default();
        m.validate(&mut p);
        let keys: Vec<String> = p.into_vec().into_iter().map(|p| p.key).filter(|k| k != "mqtt.topic_prefix").collect();
        assert_eq!(keys, ["mqtt.homeassistant_prefix", "mqtt.homeassistant_off_delay", "mqtt.publish_scores"]);
    }
}
