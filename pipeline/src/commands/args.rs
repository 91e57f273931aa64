//! The flags several subcommands share: where the data is (train, retrain, eval) and what the
//! quality benchmarks have in common.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::config::TrainConfig;
use crate::data::sets::DataSource;
use crate::device::DeviceChoice;
use crate::family::kind::ModelKind;

#[derive(Args, Default)]
pub struct DataArgs {
    /// A data set in MVTec AD layout (train/good, test/<type>, ground_truth/<type>).
    #[arg(long, conflicts_with = "normal")]
    pub data: Option<PathBuf>,
    /// A plain folder of normal images (instead of --data).
    #[arg(long)]
    pub normal: Option<PathBuf>,
    /// A plain folder of defective images for evaluation (with --normal).
    #[arg(long, requires = "normal")]
    pub abnormal: Option<PathBuf>,
    /// Masks of the defective images, `<stem>_mask.png` (with --abnormal).
    #[arg(long, requires = "abnormal")]
    pub masks: Option<PathBuf>,
    /// One model for several products: each subfolder of --data is a product class (in
    /// MVTec layout, or a plain folder of normal images), named after the folder.
    #[arg(long, requires = "data")]
    pub conditional: bool,
    /// One model for several products, each class's folder named: `a=DIR,b=DIR` (each in
    /// MVTec layout, or a plain folder of normal images).
    #[arg(long, value_delimiter = ',', value_parser = parse_class, conflicts_with_all = ["data", "normal"])]
    pub classes: Vec<(String, PathBuf)>,
}

fn parse_class(s: &str) -> Result<(String, PathBuf), String> {
    let (name, dir) = s.split_once('=').ok_or_else(|| format!("`{s}`: give NAME=DIR"))?;
    let plain = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !plain {
        return Err(format!("class name `{name}`: use letters, digits, '-', '_' and '.'"));
    }
    Ok((name.to_owned(), PathBuf::from(dir)))
}

impl DataArgs {
    /// The data the flags name, if any.
    pub fn source(&self) -> anyhow::Result<Option<DataSource>> {
        if !self.classes.is_empty() {
            let classes = self.classes.iter().map(|(n, d)| (n.clone(), DataSource::of_folder(d))).collect();
            return Ok(Some(DataSource::Classes(classes)));
        }
        Ok(match (&self.data, &self.normal) {
            (Some(d), _) if self.conditional => Some(DataSource::classes_in(d)?),
            (Some(d), _) => Some(DataSource::Mvtec(d.clone())),
            (None, Some(n)) => Some(DataSource::Folders {
                normal: n.clone(),
                abnormal: self.abnormal.clone(),
                masks: self.masks.clone(),
            }),
            (None, None) => None,
        })
    }
}

/// What the quality benchmarks share.
#[derive(Args)]
pub struct BenchArgs {
    /// Where to train.
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceChoice,
    /// Epochs (default: each family's default).
    #[arg(long)]
    pub epochs: Option<u32>,
    /// Where the runs and bundles go (default: a temporary folder, removed afterwards).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A TOML file of training options applied to every family (`model` in it is ignored).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

impl BenchArgs {
    /// The folder the runs go to, and the temporary one to remove afterwards, if any.
    pub fn root(&self) -> anyhow::Result<(PathBuf, Option<PathBuf>)> {
        Ok(match &self.out {
            Some(o) => (o.clone(), None),
            None => {
                let t = tempfile_dir()?;
                (t.clone(), Some(t))
            }
        })
    }

    /// The training settings of `model`: its defaults, or the file's, with `--epochs`.
    pub fn config(&self, model: ModelKind) -> anyhow::Result<TrainConfig> {
        let base = match &self.config {
            Some(p) => TrainConfig::from_file(p)?,
            None => TrainConfig::default(),
        };
        let mut config = base.with_model(model);
        if let Some(e) = self.epochs {
            config.epochs = e;
        }
        Ok(config)
    }
}

/// A fresh folder under the system's temporary folder.
fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("vigil-bench-quality-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
