//! The JSON-lines sink: one alert per line, appended and synced, so a line written is a line
//! kept.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// An open JSON-lines file.
#[derive(Debug)]
pub struct Jsonl {
    path: PathBuf,
    file: File,
    sync: bool,
}

impl Jsonl {
    /// Opens `path` for appending, creating it; with `sync`, each line is on disk before
    /// `append` returns (alerts), else the OS writes it when it will (per-frame records).
    pub fn open(path: &Path, sync: bool) -> anyhow::Result<Jsonl> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("{}: cannot open for appending", path.display()))?;
        Ok(Jsonl { path: path.to_path_buf(), file, sync })
    }

    /// Appends one line (and syncs it, if so opened).
    pub fn append(&mut self, line: &str) -> anyhow::Result<()> {
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        self.file.write_all(&buf).with_context(|| format!("writing {}", self.path.display()))?;
        if self.sync {
            self.file.sync_data().with_context(|| format!("syncing {}", self.path.display()))?;
        }
        Ok(())
    }
}
