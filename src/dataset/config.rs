//! `[dataset]`: how many alert frames and sampled normals the daemon keeps for retraining.

use serde::{Deserialize, Serialize};

use crate::problem::Problems;

/// `[dataset]`: what the daemon keeps for retraining.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DatasetConfig {
    /// Copy 1 in N frames scored normal into `<state_dir>/dataset/<camera>/normal/` (as
    /// `sample-<id>.<ext>`; about 1 in 5 of them into `held-out/normal/`, for the retrain
    /// gate); 0: none. Frames marked as false alarms go there always.
    pub sample_normal: u32,
    /// Sampled normal frames kept per camera, held out or not (the oldest removed first);
    /// frames an operator gave a verdict on are never removed.
    pub sample_keep: usize,
    /// Alerts' clean frames kept per camera in `<state_dir>/frames/<camera>/` (the oldest
    /// removed first): a verdict can be given on these.
    pub frames_keep: usize,
    /// Megabytes of alert frames kept per camera at most (the oldest removed first), whatever
    /// `frames_keep` allows.
    pub frames_max_mb: u64,
    /// Megabytes of sampled normal frames kept per camera at most (the oldest removed first).
    pub sample_max_mb: u64,
}

impl Default for DatasetConfig {
    fn default() -> Self {
        DatasetConfig { sample_normal: 0, sample_keep: 2000, frames_keep: 200, frames_max_mb: 200, sample_max_mb: 500 }
    }
}

impl DatasetConfig {
    /// Checks the values.
    pub fn validate(&self, p: &mut Problems) {
        if self.sample_normal > 0 && self.sample_keep == 0 {
            p.add(
                "dataset.sample_keep",
                "0 with dataset.sample_normal on would keep nothing: raise it, or set sample_normal = 0",
            );
        }
    }
}
