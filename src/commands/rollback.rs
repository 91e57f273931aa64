//! `vigil rollback --camera ID`: put the bundle a camera served before the last install back
//! in service, by the same atomic exchange the install made (so a second rollback goes
//! forward again).

use std::path::PathBuf;

use anyhow::Context;
use vigil_model::bundle::Bundle;
use vigil_model::bundle::install::{previous_path, rollback};

use crate::config::Config;

/// What a rollback did.
#[derive(Debug, Clone)]
pub struct RolledBack {
    /// The camera asked for.
    pub camera: String,
    /// Its bundle path (now holding the previous bundle).
    pub bundle: PathBuf,
    /// Name and version served before, or why it did not load.
    pub before: String,
    /// Name and version served now.
    pub after: String,
    /// Where the bundle served before went.
    pub previous: PathBuf,
    /// Other cameras of the config that serve the same bundle path, and so changed too.
    pub sharing: Vec<String>,
}

fn describe(b: &Bundle) -> String {
    let m = &b.manifest;
    format!("{} version {} (model sha256 {})", m.name, m.version, &b.model_sha256[..12.min(b.model_sha256.len())])
}

/// Swaps camera `camera`'s bundle with `<bundle>.previous`, after checking that the previous
/// one loads.
pub fn run(config: &Config, camera: &str) -> anyhow::Result<RolledBack> {
    let Some(cam) = config.cameras.iter().find(|c| c.id == camera) else {
        let known: Vec<&str> = config.cameras.iter().map(|c| c.id.as_str()).collect();
        anyhow::bail!("no camera `{camera}` in the config; its cameras are: {}", known.join(", "));
    };
    let bundle = cam.bundle.clone();
    let before = match Bundle::load(&bundle) {
        Ok(b) => describe(&b),
        Err(e) => format!("a bundle that does not load ({e})"),
    };
    let swapped = rollback(&bundle).with_context(|| format!("camera {camera}: rollback"))?;
    let after =
        Bundle::load(&bundle).map(|b| describe(&b)).with_context(|| format!("camera {camera}: after the rollback"))?;
    let sharing =
        config.cameras.iter().filter(|c| c.id != camera && c.bundle == bundle).map(|c| c.id.clone()).collect();
    Ok(RolledBack {
        camera: camera.to_owned(),
        before,
        after,
        previous: swapped.previous.unwrap_or_else(|| previous_path(&bundle)),
        bundle,
        sharing,
    })
}

impl RolledBack {
    /// What to tell the operator.
    pub fn report(&self) -> String {
        let mut s = format!(
            "camera {}: rolled back {}\n  was: {}\n  now: {}\n  the bundle served before is kept at {} (run the same command again to go forward)\n",
            self.camera,
            self.bundle.display(),
            self.before,
            self.after,
            self.previous.display()
        );
        if !self.sharing.is_empty() {
            s.push_str(&format!("  cameras {} serve the same bundle and changed too\n", self.sharing.join(", ")));
        }
        s.push_str(
            "  a running vigil reloads a bundle when its files change; if it does not pick this one up, run `systemctl reload vigil` (SIGHUP)\n",
        );
        s
    }
}
