//! The threshold in force per camera and product: set at run time (MQTT or the page), else the
//! camera's config, else the bundle's calibrated one.

use std::sync::{Arc, Mutex};

use crate::cameras::CameraConfig;
use crate::scoring::Models;
use crate::source::SourceConfig;
use crate::state::Thresholds;

/// The key of a camera's threshold and decider state: the camera, or one class on it for a
/// conditional bundle (camera ids have no `/`, so the two never collide).
pub fn class_key(camera: &str, class: Option<&str>) -> String {
    match class {
        Some(class) => format!("{camera}/{class}"),
        None => camera.to_owned(),
    }
}

/// The threshold in force per camera (and, for a conditional bundle, per class): set at run
/// time over MQTT for the class, else for the camera, else the camera's config, else the
/// bundle's calibrated one for the class.
pub struct Policy {
    cameras: Vec<CameraConfig>,
    models: Arc<Models>,
    /// Thresholds set at run time, kept in the state folder.
    pub thresholds: Mutex<Thresholds>,
}

impl Policy {
    /// The policy over `cameras` (in `[[cameras]]` order, as `models`).
    pub fn new(cameras: Vec<CameraConfig>, models: Arc<Models>, thresholds: Thresholds) -> Policy {
        Policy { cameras, models, thresholds: Mutex::new(thresholds) }
    }

    /// The `[[cameras]]` index serving `camera`: its own entry, or the MQTT group that takes
    /// camera ids from topics or payloads.
    pub fn slot_of(&self, camera: &str) -> Option<usize> {
        self.cameras.iter().position(|c| c.id == camera).or_else(|| {
            self.cameras.iter().position(|c| {
                matches!(&c.source, SourceConfig::Mqtt(m) if m.camera_from_topic.is_some() || m.camera_field.is_some())
            })
        })
    }

    /// The threshold for frames of `class` (conditional bundles) from `camera` (served by
    /// `slot`, its current bundle) and where it comes from: `runtime`, `config` or `bundle`.
    pub fn threshold(&self, camera: &str, slot: usize, class: Option<&str>) -> (f32, &'static str) {
        let model = self.models.get(slot);
        self.threshold_with(camera, slot, &model.bundle.manifest, class)
    }

    /// As [`Self::threshold`], with `manifest` the bundle that scored the frame (which a reload
    /// may have replaced since): its class's calibration, never another bundle's.
    pub fn threshold_with(
        &self,
        camera: &str,
        slot: usize,
        manifest: &vigil_model::bundle::Manifest,
        class: Option<&str>,
    ) -> (f32, &'static str) {
        {
            let set = self.thresholds.lock().expect("thresholds lock");
            if let Some(t) = class.and_then(|k| set.get(&class_key(camera, Some(k)))) {
                return (t, "runtime");
            }
            if let Some(t) = set.get(camera) {
                return (t, "runtime");
            }
        }
        if let Some(t) = self.cameras[slot].threshold {
            return (t, "config");
        }
        let index = class.and_then(|k| manifest.class_index(k).ok());
        (manifest.calibration(index).0.value, "bundle")
    }

    /// The model `slot` serves now.
    pub fn model(&self, slot: usize) -> Arc<crate::scoring::Model> {
        self.models.get(slot)
    }

    /// The classes of the bundle `camera` is served by (empty unless conditional).
    pub fn classes(&self, camera: &str) -> Vec<String> {
        self.slot_of(camera)
            .map(|slot| self.models.get(slot).bundle.manifest.class_names().iter().map(|c| c.to_string()).collect())
            .unwrap_or_default()
    }

    /// The retained `threshold/state` of `camera`, or `None` for a camera vigil does not serve.
    /// For a conditional bundle it also lists each class's threshold and source.
    pub fn state(&self, camera: &str) -> Option<serde_json::Value> {
        let slot = self.slot_of(camera)?;
        let class = self.cameras.get(slot).filter(|c| c.id == camera).and_then(|c| c.class.clone());
        let (threshold, source) = self.threshold(camera, slot, class.as_deref());
        let model = self.models.get(slot);
        let manifest = &model.bundle.manifest;
        let index = class.as_deref().and_then(|k| manifest.class_index(k).ok());
        let mut state = serde_json::json!({
            "camera": camera,
            "threshold": threshold,
            "source": source,
            "bundle_threshold": manifest.calibration(index).0.value,
        });
        if let Some(c) = &class {
            state["class"] = c.clone().into();
        }
        if let Some(cond) = &manifest.conditioning {
            let classes: serde_json::Map<String, serde_json::Value> = cond
                .classes
                .iter()
                .map(|k| {
                    let (t, s) = self.threshold(camera, slot, Some(&k.name));
                    let v = serde_json::json!({ "threshold": t, "source": s, "bundle_threshold": k.threshold.value });
                    (k.name.clone(), v)
                })
                .collect();
            state["classes"] = classes.into();
        }
        Some(state)
    }

    /// Every camera with a state to publish: the configured ones and those with a run-time
    /// threshold (members of MQTT groups).
    pub fn cameras(&self) -> Vec<String> {
        let mut cameras: Vec<String> = self.cameras.iter().map(|c| c.id.clone()).collect();
        let set = self.thresholds.lock().expect("thresholds lock");
        cameras.extend(set.all().keys().map(|k| k.split('/').next().unwrap_or(k).to_owned()));
        cameras.sort();
        cameras.dedup();
        cameras
    }
}
