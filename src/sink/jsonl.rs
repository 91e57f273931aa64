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
}

impl Jsonl {
    /// Opens `path` for appending, creating it.
    pub fn open(path: &Path) -> anyhow::Result<Jsonl> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("alerts.jsonl {}: cannot open for appending", path.display()))?;
        Ok(Jsonl { path: path.to_path_buf(), file })
    }

    /// Appends one line and syncs it to disk.
    pub fn append(&mut self, line: &str) -> anyhow::Result<()> {
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        self.file.write_all(&buf).with_context(|| format!("writing {}", self.path.display()))?;
        self.file.sync_data().with_context(|| format!("syncing {}", self.path.display()))
    }
}
