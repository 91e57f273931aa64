//! The settings (`cyclegan.toml`) and progress (`cyclegan.json`) of a CycleGAN run.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use vigil_model::bundle::manifest::{ColorMode, InputSpec};

use crate::data::sets::Skipped;
use crate::family::cyclegan::nets::CycleSpec;
use crate::run::{EpochLog, RunDir};

/// The settings of a CycleGAN run (`cyclegan.toml` in the run folder).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CycleConfig {
    /// Side of the square images the networks see (a multiple of 8).
    pub size: usize,
    /// 1 (gray) or 3 (RGB); absent: from the first normal image.
    pub channels: Option<usize>,
    /// Channels of the generators' first convolution (the paper: 64) and the
    /// discriminators' (the paper: 64).
    pub width: usize,
    /// Residual blocks per generator (the paper: 9 at 256 px).
    pub blocks: usize,
    /// Epochs; the learning rate falls linearly to zero over the second half.
    pub epochs: u32,
    /// Steps per epoch (each a batch of normal and a batch of defective images).
    pub steps_per_epoch: usize,
    /// Images per step from each side.
    pub batch: usize,
    /// Adam learning rate.
    pub lr: f64,
    /// Adam beta 1.
    pub beta1: f32,
    /// Weight of the cycle-consistency losses (λ).
    pub lambda_cycle: f32,
    /// Weight of the identity losses, as a fraction of λ.
    pub identity: f32,
    /// Past fakes the discriminators draw from.
    pub pool_size: usize,
    /// Seed of every random choice.
    pub seed: u64,
}

impl Default for CycleConfig {
    fn default() -> Self {
        CycleConfig {
            size: 128,
            channels: None,
            width: 16,
            blocks: 4,
            epochs: 12,
            steps_per_epoch: 200,
            batch: 1,
            lr: 2e-4,
            beta1: 0.5,
            lambda_cycle: 10.0,
            identity: 0.5,
            pool_size: 50,
            seed: 0,
        }
    }
}

impl CycleConfig {
    /// Reads a TOML file of CycleGAN options (the rest keep their defaults).
    pub fn from_file(path: &Path) -> anyhow::Result<CycleConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
        toml::from_str(&text).with_context(|| format!("{}: not a CycleGAN config", path.display()))
    }

    /// Checks values before any work starts.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.size >= 16 && self.size.is_multiple_of(8), "size must be a multiple of 8, at least 16");
        anyhow::ensure!(matches!(self.channels, None | Some(1) | Some(3)), "channels must be 1 or 3");
        anyhow::ensure!(
            self.width > 0 && self.epochs > 0 && self.steps_per_epoch > 0 && self.batch > 0,
            "width, epochs, steps_per_epoch and batch must be positive"
        );
        anyhow::ensure!(
            self.lr > 0.0 && self.lambda_cycle >= 0.0 && self.identity >= 0.0,
            "lr must be positive, the loss weights not negative"
        );
        Ok(())
    }

    /// The networks' sizes for `channels`.
    pub fn spec(&self, channels: usize) -> CycleSpec {
        CycleSpec { channels, width: self.width, blocks: self.blocks }
    }

    /// The learning rate of `epoch` (0-based): constant for the first half, then falling
    /// linearly to zero.
    pub fn lr_at(&self, epoch: u32) -> f64 {
        let half = self.epochs / 2;
        if epoch < half {
            return self.lr;
        }
        let decay = (self.epochs - half) as f64;
        self.lr * (1.0 - (epoch - half) as f64 / decay)
    }

    /// How the images become tensors: unit range, the run's colour, the run's size.
    pub fn input(&self, channels: usize) -> InputSpec {
        let color = if channels == 1 { ColorMode::Gray } else { ColorMode::Rgb };
        InputSpec::unit_range("image", color, self.size, self.size)
    }
}

/// Settings file in a CycleGAN run folder.
pub const CONFIG_FILE: &str = "cyclegan.toml";
/// Progress file in a CycleGAN run folder.
pub const STATE_FILE: &str = "cyclegan.json";
/// The normal → defective generator's checkpoint name.
pub const GENERATOR: &str = "generator_normal_to_defect";

/// A CycleGAN run's progress (`cyclegan.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CycleState {
    /// Normal images.
    pub normal: PathBuf,
    /// Defective images.
    pub defect: PathBuf,
    /// Image channels.
    pub channels: usize,
    /// Epochs finished.
    pub epochs_done: u32,
    /// The device trained on.
    pub device: String,
    /// Per-epoch loss averages.
    pub history: Vec<EpochLog>,
    /// Images that could not be read.
    pub skipped: Vec<Skipped>,
    /// Seconds spent training.
    pub seconds: f64,
}

impl CycleState {
    pub(crate) fn save(&self, run: &RunDir) -> anyhow::Result<()> {
        let path = run.0.join(STATE_FILE);
        std::fs::write(&path, serde_json::to_vec_pretty(self)?).with_context(|| format!("writing {}", path.display()))
    }

    /// Reads `cyclegan.json` of a run.
    pub fn load(run: &RunDir) -> anyhow::Result<Self> {
        let path = run.0.join(STATE_FILE);
        let bytes = std::fs::read(&path).with_context(|| {
            format!(
                "{}: not a CycleGAN run folder (no {STATE_FILE}); train one with `vigil-train cyclegan`",
                run.0.display()
            )
        })?;
        serde_json::from_slice(&bytes).with_context(|| format!("{}: unreadable", path.display()))
    }
}

/// Reads `cyclegan.toml` of a run.
pub fn load_config(run: &RunDir) -> anyhow::Result<CycleConfig> {
    let path = run.0.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
    toml::from_str(&text).with_context(|| format!("{}: not a CycleGAN config", path.display()))
}
