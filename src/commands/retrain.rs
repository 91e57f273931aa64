//! `vigil retrain --camera ID`: the gated retraining of one camera, with its bundle and data
//! set taken from the daemon's config, so that `vigil-retrain@<camera>.service` holds no path
//! (and the trainer never parses the daemon's config).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::config::Config;
use crate::dataset::Dataset;

/// The trainer's command for `camera`: `vigil-train retrain --from <bundle> --dataset
/// <state_dir>/dataset/<camera> --gate --install --device auto`, then `extra`.
pub fn command(config: &Config, camera: &str, trainer: &Path, extra: &[String]) -> anyhow::Result<Command> {
    let Some(cam) = config.cameras.iter().find(|c| c.id == camera) else {
        let known: Vec<&str> = config.cameras.iter().map(|c| c.id.as_str()).collect();
        anyhow::bail!("no camera `{camera}` in the config; its cameras are: {}", known.join(", "));
    };
    let dataset = Dataset::new(&config.state_dir, config.dataset.clone()).camera_dir(camera);
    anyhow::ensure!(
        dataset.is_dir(),
        "camera {camera} has no data set yet ({} is missing): the daemon collects it from verdicts and sampled frames (dataset.sample_normal); retrain once it holds normal frames",
        dataset.display()
    );
    let mut cmd = Command::new(trainer);
    cmd.arg("retrain").arg("--from").arg(&cam.bundle).arg("--dataset").arg(&dataset);
    cmd.args(["--gate", "--install", "--device", "auto"]).args(extra);
    Ok(cmd)
}

/// `vigil-train`: `VIGIL_TRAIN` if set, else beside this binary (as the packages install
/// it), else from `PATH`.
pub fn trainer() -> PathBuf {
    if let Some(p) = std::env::var_os("VIGIL_TRAIN") {
        return PathBuf::from(p);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("vigil-train")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("vigil-train"))
}

/// Runs the trainer for `camera` and returns its exit code (3: the gate kept the served
/// bundle).
pub fn run(config: &Config, camera: &str, extra: &[String]) -> anyhow::Result<i32> {
    let trainer = trainer();
    let mut cmd = command(config, camera, &trainer, extra)?;
    let shown: Vec<String> =
        std::iter::once(cmd.get_program()).chain(cmd.get_args()).map(|a| a.to_string_lossy().into_owned()).collect();
    println!("vigil retrain: camera {camera}: {}", shown.join(" "));
    let status = cmd.status().map_err(|e| {
        anyhow::anyhow!(
            "starting {}: {e}; install the vigil-train package, or set VIGIL_TRAIN to the trainer's path",
            trainer.display()
        )
    })?;
    Ok(status.code().unwrap_or(1))
}
