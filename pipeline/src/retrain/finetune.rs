//! `vigil-train retrain`: fine-tune a bundle's networks on new data (the feature families:
//! add the new normal images to PaDiM's statistics or PatchCore's bank, fine-tune the feature
//! autoencoder), recalibrate, re-evaluate, and write the next version with its parent
//! recorded; then, when asked, judge it against the served bundle ([`crate::retrain::gate`])
//! and put it in service atomically or set it aside.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::{Context, bail};
use vigil_model::bundle::Bundle;
use vigil_model::bundle::install::{Swapped, install};
use vigil_model::bundle::manifest::Parent;
use vigil_model::engine::EngineConfig;

use crate::config::TrainConfig;
use crate::data::sets::{DataSource, list_images};
use crate::device::DeviceChoice;
use crate::export::bundle::{ExportRequest, Exported, export};
use crate::family::kind::ModelKind;
use crate::family::trained::WEIGHTS_FILE;
use crate::retrain::gate::{GateReport, HeldOut, Tolerances};
use crate::run::Outcome;
use crate::train::{RunDir, TrainRequest, train};

/// What `vigil-train retrain` needs.
#[derive(Debug, Clone)]
pub struct RetrainRequest {
    /// The bundle to start from.
    pub from: PathBuf,
    /// The new data.
    pub source: DataSource,
    /// Confirmed defects that calibrate the threshold (F1-optimal), as `train --val-abnormal`.
    pub val_abnormal: Option<PathBuf>,
    /// The bundle folder to write.
    pub out: PathBuf,
    /// Run folder for checkpoints (default: `<out>.run`).
    pub run: Option<PathBuf>,
    /// Fine-tuning epochs (default: a quarter of the parent's, at least 1).
    pub epochs: Option<u32>,
    /// Where to train.
    pub device: DeviceChoice,
    /// The engine that calibrates and evaluates the exported graph (and runs the gate).
    pub engine: EngineConfig,
}

impl RetrainRequest {
    /// The run folder: `run`, or `<out>.run`.
    pub fn run_dir(&self) -> PathBuf {
        self.run.clone().unwrap_or_else(|| {
            let mut p = self.out.clone().into_os_string();
            p.push(".run");
            PathBuf::from(p)
        })
    }
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
    keep_input_shape(&mut cfg, m, &req.from)?;
    let epochs = req.epochs.unwrap_or((cfg.epochs / 4).max(1));
    cfg.epochs = epochs;
    cfg.gan.encoder_epochs = cfg.gan.encoder_epochs.map(|_| epochs);
    let run = RunDir(req.run_dir());
    // The feature discriminator learns from the confirmed defects (the daemon's
    // `dataset/<camera>/abnormal`) instead of only calibrating on them; its threshold then
    // comes from the validation normals, since defects it learnt from would judge it
    // optimistically.
    let has_defects = req.val_abnormal.as_deref().is_some_and(|d| list_images(d).is_ok_and(|v| !v.is_empty()));
    let (val_abnormal, train_abnormal) = match (cfg.model, has_defects) {
        (ModelKind::Fdisc, true) => {
            tracing::info!("fdisc: learning from the confirmed defects; the threshold comes from validation normals");
            (None, req.val_abnormal.clone())
        }
        _ => (req.val_abnormal.clone(), None),
    };
    let train_req = TrainRequest {
        config: cfg,
        source: Some(req.source.clone()),
        run: run.clone(),
        device: req.device,
        resume: false,
        init_weights: Some(weights),
        val_abnormal,
        train_abnormal,
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
        engine: req.engine.clone(),
    })?;
    Ok(Some(exported))
}

/// Holds the retrain to the served bundle's input: its height and width, and for the
/// families trained from scratch its channels. The feature families would otherwise measure
/// the new images' aspect again (a parent trained on square images has none in its config),
/// and statistics, a memory bank or a feature autoencoder fitted at one feature grid cannot
/// take in features of another; the daemon also feeds the bundle at the size it was serving.
/// A parent whose config does not give its own input is refused with the reason.
fn keep_input_shape(
    cfg: &mut TrainConfig,
    m: &vigil_model::bundle::manifest::Manifest,
    from: &Path,
) -> anyhow::Result<()> {
    let (h, w) = (m.input.height, m.input.width);
    let expected = if cfg.model.is_feature() {
        if cfg.features.aspect.is_none() {
            cfg.features.aspect = Some(h as f32 / w as f32);
        }
        crate::family::features::input_size(cfg)
    } else {
        [cfg.size, cfg.size]
    };
    anyhow::ensure!(
        expected == [h, w],
        "{}: the bundle serves {w}x{h} (manifest.json `input`), but its training config (size {}, aspect {}) gives {}x{}; a retrain keeps the served input shape, so this bundle cannot be retrained: train a new one with `vigil-train train`",
        from.display(),
        cfg.size,
        cfg.features.aspect.map_or("none".to_owned(), |a| format!("{a:.3}")),
        expected[1],
        expected[0]
    );
    if !cfg.model.is_feature()
        && let Some(c) = cfg.channels
    {
        anyhow::ensure!(
            c == m.input.channels,
            "{}: the bundle takes {} channel(s) (manifest.json `input`), but its training config says {c}; train a new one with `vigil-train train`",
            from.display(),
            m.input.channels
        );
    }
    Ok(())
}

/// A retrain that must prove itself before it is served.
#[derive(Debug, Clone)]
pub struct GatedRequest {
    /// The retrain; with a gate its data must be plain folders (`--dataset` or `--normal`).
    pub retrain: RetrainRequest,
    /// The daemon's data set the data came from (`--dataset`): when it records a hold-out
    /// (`<dataset>/held-out/`), the gate judges on those files and the retrain's folders are
    /// taken as they are. Otherwise (and with `None`) the gate holds out part of the folders
    /// by name.
    pub dataset: Option<PathBuf>,
    /// Judge the new bundle against the served one (`from`) on held-out files.
    pub gate: Option<Tolerances>,
    /// Put the new bundle in service at `from` (when the gate, if any, passes).
    pub install: bool,
    /// Where a rejected bundle is set aside (replacing an older one); `None` leaves it at `out`.
    pub rejected: Option<PathBuf>,
    /// `out` and its run folder are this command's scratch space: cleared before, and the run
    /// folder removed once the bundle is exported.
    pub scratch: bool,
}

/// What became of the new bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Written to `out`, nothing else asked.
    Written,
    /// The gate passed; left at `out` (no `--install`).
    Passed,
    /// In service at `from`; the replaced bundle is at `previous`.
    Installed(Swapped),
    /// The gate failed: set aside here, the served bundle untouched.
    Rejected(PathBuf),
}

/// The result of a gated retrain.
#[derive(Debug)]
pub struct GatedOutcome {
    /// The new bundle as exported, its path where it ended up (in service, set aside or `out`).
    pub exported: Exported,
    /// The gate's report, when there was a gate.
    pub report: Option<GateReport>,
    /// What became of it.
    pub verdict: Verdict,
}

/// Retrains; with a gate, holds out part of the data from training and calibration (the
/// data set's recorded hold-out, or part of the folders by name) and judges the new bundle
/// against the served one on it (writing `gate.json` into the new bundle); then installs it,
/// or sets it aside when the gate fails. `None` when stopped.
pub fn retrain_gated(req: &GatedRequest, stop: &AtomicBool) -> anyhow::Result<Option<GatedOutcome>> {
    if let Some(t) = &req.gate {
        let fine = |v: f64| v.is_finite() && (0.0..=1.0).contains(&v);
        anyhow::ensure!(
            fine(t.recall) && fine(t.false_alarm),
            "the gate's tolerances (--gate-recall {}, --gate-false-alarm {}) are differences of rates between 0 and 1; give values in 0..1",
            t.recall,
            t.false_alarm
        );
    }
    let mut retrain_req = req.retrain.clone();
    let run = retrain_req.run_dir();
    if req.scratch {
        for dir in [&retrain_req.out, &run] {
            if dir.exists() {
                std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
            }
        }
    }
    // The daemon decided each file's side when it came in: read it, never recompute it.
    let recorded = match (&req.gate, &req.dataset) {
        (Some(_), Some(dataset)) => crate::retrain::gate::recorded(dataset)?,
        _ => None,
    };
    let held = match (&req.gate, recorded) {
        (None, _) => None,
        (Some(_), Some(held)) => Some(held),
        (Some(_), None) => {
            let DataSource::Folders { normal, abnormal, masks } = &retrain_req.source else {
                bail!(
                    "the gate holds out part of a data set of plain folders: pass --dataset DIR (DIR/normal, DIR/abnormal) or --normal DIR [--val-abnormal DIR], not --data"
                );
            };
            let staged = crate::retrain::gate::stage(normal, retrain_req.val_abnormal.as_deref(), &run.join("data"))?;
            retrain_req.source =
                DataSource::Folders { normal: staged.normal.clone(), abnormal: abnormal.clone(), masks: masks.clone() };
            retrain_req.val_abnormal = staged.abnormal.clone();
            Some(staged.held_out)
        }
    };
    let Some(exported) = retrain(&retrain_req, stop)? else { return Ok(None) };
    if req.scratch {
        let _ = std::fs::remove_dir_all(&run);
    }
    let from = &retrain_req.from;
    let out = &retrain_req.out;
    let report = match (&req.gate, &held) {
        (Some(tol), Some(held)) => Some(judge_against(from, out, held, tol, &retrain_req.engine)?),
        _ => None,
    };
    let verdict = match &report {
        Some(r) if !r.passed => {
            let at = match &req.rejected {
                Some(aside) => {
                    if aside.symlink_metadata().is_ok() {
                        std::fs::remove_dir_all(aside)
                            .with_context(|| format!("removing the older rejected bundle {}", aside.display()))?;
                    }
                    std::fs::rename(out, aside).with_context(|| {
                        format!("setting the rejected bundle {} aside at {}", out.display(), aside.display())
                    })?;
                    aside.clone()
                }
                None => out.clone(),
            };
            Verdict::Rejected(at)
        }
        _ if req.install => Verdict::Installed(install(out, from)?),
        Some(_) => Verdict::Passed,
        None => Verdict::Written,
    };
    // The bundle is no longer where it was written.
    let moved_to = match &verdict {
        Verdict::Installed(s) => Some(s.bundle.clone()),
        Verdict::Rejected(at) => Some(at.clone()),
        Verdict::Written | Verdict::Passed => None,
    };
    let mut exported = exported;
    if let Some(to) = moved_to {
        exported.bundle.model_path = to.join(vigil_model::bundle::MODEL_FILE);
        exported.bundle.path = to;
    }
    Ok(Some(GatedOutcome { exported, report, verdict }))
}

fn judge_against(
    from: &Path,
    out: &Path,
    held: &HeldOut,
    tol: &Tolerances,
    engine: &EngineConfig,
) -> anyhow::Result<GateReport> {
    crate::retrain::gate::gate(from, out, held, tol, engine)
        .with_context(|| format!("judging {} against the served {}", out.display(), from.display()))
}
