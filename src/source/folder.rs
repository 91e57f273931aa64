//! The folder source: watches a directory with `notify` and takes each image once it is
//! fully written: at its close-after-write event, or once its size has not changed for
//! `settle`. Files present at start are the backlog. A ledger in the state directory records
//! which file versions were done, so a restart neither re-scores nor skips.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use notify::{EventKind, RecursiveMode, Watcher};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::frame::{Frame, Origin, Outcome};
use crate::metrics::Metrics;
use crate::problem::Problems;
use crate::shutdown::Shutdown;
use crate::state::{FileKey, Ledger};

/// `source = { type = "folder", ... }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FolderSource {
    /// The watched folder.
    pub path: PathBuf,
    /// Watch sub-folders too.
    #[serde(default)]
    pub recursive: bool,
    /// File-name globs to take; others are ignored.
    #[serde(default = "default_include")]
    pub include: Vec<String>,
    /// A file without a close-after-write event is taken once its size has not changed for
    /// this long.
    #[serde(default = "default_settle", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub settle: Duration,
    /// What happens to a file once scored: `keep`, `delete` or `move` (to `move_to`).
    #[serde(default)]
    pub after: AfterScoring,
    /// Folder for `after = "move"`.
    #[serde(default)]
    pub move_to: Option<PathBuf>,
    /// Files larger than this are refused.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Folder where refused files (corrupt, too large, not an image) are moved; absent: they
    /// stay where they are, remembered as done.
    #[serde(default)]
    pub quarantine: Option<PathBuf>,
}

fn default_include() -> Vec<String> {
    vigil_model::preprocess::IMAGE_EXTENSIONS.map(|e| format!("*.{e}")).into()
}
fn default_settle() -> Duration {
    Duration::from_millis(500)
}
/// Files larger than this are refused (64 MiB).
pub(crate) fn default_max_bytes() -> u64 {
    64 * 1024 * 1024
}

/// What to do with a scored file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AfterScoring {
    /// Leave it (vigil remembers it was done).
    #[default]
    Keep,
    /// Delete it.
    Delete,
    /// Move it into `move_to`.
    Move,
}

impl FolderSource {
    /// Checks the values under `key` (`cameras[0].source`).
    pub fn validate(&self, key: &str, p: &mut Problems) {
        for g in &self.include {
            if let Err(e) = globset::Glob::new(g) {
                p.at(key, "include", format!("`{g}`: {e}"));
            }
        }
        match (self.after, &self.move_to) {
            (AfterScoring::Move, None) => p.at(key, "move_to", "after = \"move\" needs move_to"),
            (AfterScoring::Move, Some(m)) if m.starts_with(&self.path) && self.recursive => {
                p.at(key, "move_to", "is inside the recursively watched folder: moved files would be scored again")
            }
            _ => {}
        }
        if let Some(q) = &self.quarantine
            && q.starts_with(&self.path)
            && (self.recursive || q == &self.path)
        {
            p.at(key, "quarantine", "is inside the watched folder: pick a folder outside it");
        }
        if self.max_bytes == 0 {
            p.at(key, "max_bytes", "must be positive");
        }
    }

    /// Checks that the folders exist.
    pub fn preflight(&self, key: &str, p: &mut Problems) {
        if !self.path.is_dir() {
            p.at(key, "path", format!("{}: not a folder; create it or fix the path", self.path.display()));
        }
        if let (AfterScoring::Move, Some(m)) = (self.after, &self.move_to)
            && !m.is_dir()
        {
            p.at(key, "move_to", format!("{}: not a folder", m.display()));
        }
        if let Some(q) = &self.quarantine
            && !q.is_dir()
        {
            p.at(key, "quarantine", format!("{}: not a folder; create it", q.display()));
        }
    }
}

/// How long a file whose alert could not be stored waits before it is scored again.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// One folder camera.
#[derive(Clone)]
pub struct FolderCamera {
    /// Its `[[cameras]]` index.
    pub slot: usize,
    /// Camera id.
    pub camera: String,
    /// The camera's product class (conditional bundles).
    pub class: Option<String>,
    /// Its config.
    pub config: FolderSource,
    /// Its ledger.
    pub ledger: Arc<Mutex<Ledger>>,
}

#[derive(Debug)]
struct Pending {
    size: u64,
    changed: Instant,
    closed: bool,
}

fn globs(patterns: &[String]) -> anyhow::Result<globset::GlobSet> {
    let mut b = globset::GlobSetBuilder::new();
    for p in patterns {
        b.add(globset::GlobBuilder::new(p).case_insensitive(true).build().with_context(|| format!("glob `{p}`"))?);
    }
    Ok(b.build()?)
}

fn walk(dir: &Path, recursive: bool, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() && recursive => walk(&p, recursive, out),
            Ok(t) if !t.is_dir() => out.push(p),
            _ => {}
        }
    }
}

/// Watches the folder until the stop. Returns once every frame it queued is done.
pub async fn run(
    cam: FolderCamera,
    frames: crate::scoring::Queue,
    metrics: Arc<Metrics>,
    mut stop: Shutdown,
    watching: oneshot::Sender<()>,
) -> anyhow::Result<()> {
    let cfg = &cam.config;
    let root = cfg.path.canonicalize().with_context(|| format!("folder {}", cfg.path.display()))?;
    let include = globs(&cfg.include)?;
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |res| {
        let _ = ev_tx.send(res);
    })
    .context("starting the file watcher")?;
    let mode = if cfg.recursive { RecursiveMode::Recursive } else { RecursiveMode::NonRecursive };
    watcher.watch(&root, mode).with_context(|| format!("watching {}", root.display()))?;

    let wanted = |p: &Path| {
        p.file_name().is_some_and(|n| {
            let n = n.to_string_lossy();
            !n.starts_with('.') && include.is_match(n.as_ref())
        })
    };
    let mut pending: HashMap<PathBuf, Pending> = HashMap::new();
    let in_flight: Arc<Mutex<HashSet<PathBuf>>> = Arc::default();
    // The backlog, oldest first, through the same settle check as new files.
    let mut backlog = vec![];
    walk(&root, cfg.recursive, &mut backlog);
    backlog.retain(|p| wanted(p));
    backlog.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH));
    let mut order: Vec<PathBuf> = vec![];
    for p in backlog {
        add_existing(p, cfg.settle, &mut pending, &mut order);
    }
    let _ = watching.send(());
    let tick = (cfg.settle / 4).clamp(Duration::from_millis(10), Duration::from_millis(250));
    let mut ticker = tokio::time::interval(tick);
    let mut tasks = tokio::task::JoinSet::new();
    // Files whose alert could not be stored (a full state folder) come back here to be scored
    // again while the daemon runs, so that they alert once space is back, without a restart.
    let (retry_tx, mut retry_rx) = mpsc::unbounded_channel::<PathBuf>();
    tracing::info!(camera = cam.camera, "watching {} ({} file(s) in the backlog)", root.display(), pending.len());
    loop {
        tokio::select! {
            _ = stop.recv() => break,
            ev = ev_rx.recv() => {
                let Some(ev) = ev else { break };
                // A burst (thousands of files at once) is taken in one pass: drain what is
                // queued before looking at the files.
                let mut batch = vec![ev];
                while batch.len() < 4096 && let Ok(more) = ev_rx.try_recv() {
                    batch.push(more);
                }
                for ev in batch {
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(e) => {
                        tracing::warn!(camera = cam.camera, "file watcher: {e}");
                        metrics.inc("vigil_errors_total", &[("kind", "watcher")]);
                        continue;
                    }
                };
                if ev.need_rescan() {
                    // The kernel's event queue overflowed: events were lost, so look at the
                    // folder itself; files already done are skipped by the ledger.
                    tracing::warn!(camera = cam.camera, "file watcher: events were lost (queue overflow); rescanning {}", root.display());
                    metrics.inc("vigil_errors_total", &[("kind", "watcher_overflow")]);
                    let mut found = vec![];
                    walk(&root, cfg.recursive, &mut found);
                    found.retain(|p| wanted(p) && !pending.contains_key(p));
                    for p in found {
                        add_existing(p, cfg.settle, &mut pending, &mut order);
                    }
                }
                for p in ev.paths.iter().filter(|p| wanted(p)) {
                    match ev.kind {
                        EventKind::Remove(_) => { pending.remove(p); }
                        // Complete: the writer closed it, or it was renamed into place
                        // (the usual way to publish a finished file). The size is taken now,
                        // so the check below does not mistake it for still growing.
                        EventKind::Access(notify::event::AccessKind::Close(notify::event::AccessMode::Write))
                        | EventKind::Modify(notify::event::ModifyKind::Name(
                            notify::event::RenameMode::To | notify::event::RenameMode::Both,
                        )) => {
                            let size = std::fs::metadata(p).map_or(0, |m| m.len());
                            let e = pending.entry(p.clone()).or_insert_with(|| { order.push(p.clone()); Pending { size, changed: Instant::now(), closed: false } });
                            e.size = size;
                            e.closed = true;
                        }
                        EventKind::Create(_) | EventKind::Modify(_) => {
                            let size = std::fs::metadata(p).map_or(0, |m| m.len());
                            let e = pending.entry(p.clone()).or_insert_with(|| { order.push(p.clone()); Pending { size, changed: Instant::now(), closed: false } });
                            if e.size != size || matches!(ev.kind, EventKind::Modify(notify::event::ModifyKind::Data(_))) {
                                e.size = size;
                                e.changed = Instant::now();
                                e.closed = false;
                            }
                        }
                        _ => {}
                    }
                }
                }
            }
            Some(p) = retry_rx.recv() => {
                if !pending.contains_key(&p) {
                    add_existing(p, cfg.settle, &mut pending, &mut order);
                }
            }
            _ = ticker.tick() => {}
        }
        // Take what is complete, in arrival order.
        let now = Instant::now();
        let mut ready = vec![];
        order.retain(|p| {
            let Some(e) = pending.get_mut(p) else { return false };
            if !e.closed && now.duration_since(e.changed) < cfg.settle {
                // Not due yet: no need to look at the file.
                return true;
            }
            let Ok(meta) = std::fs::symlink_metadata(p) else {
                pending.remove(p);
                return false;
            };
            if meta.len() != e.size && !meta.file_type().is_symlink() {
                e.size = meta.len();
                e.changed = now;
                e.closed = false;
                return true;
            }
            if e.closed || now.duration_since(e.changed) >= cfg.settle {
                if in_flight.lock().expect("in-flight lock").contains(p) {
                    // A new version of a file whose old one is still being scored: taken once
                    // that one is finished, not dropped.
                    return true;
                }
                pending.remove(p);
                ready.push(p.clone());
                false
            } else {
                true
            }
        });
        for p in ready {
            let Some((frame, key, done_rx)) = take(&cam, &root, &p, &metrics) else { continue };
            in_flight.lock().expect("in-flight lock").insert(p.clone());
            tokio::select! {
                sent = frames.send(frame) => if sent.is_err() { break },
                _ = stop.recv() => {
                    in_flight.lock().expect("in-flight lock").remove(&p);
                    break;
                }
            }
            let (ledger, in_flight, camera, cfg) =
                (cam.ledger.clone(), in_flight.clone(), cam.camera.clone(), cfg.clone());
            let (retry, mut stopped) = (retry_tx.clone(), stop.clone());
            tasks.spawn(async move {
                let again = match done_rx.await {
                    Ok(outcome) => finish(&camera, &key, outcome, &ledger, &cfg),
                    Err(_) => false,
                };
                in_flight.lock().expect("in-flight lock").remove(&key.path);
                if again {
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY_AFTER) => { let _ = retry.send(key.path); }
                        _ = stopped.recv() => {}
                    }
                }
            });
        }
        if stop.is_shutdown() {
            break;
        }
    }
    drop(watcher);
    // Frames already queued are finished by the pipeline; wait for their bookkeeping.
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Reads a complete file into a frame, or rejects it (counted) and returns `None`.
fn take(
    cam: &FolderCamera,
    root: &Path,
    p: &Path,
    metrics: &Metrics,
) -> Option<(Frame, FileKey, oneshot::Receiver<Outcome>)> {
    let source = p.display().to_string();
    let reject = |kind, reason: String| metrics.rejected(&cam.camera, &source, kind, &reason);
    let meta = match std::fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(_) => return None, // gone before it was read: nothing to score
    };
    if meta.file_type().is_symlink() {
        match p.canonicalize() {
            Ok(target) if target.starts_with(root) => {}
            Ok(target) => {
                reject(
                    "symlink_escape",
                    format!("a symlink to {}, outside the watched folder; refused", target.display()),
                );
                return None;
            }
            Err(e) => {
                reject("unreadable", format!("a broken symlink ({e})"));
                return None;
            }
        }
    }
    let meta = std::fs::metadata(p).ok()?;
    if !meta.is_file() {
        return None;
    }
    let key = FileKey::of(p, &meta);
    if cam.ledger.lock().expect("ledger lock").contains(&key) {
        return None;
    }
    if meta.len() > cam.config.max_bytes {
        reject(
            "file_too_large",
            format!("{} bytes, over the limit of {} (source.max_bytes)", meta.len(), cam.config.max_bytes),
        );
        if !quarantine(&cam.camera, p, cam.config.quarantine.as_deref()) {
            let _ = cam.ledger.lock().expect("ledger lock").mark(key);
        }
        return None;
    }
    let bytes = match std::fs::read(p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            reject("unreadable", format!("cannot read it ({e}); check its permissions"));
            return None;
        }
    };
    let (tx, rx) = oneshot::channel();
    let frame = Frame {
        slot: cam.slot,
        camera: cam.camera.clone(),
        class: cam.class.clone(),
        origin: Origin::File(p.to_path_buf()),
        bytes,
        time: meta.modified().unwrap_or_else(|_| SystemTime::now()),
        received: Instant::now(),
        trigger: None,
        done: Some(tx),
    };
    Some((frame, key, rx))
}

/// After scoring: record the file as done, then keep, delete or move it; a rejected file
/// goes to the quarantine folder when one is set. Returns whether the file is to be scored again (its alert was not stored).
fn finish(camera: &str, key: &FileKey, outcome: Outcome, ledger: &Mutex<Ledger>, cfg: &FolderSource) -> bool {
    match outcome {
        Outcome::Retry(reason) => {
            // Not marked done: scored again shortly (and at the next start), under the same id.
            tracing::warn!(camera, "{}: scored again in {}s: {reason}", key.path.display(), RETRY_AFTER.as_secs());
            return true;
        }
        Outcome::Rejected(_) if quarantine(camera, &key.path, cfg.quarantine.as_deref()) => return false,
        _ => {}
    }
    // Done first: if vigil dies right after, the file is not scored again.
    if let Err(e) = ledger.lock().expect("ledger lock").mark(key.clone()) {
        tracing::error!(camera, "{e:#}");
    }
    let after = cfg.after;
    if !matches!(after, AfterScoring::Keep) && !still_the_scored_version(key) {
        // Rewritten while it was scored: the new version waits for its own turn; deleting or
        // moving it now would lose it unscored.
        return false;
    }
    let result = match (after, cfg.move_to.as_deref()) {
        (AfterScoring::Delete, _) => std::fs::remove_file(&key.path),
        (AfterScoring::Move, Some(dir)) => move_into(&key.path, dir),
        _ => return false,
    };
    match result {
        Ok(()) => ledger.lock().expect("ledger lock").forget(key),
        Err(e) => tracing::warn!(camera, "{}: could not {after:?} it after scoring: {e}", key.path.display()),
    }
    false
}

/// Whether the file at `key.path` is still the one `key` describes.
fn still_the_scored_version(key: &FileKey) -> bool {
    std::fs::metadata(&key.path).is_ok_and(|m| FileKey::of(&key.path, &m) == *key)
}

/// Adds a file found on disk (backlog, rescan): one last written longer ago than `settle` is
/// complete; a fresher one may still be in the writing, so it waits like a new file (its
/// events come from now on).
fn add_existing(p: PathBuf, settle: Duration, pending: &mut HashMap<PathBuf, Pending>, order: &mut Vec<PathBuf>) {
    let meta = std::fs::metadata(&p).ok();
    let size = meta.as_ref().map_or(0, |m| m.len());
    let age = meta
        .and_then(|m| m.modified().ok())
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .unwrap_or(settle)
        .min(settle);
    let changed = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
    pending.insert(p.clone(), Pending { size, changed, closed: false });
    order.push(p);
}

/// Moves `path` into `dir` (renaming when the folders share a file system, else copying).
fn move_into(path: &Path, dir: &Path) -> std::io::Result<()> {
    let name = path.file_name().unwrap_or_default();
    std::fs::rename(path, dir.join(name)).or_else(|_| {
        // Another file system: copy, then remove.
        std::fs::copy(path, dir.join(name)).and_then(|_| std::fs::remove_file(path))
    })
}

/// Moves a rejected file into the quarantine folder, if one is set; whether it was moved (a
/// moved file needs no ledger entry: it is no longer in the watched folder).
fn quarantine(camera: &str, path: &Path, dir: Option<&Path>) -> bool {
    let Some(dir) = dir else { return false };
    match move_into(path, dir) {
        Ok(()) => {
            tracing::info!(camera, "{}: moved to the quarantine folder {}", path.display(), dir.display());
            true
        }
        Err(e) => {
            tracing::warn!(camera, "{}: could not move it to quarantine {}: {e}", path.display(), dir.display());
            false
        }
    }
}
