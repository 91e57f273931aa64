//! `[[cameras]]`: one camera's source, bundle and alert overrides, their checks, and whether
//! a bundle fits the camera.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::problem::{Problems, valid_id};
use crate::scoring::Model;
use crate::source::SourceConfig;

/// One `[[cameras]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    /// Camera id in topics and alerts (letters, digits, `-`, `_`). For an MQTT source that
    /// takes the id from the topic or payload, this names the group.
    pub id: String,
    /// Model bundle folder (or `.onnx` with an embedded manifest).
    pub bundle: PathBuf,
    /// Where frames come from.
    pub source: SourceConfig,
    /// Threshold override (raw score units of the bundle).
    #[serde(default)]
    pub threshold: Option<f32>,
    /// Cooldown override.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub cooldown: Option<Duration>,
    /// Region of interest `[x, y, width, height]` in frame pixels, cropped before scoring.
    #[serde(default)]
    pub roi: Option<[u32; 4]>,
    /// The product this camera sees, for a conditional bundle (one model for several
    /// products): one of the bundle's classes (`vigil inspect` lists them). An MQTT source's
    /// `class_field` overrides it per message.
    #[serde(default)]
    pub class: Option<String>,
    /// Score only the first frame after each message on an MQTT topic (a part-present
    /// signal); other frames are skipped. Absent: every frame is scored.
    #[serde(default)]
    pub trigger: Option<crate::trigger::TriggerConfig>,
}

impl CameraConfig {
    /// Checks the values under `key` (`cameras[0]`).
    pub fn validate(&self, key: &str, has_broker: bool, p: &mut Problems) {
        if !valid_id(&self.id) {
            p.at(key, "id", format!("`{}`: use 1–64 letters, digits, `-` or `_`", self.id));
        }
        if let Some(t) = self.threshold
            && !t.is_finite()
        {
            p.at(key, "threshold", "must be a finite number");
        }
        if let Some(c) = &self.class
            && !valid_id(c.replace('.', "_").as_str())
        {
            p.at(key, "class", format!("`{}`: use letters, digits, `-`, `_` or `.`", c.escape_default()));
        }
        if let Some([_, _, w, h]) = self.roi
            && (w == 0 || h == 0)
        {
            p.at(key, "roi", "width and height must be positive: [x, y, width, height]");
        }
        self.source.validate(&format!("{key}.source"), has_broker, p);
        if let Some(t) = &self.trigger {
            t.validate(&format!("{key}.trigger"), has_broker, p);
            if let SourceConfig::Mqtt(m) = &self.source
                && (m.camera_from_topic.is_some() || m.camera_field.is_some())
            {
                p.at(
                    key,
                    "trigger",
                    "a trigger needs one camera, and this MQTT source serves a group (camera_from_topic or camera_field): give each camera its own [[cameras]] entry",
                );
            }
        }
    }

    /// Checks that its bundle and folders exist (loading the bundle is `reload::check`'s).
    pub fn preflight(&self, key: &str, p: &mut Problems) {
        if !self.bundle.exists() {
            p.at(key, "bundle", format!("{}: not found; give a bundle folder or .onnx file", self.bundle.display()));
        }
        self.source.preflight(&format!("{key}.source"), p);
    }

    /// Whether a camera's `class` fits its bundle: a conditional bundle needs a class from the
    /// camera (or from each message, with an MQTT `class_field`), one the bundle knows; a bundle
    /// of one product takes none.
    pub fn class_fits(&self, model: &Model) -> Result<(), String> {
        let m = &model.bundle.manifest;
        let per_message =
            matches!(&self.source, SourceConfig::Mqtt(s) if s.class_field.is_some() || s.class_from_topic.is_some());
        match (&self.class, &m.conditioning) {
            (Some(class), _) => m.class_index(class).map(|_| ()),
            (None, None) if per_message => Err(format!(
                "the source takes a product class from each message (class_field or class_from_topic) but bundle `{}` is not conditional; remove them, or serve a bundle trained with --conditional",
                m.name
            )),
            (None, Some(_)) if !per_message => Err(format!(
                "bundle `{}` is conditional (one model for several products); set the camera's `class` to one of {}",
                m.name,
                m.class_names().join(", ")
            )),
            _ => Ok(()),
        }
    }
}
