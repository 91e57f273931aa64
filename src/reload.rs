//! Bundles in and out of service: loading every camera's bundle at start (each distinct path
//! once, checked and test-run), the check `vigil validate` runs, reloading on SIGHUP or when a
//! bundle's files change (watched with `notify`), and keeping the old model when a new one
//! fails: a broken bundle never replaces a serving one.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::problem::Problem;
use crate::scoring::{Model, Models};

/// Loads every camera's bundle (each distinct path once), checks and test-runs it; with
/// `skip_missing`, cameras whose bundle path does not exist are left out (the pre-flight has
/// reported them). Returns the models loaded and a problem per bundle that failed.
fn load_each(config: &Config, skip_missing: bool) -> (Vec<Arc<Model>>, Vec<Problem>) {
    let mut loaded: HashMap<PathBuf, Arc<Model>> = HashMap::new();
    let mut problems = vec![];
    let mut out = vec![];
    for (i, c) in config.cameras.iter().enumerate() {
        if skip_missing && !c.bundle.exists() {
            continue;
        }
        let model = match loaded.get(&c.bundle) {
            Some(m) => m.clone(),
            None => match Model::load(&c.bundle, &config.engine) {
                Ok(m) => {
                    let m = Arc::new(m);
                    loaded.insert(c.bundle.clone(), m.clone());
                    m
                }
                Err(e) => {
                    problems.push(Problem { key: format!("cameras[{i}].bundle"), message: format!("{e:#}") });
                    continue;
                }
            },
        };
        if let Err(message) = c.class_fits(&model) {
            problems.push(Problem { key: format!("cameras[{i}].class"), message });
        }
        out.push(model);
    }
    (out, problems)
}

/// Loads every camera's bundle, in `[[cameras]]` order, or says which failed and why.
pub fn load_models(config: &Config) -> Result<Vec<Arc<Model>>, Vec<Problem>> {
    let (models, problems) = load_each(config, false);
    if problems.is_empty() { Ok(models) } else { Err(problems) }
}

/// Everything `vigil validate` checks: the config's values and pre-flight, then each bundle
/// loaded and test-run on the configured engine.
pub fn check(config: &Config) -> Vec<Problem> {
    let mut problems = config.validate();
    problems.extend(load_each(config, true).1);
    problems
}

/// Sets `vigil_model_info` for a camera's model.
pub fn model_info(metrics: &Metrics, camera: &str, m: &Model) {
    let version = m.bundle.manifest.version.to_string();
    metrics.remove_gauges("vigil_model_info", "camera", camera);
    metrics.set(
        "vigil_model_info",
        &[("camera", camera), ("name", &m.bundle.manifest.name), ("version", &version), ("engine", m.engine.name())],
        1.0,
    );
}

/// Each bundle path once, in `[[cameras]]` order.
pub fn unique_bundles(config: &Config) -> Vec<PathBuf> {
    let mut seen = HashSet::new();
    config.cameras.iter().map(|c| c.bundle.clone()).filter(|p| seen.insert(p.clone())).collect()
}

/// Loads, checks and test-runs the bundle at `path`, then swaps it in; a broken bundle is
/// refused and the old one keeps serving.
pub async fn reload(config: &Config, models: &Models, metrics: &Metrics, path: PathBuf) {
    let engine = config.engine.clone();
    let p = path.clone();
    match tokio::task::spawn_blocking(move || Model::load(&p, &engine)).await {
        Ok(Ok(m)) => {
            let misfit = config
                .cameras
                .iter()
                .filter(|c| c.bundle == path)
                .find_map(|c| c.class_fits(&m).err().map(|e| (c.id.clone(), e)));
            if let Some((camera, e)) = misfit {
                tracing::error!(
                    "bundle {}: reload refused, the previous model keeps serving: camera {camera}: {e}",
                    path.display()
                );
                metrics.inc("vigil_reloads_total", &[("result", "refused")]);
                return;
            }
            tracing::info!(
                "bundle {}: now serving {} v{}",
                path.display(),
                m.bundle.manifest.name,
                m.bundle.manifest.version
            );
            let m = Arc::new(m);
            for c in config.cameras.iter().filter(|c| c.bundle == path) {
                model_info(metrics, &c.id, &m);
            }
            models.swap(&path, m);
            crate::memory::trim();
            metrics.inc("vigil_reloads_total", &[("result", "ok")]);
        }
        Ok(Err(e)) => {
            tracing::error!("bundle {}: reload refused, the previous model keeps serving: {e:#}", path.display());
            metrics.inc("vigil_reloads_total", &[("result", "refused")]);
        }
        Err(e) => tracing::error!("bundle {}: reload failed: {e}", path.display()),
    }
}

/// Watches every bundle; a change sends its path (the caller waits for writes to settle).
pub fn watch(config: &Config, changed: mpsc::UnboundedSender<PathBuf>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let bundles = unique_bundles(config);
    let targets = bundles.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(ev) = res else { return };
        if matches!(ev.kind, notify::EventKind::Access(_)) {
            return;
        }
        for b in &targets {
            if ev.paths.iter().any(|p| p.starts_with(b) || p == b) {
                let _ = changed.send(b.clone());
            }
        }
    })
    .ok()?;
    for b in &bundles {
        // A lone .onnx is watched through its folder. A folder bundle is watched itself, and
        // through its parent too: `vigil-train retrain --install` and `vigil rollback` swap
        // whole folders, which only the parent sees.
        let parent = b.parent().map(|p| p.to_path_buf()).unwrap_or_default();
        let targets = if b.is_dir() { vec![b.clone(), parent] } else { vec![parent] };
        for target in targets {
            if let Err(e) = watcher.watch(&target, notify::RecursiveMode::NonRecursive) {
                tracing::warn!("cannot watch bundle {} for changes ({e}); reload it with SIGHUP", b.display());
            }
        }
    }
    Some(watcher)
}

/// Watches folder bundle `bundle` again after a reload: a swapped-in folder is another
/// directory than the one watched before.
pub fn rewatch(watcher: &mut notify::RecommendedWatcher, bundle: &std::path::Path) {
    use notify::Watcher;
    if bundle.is_dir() {
        let _ = watcher.unwatch(bundle);
        if let Err(e) = watcher.watch(bundle, notify::RecursiveMode::NonRecursive) {
            tracing::warn!("cannot watch bundle {} for changes ({e}); reload it with SIGHUP", bundle.display());
        }
    }
}

/// Bundle paths that changed on disk, handed out once no change came for the settle time.
pub struct Settling {
    settle: std::time::Duration,
    due: HashSet<PathBuf>,
    at: Option<tokio::time::Instant>,
}

impl Settling {
    /// Nothing due; changes settle after `settle`.
    pub fn new(settle: std::time::Duration) -> Settling {
        Settling { settle, due: HashSet::new(), at: None }
    }

    /// A change of `path`: it is due once nothing changed for the settle time.
    pub fn add(&mut self, path: PathBuf) {
        self.due.insert(path);
        self.at = Some(tokio::time::Instant::now() + self.settle);
    }

    /// Waits until the changes settled and returns their paths; pending forever while none
    /// are waiting (cancel-safe, for a `select!` branch).
    pub async fn settled(&mut self) -> Vec<PathBuf> {
        match self.at {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
        self.at = None;
        self.due.drain().collect()
    }
}
