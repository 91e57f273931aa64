//! CycleGAN on a small synthetic set at 32x32: training with checkpoints, a stop and a resume,
//! the sample grid and loss plot; `augment` writing defective images with masks; and the
//! generator as a DAE's corruption.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use vigil_model::synth::{SynthConfig, generate};
use vigil_pipeline::config::{Corruption, TrainConfig};
use vigil_pipeline::device::DeviceChoice;
use vigil_pipeline::family::cyclegan::augment;
use vigil_pipeline::family::cyclegan::config::{CycleConfig, CycleState};
use vigil_pipeline::family::cyclegan::fit::{CycleRequest, train};
use vigil_pipeline::family::kind::ModelKind;
use vigil_pipeline::run::Outcome;
use vigil_pipeline::train::{RunDir, RunState};

use crate::common::train_on;

/// Normal images and a folder of 5 defective ones.
fn data() -> &'static (PathBuf, PathBuf, PathBuf) {
    static DIR: OnceLock<(PathBuf, PathBuf, PathBuf)> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("vigil-cyclegan-tests-{}", std::process::id()));
        generate(&dir, &SynthConfig { size: 48, n_train: 16, n_test: 16, rgb: false, seed: 4 }).unwrap();
        let defects = dir.join("defects");
        std::fs::create_dir_all(&defects).unwrap();
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir.join("test"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name() != "good")
            .flat_map(|e| std::fs::read_dir(e.path()).unwrap().flatten().map(|f| f.path()))
            .collect();
        found.sort();
        for (i, f) in found.iter().take(5).enumerate() {
            std::fs::copy(f, defects.join(format!("d{i}.png"))).unwrap();
        }
        (dir.join("train/good"), defects, dir)
    })
}

fn tiny() -> CycleConfig {
    CycleConfig { size: 32, width: 4, blocks: 1, epochs: 2, steps_per_epoch: 12, batch: 2, ..CycleConfig::default() }
}

fn request(run: &Path, resume: bool) -> CycleRequest {
    let (normal, defect, _) = data();
    CycleRequest {
        config: tiny(),
        normal: normal.clone(),
        defect: defect.clone(),
        run: RunDir(run.to_path_buf()),
        device: DeviceChoice::Cpu,
        resume,
    }
}

/// A finished tiny run (trained once, shared).
fn finished() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let run = data().2.join("finished-run");
        assert_eq!(train(&request(&run, false), &AtomicBool::new(false)).unwrap(), Outcome::Finished);
        run
    })
}

#[test]
fn a_cyclegan_trains_stops_resumes_and_leaves_samples_and_losses() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    // Stop once the first epoch's checkpoint is written.
    let stop = AtomicBool::new(false);
    let done = AtomicBool::new(false);
    let outcome = std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            let sample = run.join("samples/epoch-001.png");
            while !sample.is_file() && !done.load(Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            stop.store(true, Ordering::SeqCst);
        });
        let o = train(&request(&run, false), &stop);
        done.store(true, Ordering::SeqCst);
        watcher.join().unwrap();
        o.unwrap()
    });
    let state = CycleState::load(&RunDir(run.clone())).unwrap();
    if outcome == Outcome::Interrupted {
        assert_eq!(state.epochs_done, 1);
        assert_eq!(train(&request(&run, true), &AtomicBool::new(false)).unwrap(), Outcome::Finished);
    }
    let state = CycleState::load(&RunDir(run.clone())).unwrap();
    assert_eq!((state.epochs_done, state.history.len()), (2, 2));
    for log in &state.history {
        for key in ["g_adv", "cycle", "identity", "d_loss"] {
            let v = log.losses.iter().find(|(k, _)| k == key).unwrap_or_else(|| panic!("{key}: {log:?}")).1;
            assert!(v.is_finite() && v >= 0.0, "{key} {v}");
        }
    }
    assert!(run.join("losses.png").is_file() && run.join("losses.csv").is_file());
    let grid = image::open(run.join("samples/epoch-002.png")).unwrap();
    assert_eq!((grid.width(), grid.height()), (3 * 32, 8 * 32), "rows of [image, translated, back]");
    // A second run into the same folder is refused.
    let err = train(&request(&run, false), &AtomicBool::new(false)).unwrap_err();
    assert!(err.to_string().contains("--resume"), "{err}");
}

#[test]
fn augment_writes_changed_images_of_the_originals_size() {
    let dir = tempfile::tempdir().unwrap();
    let (normal, _, _) = data();
    let done = augment::augment(finished(), normal, &dir.path().join("out"), 5).unwrap();
    assert_eq!(done.images, 5);
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.path().join("out"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert_eq!(files.len(), 5);
    let out = image::open(&files[0]).unwrap().to_luma8();
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    let stem = name.trim_start_matches("cyclegan-0000-").trim_end_matches(".png");
    let original = image::open(normal.join(format!("{stem}.png"))).unwrap().to_luma8();
    assert_eq!(out.dimensions(), original.dimensions(), "written at the original's size");
    assert_ne!(out.as_raw(), original.as_raw(), "the generator changed the image");
    for m in std::fs::read_dir(dir.path().join("out/masks")).unwrap().flatten() {
        assert!(m.file_name().to_string_lossy().ends_with("_mask.png"));
    }
    let err = augment::augment(&dir.path().join("nothing"), normal, &dir.path().join("x"), 1).unwrap_err();
    assert!(format!("{err:#}").contains("vigil-train cyclegan"), "{err:#}");
}

#[test]
fn a_dae_trains_on_the_generators_defects_and_refuses_a_generator_of_another_size() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, root) = data();
    let cfg = TrainConfig {
        model: ModelKind::Dae,
        epochs: 1,
        batch: 8,
        size: 32,
        latent: 16,
        width: 8,
        channels: Some(1),
        corruption: Corruption::CycleGan(finished().to_path_buf()),
        ..TrainConfig::default()
    };
    let run = train_on(cfg.clone(), root, &dir.path().join("run"));
    let loss = RunState::load(&run).unwrap().history[0].losses[0].1;
    assert!(loss.is_finite() && loss > 0.0);
    // The setting round-trips through train.toml.
    assert_eq!(TrainConfig::from_file(&run.config()).unwrap().corruption, cfg.corruption);
    let wrong = TrainConfig { size: 64, ..cfg };
    let req = vigil_pipeline::train::TrainRequest {
        config: wrong,
        source: Some(vigil_pipeline::data::sets::DataSource::Mvtec(root.clone())),
        run: RunDir(dir.path().join("wrong")),
        device: DeviceChoice::Cpu,
        resume: false,
        init_weights: None,
        val_abnormal: None,
        train_abnormal: None,
    };
    let err = vigil_pipeline::train::train(&req, &AtomicBool::new(false)).unwrap_err();
    assert!(format!("{err:#}").contains("train the CycleGAN with --size 64"), "{err:#}");
    let bad: Result<Corruption, _> = Corruption::try_from("cyclegan:".to_owned());
    assert!(bad.is_err());
}
