//! Frame sources: watched folders ([`folder`]) and MQTT topics ([`mqtt`]). Each hands
//! [`crate::frame::Frame`]s to the scoring queue (waiting when it is full) and learns through
//! the frame's `done` channel when to mark a file done or acknowledge a message. Each source's
//! config lives in its file; [`SourceConfig`] is the closed set of kinds.

pub mod folder;
pub mod mqtt;

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
}

impl SourceConfig {
    /// Checks the values under `key` (`cameras[0].source`); `has_broker`: whether `[mqtt]`
    /// is configured.
    pub fn validate(&self, key: &str, has_broker: bool, p: &mut Problems) {
        match self {
            SourceConfig::Folder(f) => f.validate(key, p),
            SourceConfig::Mqtt(m) => m.validate(key, has_broker, p),
        }
    }

    /// Checks what it needs on disk.
    pub fn preflight(&self, key: &str, p: &mut Problems) {
        if let SourceConfig::Folder(f) = self {
            f.preflight(key, p)
        }
    }
}
