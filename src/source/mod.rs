//! Frame sources: watched folders ([`folder`]) and MQTT topics ([`mqtt`]), which hand
//! [`crate::frame::Frame`]s to the scoring queue (waiting when it is full) and learn through
//! the frame's `done` channel when to mark a file done or acknowledge a message; and live
//! cameras, RTSP streams ([`rtsp`]) and V4L2 devices ([`v4l2`]), sampled at a rate and never
//! waiting ([`camera`]). Each source's config lives in its file; [`SourceConfig`] is the closed
//! set of kinds.

pub mod camera;
pub mod folder;
pub mod h264;
pub mod mqtt;
pub mod pixels;
pub mod rtsp;
pub mod v4l2;

use serde::{Deserialize, Serialize};

use crate::problem::Problems;

/// A camera's frame source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceConfig {
    /// Image files written into a folder.
    Folder(folder::FolderSource),
    /// Image payloads published on MQTT topics (of the `[mqtt]` broker).
    Mqtt(mqtt::MqttSource),
    /// An IP camera's H.264 stream over RTSP.
    Rtsp(rtsp::RtspSource),
    /// A USB (UVC) or other Video4Linux capture device.
    V4l2(v4l2::V4l2Source),
}

impl SourceConfig {
    /// Checks the values under `key` (`cameras[0].source`); `has_broker`: whether `[mqtt]`
    /// is configured.
    pub fn validate(&self, key: &str, has_broker: bool, p: &mut Problems) {
        match self {
            SourceConfig::Folder(f) => f.validate(key, p),
            SourceConfig::Mqtt(m) => m.validate(key, has_broker, p),
            SourceConfig::Rtsp(r) => r.validate(key, p),
            SourceConfig::V4l2(v) => v.validate(key, p),
        }
    }

    /// Checks what it needs on disk.
    pub fn preflight(&self, key: &str, p: &mut Problems) {
        match self {
            SourceConfig::Folder(f) => f.preflight(key, p),
            SourceConfig::Rtsp(r) => r.preflight(key, p),
            SourceConfig::Mqtt(_) | SourceConfig::V4l2(_) => {}
        }
    }
}
