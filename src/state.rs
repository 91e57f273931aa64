//! What the daemon keeps in its state directory so that a restart neither re-alerts nor
//! skips: the ledger of files already scored per folder camera, and thresholds set at run time.

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use anyhow::Context;

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
            for line in BufReader::new(f).lines() {
                // A torn last line (power loss mid-write) is skipped: that file is scored again.
                if let Some(k) = FileKey::parse(&line.with_context(|| format!("reading {}", path.display()))?) {
                    done.insert(k);
                }
            }
        }
        // Compact: keep the entries whose file still exists, written to a new file first.
        done.retain(|k| k.path.exists());
        let tmp = path.with_extension("tmp");
        {
            let mut f = File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
            for k in &done {
                f.write_all(k.line().as_bytes())?;
            }
            f.sync_all()?;
        }
        replace(&tmp, path)?;
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
    /// Loads `thresholds.json` from the state folder (empty when absent).
    pub fn open(state_dir: &Path) -> anyhow::Result<Thresholds> {
        let path = state_dir.join("thresholds.json");
        let values = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .with_context(|| format!("{}: not a JSON object of thresholds; fix or delete it", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
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
    pub fn set(&mut self, camera: &str, value: Option<f32>) -> anyhow::Result<()> {
        match value {
            Some(v) => self.values.insert(camera.to_owned(), v),
            None => self.values.remove(camera),
        };
        let tmp = self.path.with_extension("tmp");
        let mut f = File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec_pretty(&self.values)?)?;
        f.sync_all()?;
        replace(&tmp, &self.path)?;
        Ok(())
    }
}

/// Renames the written and synced `tmp` over `path`, then syncs the folder, so that after a
/// power loss the folder holds the new file, not the old one or none. The folder's sync is
/// best effort: some file systems refuse it, and the file itself is already safe.
fn replace(tmp: &Path, path: &Path) -> anyhow::Result<()> {
    std::fs::rename(tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let _ = File::open(dir).and_then(|d| d.sync_all());
    Ok(())
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
        let mut t = Thresholds::open(dir.path()).unwrap();
        t.set("cam1", Some(0.25)).unwrap();
        t.set("cam2", Some(1.0)).unwrap();
        t.set("cam2", None).unwrap();
        let t = Thresholds::open(dir.path()).unwrap();
        assert_eq!(t.get("cam1"), Some(0.25));
        assert_eq!(t.get("cam2"), None);
    }
}
