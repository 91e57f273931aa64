//! Putting bundles in service and rolling back: the atomic exchange in `vigil_model`, and
//! `vigil rollback --camera ID` as an operator runs it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use vigil_model::bundle::Bundle;
use vigil_model::bundle::install::{InstallError, exchange, install, previous_path, rollback, sibling};
use vigil_model::bundle::manifest::{ColorMode, Family};

use crate::common::reference_bundle;

/// A bundle at `dir` whose version is `version` (so each side of a swap can be told apart).
fn bundle(dir: &Path, version: u32) -> String {
    let b = reference_bundle(dir, Family::Dae, ColorMode::Gray, 32);
    let path = dir.join(vigil_model::bundle::MANIFEST_FILE);
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    m["version"] = serde_json::json!(version);
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    assert_eq!(Bundle::load(dir).unwrap().manifest.version, version);
    b.model_sha256
}

fn version(dir: &Path) -> u32 {
    Bundle::load(dir).unwrap().manifest.version
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
fn an_install_exchanges_the_bundles_and_keeps_one_previous() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let current = models.join("current");
    // Nothing served yet: the new one is renamed into place.
    bundle(&models.join("v1"), 1);
    let s = install(&models.join("v1"), &current).unwrap();
    assert_eq!((version(&current), s.previous), (1, None));
    assert_eq!(entries(&models), ["current"]);

    bundle(&models.join("current.next"), 2);
    let s = install(&models.join("current.next"), &current).unwrap();
    assert_eq!(s.previous.as_deref(), Some(previous_path(&current).as_path()));
    assert_eq!((version(&current), version(&previous_path(&current))), (2, 1));
    assert_eq!(entries(&models), ["current", "current.previous"]);

    // A third: the older previous is replaced, not kept.
    bundle(&models.join("current.next"), 3);
    install(&models.join("current.next"), &current).unwrap();
    assert_eq!((version(&current), version(&previous_path(&current))), (3, 2));
    assert_eq!(entries(&models), ["current", "current.previous"]);

    // Rolled back and forward again by the same exchange.
    rollback(&current).unwrap();
    assert_eq!((version(&current), version(&previous_path(&current))), (2, 3));
    rollback(&current).unwrap();
    assert_eq!((version(&current), version(&previous_path(&current))), (3, 2));
}

#[test]
fn a_failed_install_or_rollback_moves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let current = models.join("current");
    let sha = bundle(&current, 1);
    // A new bundle that does not load.
    let broken = models.join("current.next");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("manifest.json"), "{}").unwrap();
    let err = install(&broken, &current).unwrap_err();
    assert!(matches!(err, InstallError::Invalid { .. }), "{err}");
    assert!(err.to_string().contains("not put in service") && err.to_string().contains("no model.onnx"), "{err}");
    assert_eq!(Bundle::load(&current).unwrap().model_sha256, sha);
    assert!(broken.join("manifest.json").is_file());
    // The served path as the new bundle.
    assert!(matches!(install(&current, &current).unwrap_err(), InstallError::SamePath(_)));
    // No previous to go back to.
    let err = rollback(&current).unwrap_err();
    assert!(err.to_string().contains("no previous bundle at") && err.to_string().contains("current.previous"), "{err}");
    // A previous that does not load is not swapped in.
    std::fs::create_dir_all(previous_path(&current)).unwrap();
    let err = rollback(&current).unwrap_err();
    assert!(matches!(err, InstallError::Invalid { .. }), "{err}");
    assert_eq!(Bundle::load(&current).unwrap().model_sha256, sha);
    // An exchange with nothing on the other side fails and leaves the one side as it was.
    assert!(exchange(&current, &models.join("absent")).is_err());
    assert_eq!(Bundle::load(&current).unwrap().model_sha256, sha);
    assert_eq!(sibling(Path::new("/m/current/"), "next"), PathBuf::from("/m/current.next"));
}

fn vigil(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vigil")).args(args).env_remove("VIGIL_LOG").output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn vigil_rollback_swaps_a_cameras_bundle_back_and_forth() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let current = models.join("current");
    bundle(&current, 1);
    bundle(&models.join("current.next"), 2);
    install(&models.join("current.next"), &current).unwrap();
    let frames = dir.path().join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    let config = dir.path().join("vigil.toml");
    let camera = |id: &str, b: &Path| {
        format!(
            "[[cameras]]\nid = \"{id}\"\nbundle = \"{}\"\nsource = {{ type = \"folder\", path = \"{}\" }}\n",
            b.display(),
            frames.display()
        )
    };
    let other = dir.path().join("other");
    bundle(&other, 7);
    std::fs::write(&config, format!("device_id = \"box1\"\n{}{}", camera("cam1", &current), camera("cam2", &other)))
        .unwrap();
    let cfg = config.to_str().unwrap();

    let out = vigil(&["rollback", "--camera", "cam1", "--config", cfg]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(said.contains("was: reference-dae version 2") && said.contains("now: reference-dae version 1"), "{said}");
    assert!(said.contains("current.previous") && said.contains("systemctl reload vigil"), "{said}");
    assert_eq!((version(&current), version(&previous_path(&current))), (1, 2));
    // Forward again.
    let out = vigil(&["rollback", "--camera", "cam1", "--config", cfg]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("now: reference-dae version 2"));
    assert_eq!((version(&current), version(&previous_path(&current))), (2, 1));

    // An unknown camera: the known ones are listed.
    let out = vigil(&["rollback", "--camera", "cam9", "--config", cfg]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no camera `cam9` in the config; its cameras are: cam1, cam2"),
        "{}",
        text(&out.stderr)
    );
    // A camera with no previous bundle.
    let out = vigil(&["rollback", "--camera", "cam2", "--config", cfg]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("camera cam2: rollback") && err.contains("no previous bundle at"), "{err}");
    assert_eq!(version(&other), 7);
}

#[test]
fn a_running_daemon_serves_what_rollback_swapped_in_without_a_restart() {
    use crate::daemon::{Daemon, Plant, WAIT};
    let plant = Plant::new();
    let previous = previous_path(&plant.bundle);
    std::fs::create_dir_all(&previous).unwrap();
    for e in std::fs::read_dir(&plant.bundle).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), previous.join(e.file_name())).unwrap();
    }
    let manifest = previous.join(vigil_model::bundle::MANIFEST_FILE);
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    m["version"] = serde_json::json!(7);
    std::fs::write(&manifest, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let cfg = plant.config(&format!("[alerts]\nstdout = true\n{}", plant.folder_camera("")));
    let daemon = Daemon::start(&plant, &cfg);
    let serving = |v: &str| {
        plant.metrics().lines().any(|l| l.starts_with("vigil_model_info{") && l.contains(&format!("version=\"{v}\"")))
    };
    assert!(serving("1"));
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["rollback", "--camera", "cam1", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The watcher sees the swap in the bundle's parent folder and reloads.
    let deadline = std::time::Instant::now() + WAIT;
    while !serving("7") {
        assert!(std::time::Instant::now() < deadline, "the daemon did not pick up the rollback:\n{}", plant.metrics());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // And again, forward: the swapped-in folder is watched too.
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["rollback", "--camera", "cam1", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let deadline = std::time::Instant::now() + WAIT;
    while serving("7") || !serving("1") {
        assert!(std::time::Instant::now() < deadline, "the daemon did not roll forward:\n{}", plant.metrics());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    daemon.stop();
}
