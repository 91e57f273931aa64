//! What the daemon keeps in its state directory so that a restart neither re-alerts nor
//! skips: the ledger of files already scored per folder camera, and thresholds set at run time.

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use anyhow::Context;
use vigil_model::fsio::write_atomic;

use crate::metrics::Metrics;

/// The identity of a file version: path, size and modification time, so a file rewritten
/// under the same name is a new frame.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileKey {
    /// The file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Its modification time, nanoseconds since 1970.
    pub mtime_ns: u128,
}

impl FileKey {
    /// The key of `path` as it is now.
    pub fn of(path: &Path, meta: &std::fs::Metadata) -> FileKey {
        let mtime_ns = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
        FileKey { path: path.to_path_buf(), size: meta.len(), mtime_ns }
    }

    fn line(&self) -> String {
        // Tab-separated; the path last, so tabs in names survive.
        format!("{}\t{}\t{}\n", self.size, self.mtime_ns, self.path.display())
    }

    fn parse(line: &str) -> Option<FileKey> {
        let mut it = line.splitn(3, '\t');
        let size = it.next()?.parse().ok()?;
        let mtime_ns = it.next()?.parse().ok()?;
        let path = PathBuf::from(it.next()?);
        Some(FileKey { path, size, mtime_ns })
    }
}

/// The files a folder camera has finished, as an append-only log that is fsync'd per entry
/// and compacted at start (entries whose file is gone are dropped).
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    done: HashSet<FileKey>,
    file: File,
}

impl Ledger {
    /// Opens (creating) the ledger at `path`.
    pub fn open(path: &Path) -> anyhow::Result<Ledger> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating state folder {}", dir.display()))?;
        }
        let mut done = HashSet::new();
        if path.exists() {
            let f = File::open(path).with_context(|| format!("reading {}", path.display()))?;
            // Line by line as bytes: a torn last line (power loss mid-write) or a damaged one
            // (not UTF-8, not three fields) is skipped, and that file is scored again, rather
            // than keeping the daemon from starting.
            for line in BufReader::new(f).split(b'\n') {
                let line = line.with_context(|| format!("reading {}", path.display()))?;
                if let Some(k) = std::str::from_utf8(&line).ok().and_then(FileKey::parse) {
                    done.insert(k);
                }
            }
        }
        // Compact: keep the entries whose file still exists.
        done.retain(|k| k.path.exists());
        let lines: String = done.iter().map(FileKey::line).collect();
        write_atomic(path, lines.as_bytes())?;
        let file = OpenOptions::new().append(true).open(path).with_context(|| format!("opening {}", path.display()))?;
        Ok(Ledger { path: path.to_path_buf(), done, file })
    }

    /// Whether this file version was already done.
    pub fn contains(&self, key: &FileKey) -> bool {
        self.done.contains(key)
    }

    /// Records a file version as done, durably.
    pub fn mark(&mut self, key: FileKey) -> anyhow::Result<()> {
        self.file.write_all(key.line().as_bytes()).with_context(|| format!("writing {}", self.path.display()))?;
        self.file.sync_data().with_context(|| format!("syncing {}", self.path.display()))?;
        self.done.insert(key);
        Ok(())
    }

    /// Forgets a file that was deleted or moved away after scoring.
    pub fn forget(&mut self, key: &FileKey) {
        self.done.remove(key);
    }
}

/// Thresholds set at run time over MQTT, per camera, kept in `thresholds.json`.
#[derive(Debug)]
pub struct Thresholds {
    path: PathBuf,
    values: BTreeMap<String, f32>,
}

impl Thresholds {
    /// Loads `thresholds.json` from the state folder (empty when absent). A file that cannot
    /// be read, or holds anything but finite numbers, is moved aside (`.corrupt`) and the
    /// cameras start from their configured or calibrated thresholds: a damaged state file must
    /// never keep the daemon from starting (under systemd, a restart loop).
    pub fn open(state_dir: &Path, metrics: &Metrics) -> anyhow::Result<Thresholds> {
        let path = state_dir.join("thresholds.json");
        let values: BTreeMap<String, f32> =
            read_or_set_aside(&path, metrics, "thresholds set at run time", |v: &BTreeMap<String, f32>| {
                match v.iter().find(|(_, t)| !t.is_finite()) {
                    Some((camera, t)) => Err(format!("the threshold of `{camera}` is {t}, not a finite number")),
                    None => Ok(()),
                }
            })
            .unwrap_or_default();
        Ok(Thresholds { path, values })
    }

    /// The run-time threshold of a camera, if one was set.
    pub fn get(&self, camera: &str) -> Option<f32> {
        self.values.get(camera).copied()
    }

    /// All run-time thresholds.
    pub fn all(&self) -> &BTreeMap<String, f32> {
        &self.values
    }

    /// Sets (`Some`) or clears (`None`) a camera's threshold and saves the file atomically.
    /// A value that is not finite (as f32: `1e39` is infinite) is refused before anything
    /// changes: it would mute the camera or alert on everything, and JSON cannot hold it.
    pub fn set(&mut self, camera: &str, value: Option<f32>) -> anyhow::Result<()> {
        if let Some(v) = value
            && !v.is_finite()
        {
            anyhow::bail!("threshold {v} is not a finite number; nothing changed");
        }
        match value {
            Some(v) => self.values.insert(camera.to_owned(), v),
            None => self.values.remove(camera),
        };
        write_atomic(&self.path, &serde_json::to_vec_pretty(&self.values)?)?;
        Ok(())
    }
}

/// Reads a JSON state file that vigil wrote, checked by `check`. Absent: `None`. One that
/// cannot be read, parsed or checked is renamed to `<name>.corrupt` (kept for a person to
/// look at), logged with what it held and what happens instead, counted
/// (`vigil_errors_total{kind="state_corrupt"}`), and `None` returned, so the daemon starts.
pub fn read_or_set_aside<T: serde::de::DeserializeOwned>(
    path: &Path,
    metrics: &Metrics,
    what: &str,
    check: impl FnOnce(&T) -> Result<(), String>,
) -> Option<T> {
    let problem = match std::fs::read(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => format!("cannot be read ({e})"),
        Ok(bytes) => match serde_json::from_slice::<T>(&bytes) {
            Err(e) => format!("is not what vigil writes there ({e})"),
            Ok(v) => match check(&v) {
                Ok(()) => return Some(v),
                Err(e) => e,
            },
        },
    };
    let mut aside = path.as_os_str().to_owned();
    aside.push(".corrupt");
    let aside = PathBuf::from(aside);
    let moved = std::fs::rename(path, &aside);
    metrics.inc("vigil_errors_total", &[("kind", "state_corrupt")]);
    match moved {
        Ok(()) => tracing::error!(
            "{} {problem}: moved aside to {}; starting without the {what} it held",
            path.display(),
            aside.display()
        ),
        Err(e) => tracing::error!(
            "{} {problem}, and could not be moved aside ({e}); starting without the {what} it held",
            path.display()
        ),
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ledger_survives_a_reopen_and_drops_vanished_files() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.png"), dir.path().join("b\tc.png"));
        std::fs::write(&a, b"x").unwrap();
        std::fs::write(&b, b"yy").unwrap();
        let ka = FileKey::of(&a, &std::fs::metadata(&a).unwrap());
        let kb = FileKey::of(&b, &std::fs::metadata(&b).unwrap());
        let ledger_path = dir.path().join("state/ledger");
        let mut l = Ledger::open(&ledger_path).unwrap();
        l.mark(ka.clone()).unwrap();
        l.mark(kb.clone()).unwrap();
        drop(l);
        std::fs::remove_file(&a).unwrap();
        let l = Ledger::open(&ledger_path).unwrap();
        assert!(l.contains(&kb) && !l.contains(&ka));
        assert_eq!(std::fs::read_to_string(&ledger_path).unwrap().lines().count(), 1);
    }

    #[test]
    fn thresholds_persist() {
        let dir = tempfile::tempdir().unwrap();
        let m = Metrics::default();
        let mut t = Thresholds::open(dir.path(), &m).unwrap();
        t.set("cam1", Some(0.25)).unwrap();
        t.set("cam2", Some(1.0)).unwrap();
        t.set("cam2", None).unwrap();
        assert!(t.set("cam1", Some(f32::INFINITY)).is_err(), "an infinite threshold is refused");
        let t = Thresholds::open(dir.path(), &m).unwrap();
        assert_eq!(t.get("cam1"), Some(0.25));
        assert_eq!(t.get("cam2"), None);
    }

    #[test]
    fn damaged_state_files_are_moved_aside_and_never_block_a_start() {
        let dir = tempfile::tempdir().unwrap();
        let m = Metrics::default();
        let file = dir.path().join("thresholds.json");
        // What vigil before this fix wrote for a threshold of 1e39 (infinite as f32).
        for damaged in [&br#"{"cam1": null}"#[..], b"{\"cam1\": 0.5", b"\xff\xfe", b"[1, 2]"] {
            std::fs::write(&file, damaged).unwrap();
            let t = Thresholds::open(dir.path(), &m).unwrap();
            assert!(t.all().is_empty(), "started from the bundle's values");
            assert!(!file.exists());
            assert_eq!(std::fs::read(dir.path().join("thresholds.json.corrupt")).unwrap(), damaged, "kept to look at");
        }
        assert_eq!(m.count("vigil_errors_total", &[("kind", "state_corrupt")]), 4);
        // A ledger with a damaged line (not UTF-8) loses that line only.
        let frame = dir.path().join("a.png");
        std::fs::write(&frame, b"x").unwrap();
        let key = FileKey::of(&frame, &std::fs::metadata(&frame).unwrap());
        let ledger = dir.path().join("cam.done");
        let mut bytes = b"\xff\xfe\tgarbage\n".to_vec();
        bytes.extend(key.line().as_bytes());
        std::fs::write(&ledger, bytes).unwrap();
        assert!(Ledger::open(&ledger).unwrap().contains(&key));
    }
}
