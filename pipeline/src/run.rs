//! The run folder: where a run keeps its files, `state.json` (data source, epochs done,
//! loss history, skipped files), `losses.csv`, the loss chart `losses.png`, and the
//! checkpoint files that every training loop (the families' and the CycleGAN's) saves and
//! restores; and how a training call ended.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use burn::module::Module;
use burn::optim::ModuleOptimizer;
use serde::{Deserialize, Serialize};

use crate::chart::{self, Chart, ChartError, Series};
use crate::config::CONFIG_FILE;
use crate::data::sets::{DataSource, Skipped};

/// Where a run keeps its files.
#[derive(Debug, Clone)]
pub struct RunDir(pub PathBuf);

impl RunDir {
    /// `train.toml`.
    pub fn config(&self) -> PathBuf {
        self.0.join(CONFIG_FILE)
    }
    /// `state.json`.
    pub fn state(&self) -> PathBuf {
        self.0.join("state.json")
    }
    /// `losses.csv`.
    pub fn losses(&self) -> PathBuf {
        self.0.join("losses.csv")
    }
    /// A checkpoint file.
    pub fn checkpoint(&self, name: &str) -> PathBuf {
        self.0.join("checkpoint").join(format!("{name}.bpk"))
    }
}

/// The data source as stored in `state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// MVTec root.
    pub mvtec: Option<PathBuf>,
    /// Plain folder of normal images.
    pub normal: Option<PathBuf>,
    /// Plain folder of defective images.
    pub abnormal: Option<PathBuf>,
    /// Masks of the defective images.
    pub masks: Option<PathBuf>,
    /// Labelled defective images held out for calibration (F1-optimal threshold).
    #[serde(default)]
    pub val_abnormal: Option<PathBuf>,
    /// Confirmed defective images to learn from (`fdisc`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_abnormal: Option<PathBuf>,
    /// The product classes of a conditional model, each with its own source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<ClassSource>,
    /// The classes' images pooled for a model that is not told the class.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pooled: bool,
}

/// One product class of a conditional run and its data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassSource {
    /// The class name.
    pub name: String,
    /// Its data.
    pub source: SourceSpec,
}

impl From<&DataSource> for SourceSpec {
    fn from(s: &DataSource) -> Self {
        match s {
            DataSource::Mvtec(root) => SourceSpec { mvtec: Some(root.clone()), ..SourceSpec::default() },
            DataSource::Folders { normal, abnormal, masks } => SourceSpec {
                normal: Some(normal.clone()),
                abnormal: abnormal.clone(),
                masks: masks.clone(),
                ..SourceSpec::default()
            },
            DataSource::Classes(classes) | DataSource::Pooled(classes) => SourceSpec {
                classes: classes
                    .iter()
                    .map(|(name, s)| ClassSource { name: name.clone(), source: SourceSpec::from(s) })
                    .collect(),
                pooled: matches!(s, DataSource::Pooled(_)),
                ..SourceSpec::default()
            },
        }
    }
}

impl SourceSpec {
    /// Back to a source.
    pub fn source(&self) -> anyhow::Result<DataSource> {
        if !self.classes.is_empty() {
            let classes: anyhow::Result<Vec<_>> =
                self.classes.iter().map(|c| Ok((c.name.clone(), c.source.source()?))).collect();
            return classes.map(if self.pooled { DataSource::Pooled } else { DataSource::Classes });
        }
        match (&self.mvtec, &self.normal) {
            (Some(root), _) => Ok(DataSource::Mvtec(root.clone())),
            (None, Some(normal)) => Ok(DataSource::Folders {
                normal: normal.clone(),
                abnormal: self.abnormal.clone(),
                masks: self.masks.clone(),
            }),
            (None, None) => bail!("state.json names no data source"),
        }
    }
}

/// One epoch's averages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochLog {
    /// `train` (the model) or `encoder` (the f-AnoGAN encoder after a GAN).
    pub phase: String,
    /// 1-based epoch within the phase.
    pub epoch: u32,
    /// Loss name to its mean over the epoch.
    pub losses: Vec<(String, f64)>,
    /// Training images per second.
    pub samples_per_s: f64,
}

/// What `state.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunState {
    /// The data the run trains on.
    pub data: SourceSpec,
    /// Input channels (resolved from the data when the config left it open).
    pub channels: usize,
    /// Epochs finished in the model phase.
    pub epochs_done: u32,
    /// Epochs finished in the encoder phase (GANs).
    pub encoder_epochs_done: u32,
    /// The device trained on.
    pub device: String,
    /// Per-epoch loss averages.
    pub history: Vec<EpochLog>,
    /// Training images that could not be read.
    pub skipped: Vec<Skipped>,
    /// Training samples used (images, or their tiles for a tiled model).
    pub images: usize,
    /// Seconds spent training.
    pub seconds: f64,
}

impl RunState {
    /// Reads `state.json` of a run.
    pub fn load(run: &RunDir) -> anyhow::Result<Self> {
        let path = run.state();
        let bytes = std::fs::read(&path)
            .with_context(|| format!("{}: not a vigil-train run folder (no state.json)", run.0.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("{}", path.display()))
    }

    pub(crate) fn save(&self, run: &RunDir) -> anyhow::Result<()> {
        vigil_model::fsio::write_atomic(&run.state(), &serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }
}

/// Whether `dir` holds a finished or interrupted run.
pub fn is_run(dir: &Path) -> bool {
    dir.join("state.json").is_file()
}

/// Appends an epoch's losses to `losses.csv`.
pub(crate) fn append_losses(run: &RunDir, log: &EpochLog) -> anyhow::Result<()> {
    use std::io::Write;
    let path = run.losses();
    let new = !path.exists();
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
    if new {
        writeln!(f, "phase,epoch,metric,value")?;
    }
    for (k, v) in &log.losses {
        writeln!(f, "{},{},{k},{v}", log.phase, log.epoch)?;
    }
    writeln!(f, "{},{},samples_per_s,{}", log.phase, log.epoch, log.samples_per_s)?;
    Ok(())
}

/// The loss curves of a run (`losses.png`), one series per loss, named by the phase as well
/// when the run has several.
pub fn loss_chart(history: &[EpochLog]) -> Result<Chart, ChartError> {
    let mut keys: Vec<(&str, &str)> = vec![];
    for e in history {
        for (k, _) in &e.losses {
            if !keys.contains(&(e.phase.as_str(), k.as_str())) {
                keys.push((&e.phase, k));
            }
        }
    }
    let phases = history.iter().map(|e| &e.phase).collect::<std::collections::BTreeSet<_>>().len();
    let series: Vec<Series> = keys
        .iter()
        .map(|(phase, key)| Series {
            name: if phases > 1 { format!("{phase}: {key}") } else { key.to_string() },
            points: history
                .iter()
                .filter(|e| e.phase == *phase)
                .filter_map(|e| e.losses.iter().find(|(k, _)| k == key).map(|(_, v)| (e.epoch as f64, *v)))
                .collect(),
        })
        .collect();
    chart::loss_curves(&series)
}

/// Draws the loss curves into the run's `losses.png`.
pub fn save_loss_chart(run: &RunDir, history: &[EpochLog]) -> anyhow::Result<()> {
    let path = run.0.join("losses.png");
    loss_chart(history)?.image.save(&path).with_context(|| format!("writing {}", path.display()))
}

/// How a training call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every epoch ran.
    Finished,
    /// Stopped by Ctrl-C after saving a checkpoint.
    Interrupted,
}

/// The module saved as checkpoint `name` of `run` (an error when there is none).
pub(crate) fn restore_module<M: Module>(m: M, run: &RunDir, name: &str) -> anyhow::Result<M> {
    let path = run.checkpoint(name);
    m.try_load_file(&path).map_err(|e| anyhow::anyhow!("{}: {e:?}", path.display()))
}

/// The optimizer state saved as checkpoint `name` of `run`, into `opt`.
pub(crate) fn restore_opt(opt: ModuleOptimizer, run: &RunDir, name: &str) -> anyhow::Result<ModuleOptimizer> {
    let path = run.checkpoint(name);
    opt.load(&path).map_err(|e| anyhow::anyhow!("{}: {e:?}", path.display()))
}

pub(crate) fn save_module<M: Module>(m: &M, run: &RunDir, name: &str) -> anyhow::Result<()> {
    let path = run.checkpoint(name);
    m.clone().save_file(&path).map_err(|e| anyhow::anyhow!("{}: {e:?}", path.display()))
}

pub(crate) fn save_opt(o: &ModuleOptimizer, run: &RunDir, name: &str) -> anyhow::Result<()> {
    let path = run.checkpoint(name);
    o.save(&path).map_err(|e| anyhow::anyhow!("{}: {e:?}", path.display()))
}
