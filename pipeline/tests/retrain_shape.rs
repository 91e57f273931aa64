//! A retrain keeps the served bundle's input shape whatever the shape of the new images: each
//! family's bundle, trained on square images, retrains on a data set twice as tall as wide
//! (the daemon's data set of a camera whose framing changed) into a bundle of the same input.
//! Before, the feature families measured the new images' aspect again, so PaDiM's statistics
//! of one feature grid met another's and the retrain panicked ("statistics of one layout").
//! A bundle whose config cannot give its own input is refused with the reason.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::AtomicBool;

use vigil_model::bundle::Bundle;
use vigil_model::engine::EngineChoice;
use vigil_model::synth::{SynthConfig, generate};
use vigil_pipeline::config::TrainConfig;
use vigil_pipeline::data::sets::{DataSource, list_images};
use vigil_pipeline::device::DeviceChoice;
use vigil_pipeline::family::features::fae::FaeConfig;
use vigil_pipeline::family::features::padim::PadimConfig;
use vigil_pipeline::family::features::patchcore::PatchcoreConfig;
use vigil_pipeline::family::gan::GanConfig;
use vigil_pipeline::family::kind::ModelKind;
use vigil_pipeline::retrain::finetune::{RetrainRequest, retrain};

use crate::common::{engine_config, export_run, train_on};

/// Square synthetic images (MVTec layout), and the same normals at 48x96, written once.
fn data() -> &'static (PathBuf, PathBuf) {
    static DIRS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    DIRS.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("vigil-reshape-tests-{}", std::process::id()));
        let square = root.join("square");
        generate(&square, &SynthConfig { size: 64, n_train: 24, n_test: 8, rgb: false, seed: 9 }).unwrap();
        let tall = root.join("tall");
        std::fs::create_dir_all(&tall).unwrap();
        for p in list_images(&square.join("train/good")).unwrap() {
            let img = image::open(&p).unwrap().resize_exact(48, 96, image::imageops::FilterType::Triangle);
            img.save(tall.join(p.file_name().unwrap())).unwrap();
        }
        (square, tall)
    })
}

/// Each family at its smallest: the feature families at 64 px (a 2x2 feature grid would
/// become 3x2 at the tall images' aspect), the ones trained from scratch at 32 px, one epoch.
fn tiny(model: ModelKind) -> TrainConfig {
    let base = TrainConfig {
        model,
        epochs: 1,
        gan: GanConfig { encoder_epochs: Some(1), ..GanConfig::default() },
        batch: 8,
        smoothing_sigma: 1.0,
        val_fraction: 0.25,
        ..TrainConfig::default()
    };
    if model.is_feature() {
        TrainConfig {
            size: 64,
            padim: PadimConfig { dims: 16 },
            patchcore: PatchcoreConfig { bank_size: 64 },
            fae: FaeConfig { latent: 8, ..FaeConfig::default() },
            ..base
        }
    } else {
        TrainConfig { size: 32, latent: 16, width: 8, ..base }
    }
}

fn retrain_on(from: &Path, normal: &Path, out: &Path) -> anyhow::Result<Bundle> {
    let req = RetrainRequest {
        from: from.to_path_buf(),
        source: DataSource::Folders { normal: normal.to_path_buf(), abnormal: None, masks: None },
        val_abnormal: None,
        out: out.to_path_buf(),
        run: None,
        epochs: Some(1),
        device: DeviceChoice::Cpu,
        engine: engine_config(EngineChoice::Tract),
    };
    Ok(retrain(&req, &AtomicBool::new(false))?.expect("not stopped").bundle)
}

#[test]
fn every_family_retrains_on_images_of_another_aspect_at_the_served_input_shape() {
    let (square, tall) = data();
    let families = [
        ModelKind::Padim,
        ModelKind::Patchcore,
        ModelKind::Fae,
        ModelKind::Dae,
        ModelKind::Vae,
        ModelKind::Gan,
        ModelKind::Wgan,
    ];
    for model in families {
        let dir = tempfile::tempdir().unwrap();
        let run = train_on(tiny(model), square, &dir.path().join("run"));
        let served = export_run(&run, &dir.path().join("v1"));
        let shape = |b: &Bundle| (b.manifest.input.height, b.manifest.input.width, b.manifest.input.channels);
        let next = retrain_on(&served.path, tall, &dir.path().join("v2"))
            .unwrap_or_else(|e| panic!("{model:?}: retraining on 48x96 images: {e:#}"));
        assert_eq!(shape(&next), shape(&served), "{model:?} changed its input");
        assert_eq!(next.manifest.version, 2, "{model:?}");
        // The new bundle scores the tall images as the daemon will feed them.
        let engine = vigil_model::engine::load(&next, &engine_config(EngineChoice::Tract)).unwrap();
        let held = vigil_pipeline::retrain::gate::HeldOut {
            normal: list_images(tall).unwrap()[..4].to_vec(),
            ..Default::default()
        };
        let f = vigil_pipeline::retrain::gate::figures(&next, &engine, &held);
        assert_eq!((f.normals, f.skipped), (4, 0), "{model:?}: {f:?}");
    }
}

#[test]
fn a_bundle_whose_config_cannot_give_its_served_input_is_refused_with_the_reason() {
    let (square, tall) = data();
    for (model, wrong_size) in [(ModelKind::Padim, 96), (ModelKind::Dae, 64)] {
        let dir = tempfile::tempdir().unwrap();
        let run = train_on(tiny(model), square, &dir.path().join("run"));
        let served = export_run(&run, &dir.path().join("v1"));
        // As if the manifest's training config had been edited (or written by another version).
        let path = served.path.join(vigil_model::bundle::MANIFEST_FILE);
        let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        m["training"]["config"]["size"] = wrong_size.into();
        std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
        let err = format!("{:#}", retrain_on(&served.path, tall, &dir.path().join("v2")).unwrap_err());
        let (h, w) = (served.manifest.input.height, served.manifest.input.width);
        assert!(err.contains(&format!("the bundle serves {w}x{h}")), "{model:?}: {err}");
        assert!(
            err.contains(&format!("gives {wrong_size}x{wrong_size}")) && err.contains("vigil-train train"),
            "{err}"
        );
        assert!(!dir.path().join("v2").exists(), "nothing written");
    }
}
