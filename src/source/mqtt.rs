//! The MQTT source: frames published on topic filters, as raw JPEG/PNG bytes or as JSON with
//! a base64 image. The camera id comes from a topic level, a JSON field, or the config. A
//! message is acknowledged only once its frame is done (and its alert is in the outbox), so
//! with QoS 1 the broker delivers it again if vigil dies first.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use rumqttc::Publish;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::frame::{Frame, Origin, Outcome};
use crate::metrics::Metrics;
use crate::mqtt::MqttClient;
use crate::problem::{Problems, valid_id, valid_topic_filter};
use crate::shutdown::Shutdown;
use crate::topics::topic_matches;

/// `source = { type = "mqtt", ... }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttSource {
    /// Topic filter, e.g. `factory/+/camera/+/frame`; `$share/<group>/<filter>` shares the
    /// frames among the boxes subscribed with the same group (each frame scored by one).
    pub topic: String,
    /// `raw` (the payload is JPEG/PNG bytes) or `json` (`{"image": base64, ...}`).
    #[serde(default)]
    pub payload: PayloadFormat,
    /// Take the camera id from this topic level (0-based); e.g. 3 for `factory/+/camera/+/frame`.
    #[serde(default)]
    pub camera_from_topic: Option<usize>,
    /// JSON payloads: the field holding the base64 image.
    #[serde(default = "default_image_field")]
    pub image_field: String,
    /// JSON payloads: the field holding the camera id, if any.
    #[serde(default)]
    pub camera_field: Option<String>,
    /// JSON payloads: the field holding the frame time (RFC 3339 or Unix milliseconds), if any.
    #[serde(default)]
    pub time_field: Option<String>,
    /// JSON payloads: the field holding the product class (conditional bundles), if any; a
    /// message without it takes the camera's `class`.
    #[serde(default)]
    pub class_field: Option<String>,
    /// Take the product class (conditional bundles) from this topic level (0-based); e.g. 2
    /// for `factory/+/+/frame` published as `factory/line1/mono/frame`.
    #[serde(default)]
    pub class_from_topic: Option<usize>,
    /// Payloads larger than this are refused.
    #[serde(default = "super::folder::default_max_bytes")]
    pub max_bytes: u64,
    /// With `camera_from_topic` or `camera_field`: the most camera ids this group takes. Each
    /// id gets its own metric series, kept frames and state, so an id beyond this is refused
    /// (counted as `too_many_cameras`), whoever publishes it.
    #[serde(default = "default_max_cameras")]
    pub max_cameras: usize,
}

fn default_max_cameras() -> usize {
    64
}

fn default_image_field() -> String {
    "image".into()
}

/// MQTT frame payload format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    /// The image file's bytes.
    #[default]
    Raw,
    /// A JSON object with a base64 image.
    Json,
}

impl MqttSource {
    /// Checks the values under `key` (`cameras[0].source`); `has_broker`: whether `[mqtt]`
    /// is configured.
    pub fn validate(&self, key: &str, has_broker: bool, p: &mut Problems) {
        if !has_broker {
            p.add(key, "an mqtt source needs the [mqtt] broker section");
        }
        if !valid_topic_filter(&self.topic) {
            p.at(key, "topic", format!("`{}`: not a valid MQTT topic filter", self.topic));
        }
        for (name, level) in
            [("camera_from_topic", self.camera_from_topic), ("class_from_topic", self.class_from_topic)]
        {
            if let Some(n) = level
                && crate::topics::unshared(&self.topic).split('/').nth(n).is_none_or(|l| l == "#")
            {
                p.at(key, name, format!("topic `{}` has no level {n}", crate::topics::unshared(&self.topic)));
            }
        }
        if self.payload == PayloadFormat::Raw
            && (self.camera_field.is_some() || self.time_field.is_some() || self.class_field.is_some())
        {
            p.at(key, "payload", "camera_field, time_field and class_field need payload = \"json\"");
        }
        if self.max_bytes == 0 {
            p.at(key, "max_bytes", "must be positive");
        }
        if self.max_cameras == 0 {
            p.at(key, "max_cameras", "must be positive (default 64)");
        }
    }
}

/// One `[[cameras]]` entry with an MQTT source.
#[derive(Debug, Clone)]
pub struct MqttCamera {
    /// Its `[[cameras]]` index.
    pub slot: usize,
    /// Its id (the group name when the id comes from the topic or payload).
    pub id: String,
    /// The camera's product class (conditional bundles), unless a message names its own.
    pub class: Option<String>,
    /// Its config.
    pub config: MqttSource,
}

/// A message turned into a frame's parts.
#[derive(Debug, PartialEq)]
pub struct Parsed {
    /// The `[[cameras]]` index.
    pub slot: usize,
    /// The camera id.
    pub camera: String,
    /// The class named by the message, if any.
    pub class: Option<String>,
    /// The image bytes.
    pub bytes: Vec<u8>,
    /// The frame time.
    pub time: SystemTime,
}

/// Why a message was refused: `(camera or group, metric kind, reason)`.
pub type Refusal = (String, &'static str, String);

/// Parses a message for the first camera whose filter matches its topic; `None` when no
/// camera subscribed to it.
pub fn parse(cameras: &[MqttCamera], topic: &str, payload: &[u8]) -> Option<Result<Parsed, Refusal>> {
    let cam = cameras.iter().find(|c| topic_matches(&c.config.topic, topic))?;
    let cfg = &cam.config;
    let refuse = |kind, reason: String| Some(Err((cam.id.clone(), kind, reason)));
    if payload.len() as u64 > cfg.max_bytes {
        return refuse(
            "payload_too_large",
            format!("{} bytes, over the limit of {} (source.max_bytes)", payload.len(), cfg.max_bytes),
        );
    }
    let mut camera = match cfg.camera_from_topic {
        Some(level) => topic.split('/').nth(level).unwrap_or_default().to_owned(),
        None => cam.id.clone(),
    };
    let mut time = SystemTime::now();
    let mut class = cfg.class_from_topic.and_then(|level| topic.split('/').nth(level)).map(str::to_owned);
    let bytes = match cfg.payload {
        PayloadFormat::Raw => payload.to_vec(),
        PayloadFormat::Json => {
            let v: serde_json::Value = match serde_json::from_slice(payload) {
                Ok(v @ serde_json::Value::Object(_)) => v,
                Ok(_) => return refuse("bad_payload", "the JSON payload is not an object".into()),
                Err(e) => {
                    return refuse("bad_payload", format!("not JSON ({e}); the source expects payload = \"json\""));
                }
            };
            let Some(b64) = v.get(&cfg.image_field).and_then(|s| s.as_str()) else {
                return refuse("bad_payload", format!("no string field `{}` with the base64 image", cfg.image_field));
            };
            let bytes = match base64::engine::general_purpose::STANDARD.decode(b64.trim()) {
                Ok(b) => b,
                Err(e) => {
                    return refuse("bad_payload", format!("field `{}` is not valid base64 ({e})", cfg.image_field));
                }
            };
            if let Some(f) = &cfg.camera_field
                && let Some(c) = v.get(f)
            {
                match c.as_str() {
                    Some(c) => camera = c.to_owned(),
                    None => return refuse("bad_payload", format!("field `{f}` (the camera id) is not a string")),
                }
            }
            if let Some(f) = &cfg.class_field
                && let Some(c) = v.get(f)
            {
                match c.as_str() {
                    Some(c) => class = Some(c.to_owned()),
                    None => return refuse("bad_payload", format!("field `{f}` (the product class) is not a string")),
                }
            }
            if let Some(f) = &cfg.time_field
                && let Some(t) = v.get(f)
            {
                time = match (t.as_u64(), t.as_str().map(humantime::parse_rfc3339_weak)) {
                    (Some(ms), _) => UNIX_EPOCH + Duration::from_millis(ms),
                    (None, Some(Ok(t))) => t,
                    _ => {
                        return refuse("bad_payload", format!("field `{f}`: give RFC 3339 text or Unix milliseconds"));
                    }
                };
            }
            bytes
        }
    };
    if let Some(c) = &class
        && !valid_id(&c.replace('.', "_"))
    {
        return refuse(
            "bad_payload",
            format!("product class `{}` is not 1–64 letters, digits, `-`, `_` or `.`; refused", c.escape_default()),
        );
    }
    if !valid_id(&camera) {
        return refuse(
            "bad_camera_id",
            format!("camera id `{}` is not 1–64 letters, digits, `-` or `_`; refused", camera.escape_default()),
        );
    }
    Some(Ok(Parsed { slot: cam.slot, camera, class: class.or_else(|| cam.class.clone()), bytes, time }))
}

/// Turns frame messages into frames until the channel closes; each is acknowledged once done.
pub async fn run(
    cameras: Vec<MqttCamera>,
    mut messages: mpsc::Receiver<Publish>,
    frames: crate::scoring::Queue,
    mqtt: MqttClient,
    metrics: Arc<Metrics>,
    known: Vec<String>,
    mut stop: Shutdown,
) {
    let mut tasks = tokio::task::JoinSet::new();
    let mut members = Members::new(&cameras, known);
    loop {
        let p = tokio::select! {
            p = messages.recv() => match p { Some(p) => p, None => break },
            _ = stop.recv() => break,
        };
        let parsed =
            parse(&cameras, &p.topic, &p.payload).map(|r| r.and_then(|parsed| members.admit(&cameras, parsed)));
        match parsed {
            None => mqtt.ack(&p).await,
            Some(Err((camera, kind, reason))) => {
                metrics.rejected(&camera, &p.topic, kind, &reason);
                mqtt.ack(&p).await;
            }
            Some(Ok(parsed)) => {
                let (tx, rx) = oneshot::channel();
                let frame = Frame {
                    slot: parsed.slot,
                    camera: parsed.camera,
                    class: parsed.class,
                    origin: Origin::Topic(p.topic.clone()),
                    bytes: parsed.bytes,
                    time: parsed.time,
                    received: Instant::now(),
                    trigger: None,
                    done: Some(tx),
                };
                tokio::select! {
                    sent = frames.send(frame) => if sent.is_err() { break },
                    // Not acknowledged: the broker delivers it again after the restart.
                    _ = stop.recv() => break,
                }
                let b = mqtt.clone();
                tasks.spawn(async move {
                    // A frame whose alert could not be stored stays unacknowledged, and the
                    // broker is asked to deliver it again.
                    match rx.await {
                        Ok(Outcome::Retry(_)) => b.redeliver(),
                        Ok(_) => b.ack(&p).await,
                        // The daemon is stopping: the broker delivers it after the restart.
                        Err(_) => {}
                    }
                });
            }
        }
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

/// The camera ids each group has taken, bounded by its `max_cameras`.
pub struct Members {
    seen: std::collections::HashMap<usize, std::collections::HashSet<String>>,
    known: std::collections::HashSet<String>,
}

impl Members {
    /// `known`: ids with state from earlier runs (kept frames): taken again, and counted in the
    /// bound, so that restarts do not each add another `max_cameras` ids.
    pub fn new(cameras: &[MqttCamera], known: Vec<String>) -> Members {
        let groups = cameras.iter().filter(|c| c.config.camera_from_topic.is_some() || c.config.camera_field.is_some());
        let known: std::collections::HashSet<String> = known.into_iter().collect();
        let seen = groups.map(|c| (c.slot, std::collections::HashSet::new())).collect();
        Members { seen, known }
    }

    /// The frame, or its refusal when its id would take a group past `max_cameras`.
    pub fn admit(&mut self, cameras: &[MqttCamera], parsed: Parsed) -> Result<Parsed, Refusal> {
        let Some(seen) = self.seen.get_mut(&parsed.slot) else { return Ok(parsed) };
        if seen.contains(&parsed.camera) {
            return Ok(parsed);
        }
        let cam = cameras.iter().find(|c| c.slot == parsed.slot).expect("a parsed frame's camera");
        let taken = seen.len() + self.known.iter().filter(|id| !seen.contains(*id)).count();
        if !self.known.contains(&parsed.camera) && taken >= cam.config.max_cameras {
            return Err((
                cam.id.clone(),
                "too_many_cameras",
                format!(
                    "camera id `{}` would be the group's {}th; the group takes at most {} (cameras[].source.max_cameras): raise it if the line has more cameras",
                    parsed.camera.escape_default(),
                    taken + 1,
                    cam.config.max_cameras
                ),
            ));
        }
        seen.insert(parsed.camera.clone());
        Ok(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cams(payload: PayloadFormat, from_topic: Option<usize>) -> Vec<MqttCamera> {
        vec![MqttCamera {
            slot: 0,
            id: "line".into(),
            class: None,
            config: MqttSource {
                topic: "factory/+/camera/+/frame".into(),
                payload,
                camera_from_topic: from_topic,
                image_field: "image".into(),
                camera_field: Some("camera".into()),
                time_field: Some("time".into()),
                class_field: None,
                class_from_topic: None,
                max_bytes: 100,
                max_cameras: 2,
            },
        }]
    }

    #[test]
    fn a_group_takes_at_most_max_cameras_ids_counting_those_from_earlier_runs() {
        let cams = cams(PayloadFormat::Raw, Some(3));
        let frame = |id: &str| parse(&cams, &format!("factory/l1/camera/{id}/frame"), b"PNG").unwrap().unwrap();
        let mut members = Members::new(&cams, vec!["old".into()]);
        assert!(members.admit(&cams, frame("c1")).is_ok());
        let (group, kind, reason) = members.admit(&cams, frame("c2")).unwrap_err();
        assert_eq!((group.as_str(), kind), ("line", "too_many_cameras"));
        assert!(reason.contains("max_cameras"), "{reason}");
        assert!(members.admit(&cams, frame("c1")).is_ok(), "a member already taken stays");
        assert!(members.admit(&cams, frame("old")).is_ok(), "so does one from an earlier run");
        assert!(members.admit(&cams, frame("c3")).is_err());
    }

    #[test]
    fn raw_and_json_payloads_become_frames() {
        let raw = parse(&cams(PayloadFormat::Raw, Some(3)), "factory/l1/camera/c7/frame", b"PNG").unwrap().unwrap();
        assert_eq!((raw.camera.as_str(), raw.bytes.as_slice()), ("c7", &b"PNG"[..]));
        let json = br#"{"image":"UE5H","camera":"c9","time":1000}"#;
        let j = parse(&cams(PayloadFormat::Json, None), "factory/l1/camera/x/frame", json).unwrap().unwrap();
        assert_eq!((j.camera.as_str(), j.bytes.as_slice()), ("c9", &b"PNG"[..]));
        assert_eq!(j.time, UNIX_EPOCH + Duration::from_secs(1));
        assert!(parse(&cams(PayloadFormat::Raw, None), "other/topic", b"x").is_none());
    }

    #[test]
    fn a_shared_subscription_takes_its_frames_and_counts_levels_in_its_inner_filter() {
        let mut shared = cams(PayloadFormat::Raw, Some(3));
        shared[0].config.topic = "$share/boxes/factory/+/camera/+/frame".into();
        (shared[0].config.camera_field, shared[0].config.time_field) = (None, None);
        let f = parse(&shared, "factory/l1/camera/c7/frame", b"PNG").unwrap().unwrap();
        assert_eq!(f.camera, "c7");
        let mut p = Problems::default();
        shared[0].config.validate("cameras[0].source", true, &mut p);
        assert!(p.into_vec().is_empty());
    }

    #[test]
    fn bad_messages_are_refused_with_a_kind() {
        let kind = |c: &[MqttCamera], topic: &str, p: &[u8]| parse(c, topic, p).unwrap().unwrap_err().1;
        let t = "factory/l1/camera/c7/frame";
        assert_eq!(kind(&cams(PayloadFormat::Raw, None), t, &[0; 101]), "payload_too_large");
        assert_eq!(kind(&cams(PayloadFormat::Json, None), t, b"{nope"), "bad_payload");
        assert_eq!(kind(&cams(PayloadFormat::Json, None), t, br#"{"image":"%%%"}"#), "bad_payload");
        assert_eq!(
            kind(&cams(PayloadFormat::Json, None), t, br#"{"image":"UE5H","camera":"../etc"}"#),
            "bad_camera_id"
        );
        assert_eq!(kind(&cams(PayloadFormat::Raw, Some(3)), "factory/l1/camera/..%2f/frame", b"x"), "bad_camera_id");
        let mut c = cams(PayloadFormat::Json, None);
        c[0].config.class_field = Some("product".into());
        assert_eq!(kind(&c, t, br#"{"image":"UE5H","product":7}"#), "bad_payload");
        assert_eq!(kind(&c, t, br#"{"image":"UE5H","product":"a b\n"}"#), "bad_payload");
    }

    #[test]
    fn the_class_comes_from_the_message_else_from_the_camera() {
        let t = "factory/mono/camera/c7/frame";
        let mut c = cams(PayloadFormat::Json, None);
        c[0].class = Some("poly".into());
        let class = |c: &[MqttCamera], p: &[u8]| parse(c, t, p).unwrap().unwrap().class;
        assert_eq!(class(&c, br#"{"image":"UE5H"}"#).as_deref(), Some("poly"));
        c[0].config.class_field = Some("product".into());
        assert_eq!(class(&c, br#"{"image":"UE5H","product":"thin"}"#).as_deref(), Some("thin"));
        assert_eq!(class(&c, br#"{"image":"UE5H"}"#).as_deref(), Some("poly"));
        c[0].config.class_field = None;
        c[0].config.class_from_topic = Some(1);
        assert_eq!(class(&c, br#"{"image":"UE5H"}"#).as_deref(), Some("mono"));
        let mut p = Problems::default();
        c[0].config.class_from_topic = Some(9);
        c[0].config.validate("cameras[0].source", true, &mut p);
        assert!(format!("{p:?}").contains("class_from_topic"), "{p:?}");
    }
}
