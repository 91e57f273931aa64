//! `[fleet]`: the keys this box trusts for bundle rollouts, and the bounds on a transfer.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::package;
use crate::problem::Problems;

/// `[fleet]`: who may roll bundles out to this box.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// Ed25519 public keys (base64, as `vigil keygen` prints them) whose signed bundles this
    /// box installs; a bundle signed by any other key is refused.
    pub trusted_keys: Vec<String>,
    /// Bundles larger than this are refused before anything is stored.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// A transfer with no new chunk for this long is discarded (a publisher that died).
    #[serde(default = "default_transfer_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub transfer_timeout: Duration,
}

fn default_max_bytes() -> u64 {
    512 << 20
}
fn default_transfer_timeout() -> Duration {
    Duration::from_secs(3600)
}

impl FleetConfig {
    /// Checks the values under `fleet`.
    pub fn validate(&self, has_broker: bool, p: &mut Problems) {
        if !has_broker {
            p.add("fleet", "rollout over MQTT needs the [mqtt] broker section");
        }
        if self.trusted_keys.is_empty() {
            p.at("fleet", "trusted_keys", "empty: add the public key `vigil keygen` printed, or remove [fleet]");
        }
        for (i, k) in self.trusted_keys.iter().enumerate() {
            if let Err(e) = package::parse_public_key(k) {
                p.at("fleet", &format!("trusted_keys[{i}]"), e);
            }
        }
        if self.max_bytes == 0 {
            p.at("fleet", "max_bytes", "must be positive");
        }
    }
}
