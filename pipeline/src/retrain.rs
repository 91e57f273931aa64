//! `vigil-train retrain`: fine-tune a bundle's networks on new data (the feature families:
//! add the new normal images to PaDiM's statistics or PatchCore's bank, fine-tune the feature
//! autoencoder), recalibrate, re-evaluate, and write the next version with its parent
//! recorded.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, bail};
use vigil_model::bundle::Bundle;
use vigil_model::bundle::manifest::Parent;
use vigil_model::engine::EngineConfig;

use crate::config::TrainConfig;
use crate::data::DataSource;
use crate::device::DeviceChoice;
use crate::export::{ExportRequest, Exported, export};
use crate::model::WEIGHTS_FILE;
use crate::train::{Outcome, RunDir, TrainRequest, train};

/// What `vigil-train retrain` needs.
#[derive(Debug, Clone)]
pub struct RetrainRequest {
    /// The bundle to start from.
    pub from: PathBuf,
    /// The new data.
    pub source: DataSource,
    /// The bundle folder to write.
    pub out: PathBuf,
    /// Run folder for checkpoints (default: `<out>.run`).
    pub run: Option<PathBuf>,
    /// Fine-tuning epochs (default: a quarter of the parent's, at least 1).
    pub epochs: Option<u32>,
    /// Where to train.
    pub device: DeviceChoice,
}

/// Fine-tunes and exports; `None` when stopped by Ctrl-C (resume with `train --resume`).
pub fn retrain(req: &RetrainRequest, stop: &AtomicBool) -> anyhow::Result<Option<Exported>> {
    let parent = Bundle::load(&req.from)?;
    let m = &parent.manifest;
    let Some(training) = &m.training else {
        bail!(
            "{}: this bundle was not trained by vigil-train (family {}), so there is nothing to fine-tune",
            req.from.display(),
            m.family.as_str()
        );
    };
    anyhow::ensure!(
        !matches!(req.source, DataSource::Classes(_)),
        "{}: retraining takes the data of one product (--data or --normal); conditional data (--conditional, --classes) trains a new conditional model with `vigil-train train`",
        req.from.display()
    );
    anyhow::ensure!(
        m.conditioning.is_none(),
        "{}: retraining a conditional bundle (classes {}) is not supported yet; train a new one with `vigil-train train --conditional` on every class's data",
        req.from.display(),
        m.class_names().join(", ")
    );
    let weights = req.from.join(WEIGHTS_FILE);
    anyhow::ensure!(
        weights.is_file(),
        "{}: no {WEIGHTS_FILE}; retraining needs the bundle folder vigil-train exported",
        req.from.display()
    );
    let mut cfg: TrainConfig = serde_json::from_value(serde_json::Value::Object(training.config.clone()))
        .with_context(|| format!("{}: the manifest's training.config", req.from.display()))?;
    // The weights expect the parent's input scaling; a bundle from before `normalize`
    // existed has none in its config and would otherwise get a freshly measured one.
    if !cfg.model.is_feature() {
        cfg.normalize = true;
        cfg.pixel_range = Some(m.input.mean.iter().zip(&m.input.std).map(|(&lo, &span)| [lo, lo + span]).collect());
    }
    let epochs = req.epochs.unwrap_or((cfg.epochs / 4).max(1));
    cfg.epochs = epochs;
    cfg.encoder_epochs = cfg.encoder_epochs.map(|_| epochs);
    let run = RunDir(req.run.clone().unwrap_or_else(|| {
        let mut p = req.out.clone().into_os_string();
        p.push(".run");
        PathBuf::from(p)
    }));
    let train_req = TrainRequest {
        config: cfg,
        source: Some(req.source.clone()),
        run: run.clone(),
        device: req.device,
        resume: false,
        init_weights: Some(weights),
        val_abnormal: None,
    };
    if train(&train_req, stop)? == Outcome::Interrupted {
        return Ok(None);
    }
    let exported = export(&ExportRequest {
        run,
        out: req.out.clone(),
        name: Some(m.name.clone()),
        version: m.version + 1,
        parent: Some(Parent { name: m.name.clone(), version: m.version, model_sha256: parent.model_sha256.clone() }),
        engine: EngineConfig::default(),
    })?;
    Ok(Some(exported))
}
